"""The tensors a model writer writes, each read only when its turn comes.

A :class:`TensorEntry` names one tensor, its shape and dtype in the output file, and how to
fetch it; :func:`entries_of` makes them for a (possibly lazy) state dict without reading
any data. The model writers of :mod:`.safetensors` and :mod:`.torch_file` fetch one entry
at a time under a byte progress bar (:func:`byte_progress`).
"""

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from tqdm import tqdm

from .tensors import as_tensor, dtype_of, shape_of

__all__ = ["TensorEntry", "entries_of", "compact", "byte_progress"]


def byte_progress(total: int, desc: str = "", enabled: bool = True) -> tqdm:
    """A tqdm bar counting bytes; silent when not ``enabled``."""
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc or None, disable=not enabled)


@dataclass
class TensorEntry:
    """One tensor to write: its name, shape and dtype in the file, and how to read it."""

    key: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    fetch: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _fetch(state: Mapping[str, Any], key: str) -> torch.Tensor:
    return as_tensor(state[key])


def entries_of(
    state: Mapping[str, Any], dtypes: Optional[Dict[str, torch.dtype]] = None
) -> List[TensorEntry]:
    """Entries for every key of a (possibly lazy) state dict; nothing is read yet.

    Args:
        state: key -> tensor or numpy array; lazy mappings are read one key at a time.
        dtypes: key -> dtype to write instead of the stored one.

    Raises:
        TypeError: a value that is neither a tensor nor an array (it has no dtype).
    """
    dtypes = dtypes or {}
    out: List[TensorEntry] = []
    for key in state:
        dtype = dtypes.get(key) or dtype_of(state, key)
        if dtype is None:
            raise TypeError(f"Unsupported type {type(state[key]).__name__} in checkpoint")
        fetch = functools.partial(_fetch, state, key)
        out.append(TensorEntry(key, tuple(shape_of(state, key)), dtype, fetch))
    return out


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and alone in its storage (a view of a larger buffer is copied)."""
    t = t.contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t
