"""A fast, allowlisted reader for torch's zip checkpoint format.

``torch.load(weights_only=True)`` unpickles with a pure-Python unpickler. For a training
checkpoint that is most of the time a model-only load takes. This reader runs Python's C
unpickler with an allowlist that is a strict subset of torch's own weights-only set
(tensors, parameters, storages, containers, numpy arrays), and maps the file once so
tensors are views of it, as ``torch.load(mmap=True)`` does. Anything outside the allowlist
raises :class:`NotFastPath`, and the caller falls back to ``torch.load``.
"""

import collections
import io
import os
import pickle
import struct
import sys
import warnings
import zipfile
from typing import Any, Dict, Tuple

import torch

from .prefetch import MappedFile
from .safe_unpickle import RestrictedUnpickler, SafeGlobalError

__all__ = ["NotFastPath", "load_torch_zip_mmap"]

_STORAGE_TYPES = (
    "DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
    "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
    "ComplexFloatStorage", "ComplexDoubleStorage",
)  # fmt: skip


class NotFastPath(Exception):
    """The file needs something this reader does not do; use ``torch.load`` instead."""


def _storage_dtypes() -> Dict[Any, torch.dtype]:
    # Reading .dtype of the legacy storage classes warns that TypedStorage is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            getattr(torch, n): getattr(torch, n).dtype for n in _STORAGE_TYPES if hasattr(torch, n)
        }
    out[torch.UntypedStorage] = torch.uint8
    return out


def _torch_globals() -> Dict[Tuple[str, str], Any]:
    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "UntypedStorage"): torch.UntypedStorage,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for name in _STORAGE_TYPES:
        if hasattr(torch, name):
            allowed[("torch", name)] = getattr(torch, name)
    return allowed


class _Unpickler(RestrictedUnpickler):
    def __init__(self, f, load_storage):
        super().__init__(f, encoding="utf-8")
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        obj = _TORCH_GLOBALS.get((module, name))
        if obj is not None:
            return obj
        try:
            return super().find_class(module, name)
        except SafeGlobalError:
            raise NotFastPath(f"{module}.{name}") from None

    def persistent_load(self, saved_id: Any) -> Any:
        if not isinstance(saved_id, tuple) or saved_id[0] not in ("storage", b"storage"):
            raise NotFastPath(f"persistent id {saved_id!r}")
        storage_type, key, _location, numel = saved_id[1:]
        dtype = _STORAGE_DTYPES.get(storage_type)
        if dtype is None:
            raise NotFastPath(f"storage type {storage_type!r}")
        return self._load_storage(str(key), dtype, numel)


_TORCH_GLOBALS = _torch_globals()
_STORAGE_DTYPES = _storage_dtypes()


def _data_offsets(path: str, zf: zipfile.ZipFile) -> Tuple[str, Dict[str, Tuple[int, int]]]:
    infos = zf.infolist()
    prefix = next(
        (i.filename[: -len("data.pkl")] for i in infos if i.filename.endswith("/data.pkl")), None
    )
    if prefix is None:
        raise NotFastPath("no data.pkl record")
    offsets: Dict[str, Tuple[int, int]] = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            # Local headers sit between the records; ask for all of them at once so a cold
            # file costs one batch of small reads instead of one round trip per record.
            for info in infos:
                advise(fd, info.header_offset, 30 + len(info.filename), os.POSIX_FADV_WILLNEED)
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise NotFastPath(f"compressed record {info.filename}")
            head = os.pread(fd, 30, info.header_offset)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise NotFastPath(f"bad local header for {info.filename}")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            offsets[info.filename] = (start, info.file_size)
    finally:
        os.close(fd)
    return prefix, offsets


def load_torch_zip_mmap(path: str) -> Tuple[Any, MappedFile]:
    """Unpickle a torch zip checkpoint with tensors backed by a private map of the file.

    Returns:
        The unpickled object, and the :class:`MappedFile` its tensors view.

    Raises:
        NotFastPath: the file uses a global, a persistent id or a layout this reader does
            not handle; ``torch.load(mmap=True, weights_only=True)`` can still read it.
    """
    with zipfile.ZipFile(path) as zf:
        prefix, offsets = _data_offsets(path, zf)
        order = prefix + "byteorder"
        if order in offsets and zf.read(order).decode() != sys.byteorder:
            raise NotFastPath("byte order differs from this machine's")
        pkl = zf.read(prefix + "data.pkl")
    size = max(start + n for start, n in offsets.values())
    whole = torch.UntypedStorage.from_file(path, shared=False, nbytes=size)
    cache: Dict[str, Any] = {}

    def load_storage(key: str, dtype: torch.dtype, numel: int) -> Any:
        if key not in cache:
            start, nbytes = offsets[f"{prefix}data/{key}"]
            cache[key] = torch.storage.TypedStorage(
                wrap_storage=whole[start : start + nbytes], dtype=dtype, _internal=True
            )
        return cache[key]

    try:
        obj = _Unpickler(io.BytesIO(pkl), load_storage).load()
    except (pickle.UnpicklingError, KeyError, AttributeError, TypeError) as e:
        raise NotFastPath(str(e)) from None
    return obj, MappedFile(path, whole.data_ptr(), size)
