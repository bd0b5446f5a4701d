"""Open checkpoint files lazily, safely, and with clear errors.

Formats:
    * torch zip (``torch.save`` since 1.6): memory-mapped, so storages are read only when used;
    * legacy torch (pre-zip): read eagerly, with a log line saying so;
    * ``.safetensors``: header parsed here, tensors are zero-copy views of a private mapping;
    * ``.pkl``: Detectron2 or Caffe2/Detectron1 model zoo pickles;
    * ``.pyth``: pycls checkpoints.
"""

import json
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from .errors import CheckpointFormatError, UnsafeCheckpointError
from .prefetch import MappedFile
from .safe_unpickle import (
    SafeGlobalError,
    restricted_pickle_load,
    torch_safe_globals,
    unsafe_globals_from_error,
)
from .torch_zip import NotFastPath, load_torch_zip_mmap

__all__ = ["OpenedCheckpoint", "open_checkpoint", "SafetensorsStateDict", "detect_format"]

logger = logging.getLogger(__name__)

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


@dataclass
class OpenedCheckpoint:
    """A checkpoint's top-level entries plus how they were read.

    Attributes:
        data: entries such as ``model``, ``trainer``, ``iteration``; ``data["model"]`` maps
            key to tensor (or numpy array for zoo pickles) and may be lazy.
        format: one of ``torch-zip``, ``torch-legacy``, ``safetensors``, ``pkl-detectron2``,
            ``pkl-caffe2``, ``pyth``.
        lazy: whether tensors are still backed by the file (read on first use).
        pickle_free: whether no pickle was involved in reading it.
        mapping: the file mapping its tensors view, when known, for prefetching.
    """

    path: str
    data: Dict[str, Any]
    format: str
    lazy: bool
    pickle_free: bool = False
    metadata: Dict[str, str] = field(default_factory=dict)
    mapping: Optional[MappedFile] = None


def detect_format(path: str) -> str:
    """Tell a checkpoint's format from its extension and first bytes.

    Raises:
        CheckpointFormatError: for a missing, empty, truncated or unrecognised file.
    """
    if not os.path.isfile(path):
        raise CheckpointFormatError(
            path, "the file does not exist.", "Check MODEL.WEIGHTS or the path given to load()."
        )
    if os.path.getsize(path) == 0:
        raise CheckpointFormatError(
            path, "the file is empty.", "It was probably cut off during a save."
        )
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith(".pkl"):
        return "pkl"
    if path.endswith(".pyth"):
        return "pyth"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise CheckpointFormatError(
                path,
                "the torch zip archive is truncated or corrupt (its central directory is missing).",
                "The save was probably interrupted; load an earlier checkpoint.",
            )
        return "torch-zip"
    if head == _LEGACY_TORCH_MAGIC:
        return "torch-legacy"
    raise CheckpointFormatError(
        path,
        f"not a checkpoint format this loader knows (first bytes {head[:8]!r}).",
        "Expected a torch .pth/.pt file, .safetensors, or a Detectron/Caffe2 .pkl.",
    )


