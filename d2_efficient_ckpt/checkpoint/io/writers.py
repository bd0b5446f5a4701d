"""Write checkpoint files: safetensors streamed tensor by tensor, torch files atomically.

Both writers go through a temporary file that replaces the target only when complete, so an
interrupted conversion never leaves a truncated checkpoint behind.
"""

import contextlib
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch
from tqdm import tqdm

from ..errors import CheckpointError
from .readers import _SAFETENSORS_DTYPES
from .tensors import as_tensor, dtype_of, shape_of

__all__ = [
    "TensorEntry",
    "entries_of",
    "write_safetensors",
    "write_torch",
    "compact",
    "byte_progress",
]

_CODES = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items() if dtype is not None}


def byte_progress(total: int, desc: str = "", enabled: bool = True) -> tqdm:
    """A tqdm bar counting bytes; silent when not ``enabled``."""
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc or None, disable=not enabled)


@contextlib.contextmanager
def _atomic_path(path: str) -> Iterator[str]:
    """A temporary path that replaces ``path`` only if the block completes."""
    tmp = path + ".tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def entries_of(state: Mapping[str, Any], dtypes: Optional[Dict[str, torch.dtype]] = None):
    """Entries for every key of a (possibly lazy) state dict; nothing is read yet.

    Args:
        state: key -> tensor or numpy array; lazy mappings are read one key at a time.
        dtypes: key -> dtype to write instead of the stored one.
    """
    dtypes = dtypes or {}
    out: List[TensorEntry] = []
    for key in state:
        stored = dtype_of(state, key)
        out.append(
            TensorEntry(
                key,
                tuple(shape_of(state, key)),
                dtypes.get(key, stored),
                lambda k=key: as_tensor(state[k]),
            )
        )
    return out


def compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and alone in its storage (a view of a larger buffer is copied)."""
    t = t.contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def write_safetensors(
    path: str,
    entries: Iterable[TensorEntry],
    metadata: Optional[Dict[str, str]] = None,
    *,
    progress: bool = False,
    desc: str = "",
) -> int:
    """Write a ``.safetensors`` file, reading and writing one tensor at a time.

    Returns:
        The size of the file in bytes.

    Raises:
        CheckpointError: a dtype safetensors cannot store, or a tensor whose shape changed
            while it was written (both are bad input for the tools, with a fix).
    """
    entries = list(entries)
    header: Dict[str, Any] = {}
    offset = 0
    for e in entries:
        if e.dtype not in _CODES:
            raise CheckpointError(
                f"Cannot write {path}: safetensors cannot store '{e.key}' of dtype {e.dtype}. "
                "Write a .pth file instead, or leave the key out."
            )
        header[e.key] = {
            "dtype": _CODES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keeps tensor data 8-byte aligned
    with _atomic_path(path) as tmp, open(tmp, "wb") as f:
        with byte_progress(offset, desc, progress) as bar:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for e in entries:
                t = e.fetch().to(e.dtype).contiguous()
                if tuple(t.shape) != e.shape:
                    raise CheckpointError(
                        f"Cannot write {path}: '{e.key}' changed shape while it was written "
                        f"({tuple(t.shape)}); the input file changed. Run the command again."
                    )
                data = t.reshape(-1).view(torch.uint8).numpy()
                f.write(memoryview(data))
                bar.update(data.nbytes)
    return 8 + len(raw) + offset


def write_torch(
    path: str,
    entries: Iterable[TensorEntry],
    extra: Optional[Dict[str, Any]] = None,
    *,
    progress: bool = False,
    desc: str = "",
) -> int:
    """``torch.save({"model": {...}, **extra})`` through a temporary file.

    Returns:
        The size of the file in bytes.
    """
    if extra and "model" in extra:  # it would replace the weights
        raise ValueError("an extra entry named 'model'")
    entries = list(entries)
    model: Dict[str, torch.Tensor] = {}
    with byte_progress(sum(e.nbytes for e in entries), desc, progress) as bar:
        for e in entries:
            model[e.key] = compact(e.fetch().to(e.dtype))
            bar.update(e.nbytes)
    with _atomic_path(path) as tmp:
        torch.save({"model": model, **(extra or {})}, tmp)
    return os.path.getsize(path)