def open_checkpoint(path: str, *, mmap: bool = True, weights_only: bool = True) -> OpenedCheckpoint:
    """Open ``path`` without reading more of it than its structure.

    Args:
        path: a local file.
        mmap: memory-map torch zip files instead of reading them whole.
        weights_only: refuse pickles that need globals outside the allowlist.

    Returns:
        The opened checkpoint. Zoo pickles are returned with ``__author__`` and
        ``matching_heuristics`` entries as detectron2 does.

    Raises:
        CheckpointFormatError: the file is missing, truncated or of an unknown format.
        UnsafeCheckpointError: the file needs globals outside the allowlist.
    """
    fmt = detect_format(path)
    if fmt == "safetensors":
        sd = SafetensorsStateDict(path)
        return OpenedCheckpoint(
            path, {"model": sd}, fmt, lazy=True, pickle_free=True, metadata=sd.metadata
        )
    if fmt == "pkl":
        return _open_zoo_pickle(path, weights_only)
    if fmt == "pyth":
        data = _torch_load(path, mmap=False, weights_only=weights_only)
        if not isinstance(data, dict) or "model_state" not in data:
            raise CheckpointFormatError(path, "a .pyth file must hold a pycls 'model_state' entry.")
        model = {
            k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return OpenedCheckpoint(
            path, {"model": model, "__author__": "pycls", "matching_heuristics": True}, fmt, False
        )
    if fmt == "torch-legacy":
        logger.info(f"{path} uses torch's legacy (pre-zip) format: reading it eagerly.")
    use_mmap = mmap and fmt == "torch-zip"
    mapping = None
    if use_mmap and weights_only:
        try:
            data, mapping = load_torch_zip_mmap(path)
        except NotFastPath as e:
            logger.debug(f"{path}: fast reader declined ({e}); using torch.load")
        except (OSError, zipfile.BadZipFile, ValueError, RuntimeError) as e:
            raise CheckpointFormatError(
                path,
                f"the torch zip archive is unreadable ({e}).",
                "The file may be truncated or corrupt.",
            ) from None
    if mapping is None:
        data = _torch_load(path, mmap=use_mmap, weights_only=weights_only)
    return OpenedCheckpoint(path, data, fmt, lazy=use_mmap, mapping=mapping)


def _torch_load(path: str, *, mmap: bool, weights_only: bool) -> Any:
    try:
        if weights_only:
            with torch_safe_globals():
                return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
    except pickle.UnpicklingError as e:
        if weights_only and "Weights only load failed" in str(e):
            names = unsafe_globals_from_error(
                e, lambda: torch.serialization.get_unsafe_globals_in_checkpoint(path)
            )
            raise UnsafeCheckpointError(path, names) from None
        raise CheckpointFormatError(path, f"the pickle inside is corrupt ({e}).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointFormatError(
            path,
            f"torch could not read it ({str(e).splitlines()[0]}).",
            "The file may be truncated or not a torch checkpoint.",
        ) from None


def _open_zoo_pickle(path: str, weights_only: bool) -> OpenedCheckpoint:
    try:
        with open(path, "rb") as f:
            data = restricted_pickle_load(f) if weights_only else pickle.load(f, encoding="latin1")
    except SafeGlobalError as e:
        raise UnsafeCheckpointError(path, [e.global_name]) from None
    except Exception as e:  # any other unpickling failure means a corrupt or foreign file
        raise CheckpointFormatError(path, f"it is not a readable pickle ({e}).") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(path, f"the pickle holds a {type(data).__name__}, not a dict.")
    if "model" in data and "__author__" in data:
        logger.info(f"Reading a file from '{data['__author__']}'")
        return OpenedCheckpoint(path, data, "pkl-detectron2", lazy=False)
    # Caffe2 / Detectron1 zoo: detection models keep weights under "blobs".
    blobs = data.get("blobs", data)
    model = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return OpenedCheckpoint(
        path,
        {"model": model, "__author__": "Caffe2", "matching_heuristics": True},
        "pkl-caffe2",
        lazy=False,
    )


class SafetensorsStateDict(Mapping):
    """Read-only mapping over a ``.safetensors`` file; each tensor is read on first use.

    Values are views of one private (copy-on-write) memory map of the file, so reading a
    key touches only its bytes, and nothing is copied until the caller copies it.
    """

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointFormatError(
                    path, "not a safetensors file (shorter than its header)."
                )
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100 * 2**20:
                raise CheckpointFormatError(path, "not a safetensors file (bad header length).")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise CheckpointFormatError(
                    path, "not a safetensors file (header is not JSON)."
                ) from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        self._entries: Dict[str, Tuple[torch.dtype, Tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise CheckpointFormatError(
                    path, f"tensor '{key}' has unsupported dtype {info.get('dtype')}."
                )
            start, end = info["data_offsets"]
            if self._base + end > size:
                raise CheckpointFormatError(
                    path,
                    f"the file is truncated: tensor '{key}' ends at byte {self._base + end} "
                    f"but the file has {size} bytes.",
                    "Re-export or re-download it.",
                )
            self._entries[key] = (dtype, tuple(info["shape"]), start, end)
        self._bytes = None
        self._size = size

    def _buffer(self) -> torch.Tensor:
        if self._bytes is None:
            storage = torch.UntypedStorage.from_file(self.path, shared=False, nbytes=self._size)
            self._bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
        return self._bytes

    def shape(self, key: str) -> Tuple[int, ...]:
        """Shape of ``key`` without touching its data."""
        return self._entries[key][1]

    def dtype(self, key: str) -> torch.dtype:
        """dtype of ``key`` without touching its data."""
        return self._entries[key][0]

    def __getitem__(self, key: str) -> torch.Tensor:
        dtype, shape, start, end = self._entries[key]
        raw = self._buffer()[self._base + start : self._base + end]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if raw.storage_offset() % itemsize:
            raw = raw.clone()  # misaligned in the file; a copy is the only legal view
        return raw.view(dtype).view(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
