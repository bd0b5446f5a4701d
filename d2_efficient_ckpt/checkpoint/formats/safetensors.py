"""The ``.safetensors`` format: suffix, dtype codes, checked header, lazy reading, writing.

A file is an 8-byte little-endian header length, a JSON header (``{name: {dtype, shape,
data_offsets}}`` and a ``__metadata__`` map of strings), then the tensors' bytes.
:class:`SafetensorsStateDict` checks the whole header before it makes any tensor; its
tensors are views of one private mapping of the file. :func:`write_model` writes model
weights for the tools, one tensor at a time. A pickle-free training checkpoint is a
safetensors file too: :mod:`.training_safetensors` reads and writes its entries.
"""

import json
import math
import os
import struct
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..errors import CheckpointError, CheckpointFormatError
from ..storage.local import LocalSource
from ..storage.mapped import FileIdentity, FileReader, MappedFile, open_exact
from .entries import TensorEntry, byte_progress
from .messages import short_text
from .opened import LazyStateDict
from .safe_pickle.allowlist import MAX_DIM, MAX_DIMS

__all__ = [
    "SUFFIX",
    "DTYPES",
    "CODES",
    "ENTRIES_METADATA_KEY",
    "SafetensorsStateDict",
    "encode_header",
    "write_model",
]

SUFFIX = ".safetensors"
# The dtype codes of the format; the 8-bit floats only where this torch has them.
DTYPES: Dict[str, torch.dtype] = {
    code: dtype
    for code, dtype in {
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
    }.items()
    if dtype is not None
}
CODES: Dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}
# A model file written by ``convert`` keeps its plain entries (iteration, __author__, ...)
# as JSON under this metadata key.
ENTRIES_METADATA_KEY = "d2_efficient_ckpt.entries"
_MAX_HEADER = 100 * 2**20  # bytes of JSON header; real ones are far smaller


class SafetensorsStateDict(LazyStateDict):
    """Read-only mapping over a ``.safetensors`` file; each tensor is read on first use.

    The header is checked completely when the file is opened: known dtypes, shapes of
    non-negative integers, ``data_offsets`` that are in range, agree with the shape and do not
    overlap, no duplicate names, string metadata. Values are views of one private mapping of
    the file; read their data through :meth:`OpenedCheckpoint.reader`.
    """

    def __init__(self, path: str):
        self.path = path
        identity, n, text = _read_header(path)
        size = identity.size
        header = _parse_header(path, text)
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()
        ):
            raise _bad_header(path, "its __metadata__ is not a map of strings to strings")
        self._base = 8 + n
        self.data_size = size - self._base
        self._entries = {k: _entry(path, k, v, self.data_size) for k, v in header.items()}
        spans = sorted((e[2], e[3], k) for k, e in self._entries.items() if e[3] > e[2])
        for (_, end, key), (start, _, other) in zip(spans, spans[1:]):
            if start < end:
                raise _bad_header(path, f"tensors '{key}' and '{other}' overlap")
        source = LocalSource(path, identity)
        source.close()  # only its identity is kept: readers reopen it
        storage = source.address_space()
        self.mapped = MappedFile(source, storage.data_ptr(), size)
        # torch's stubs type set_() as taking a typed storage; an untyped one is what it takes.
        self._bytes = torch.empty(0, dtype=torch.uint8).set_(storage)  # type: ignore[arg-type]

    def shape(self, key: str) -> Tuple[int, ...]:
        """Shape of ``key`` without touching its data."""
        return self._entries[key][1]

    def dtype(self, key: str) -> torch.dtype:
        """dtype of ``key`` without touching its data."""
        return self._entries[key][0]

    def spans(self) -> Dict[str, Tuple[int, int]]:
        """``{key: (start, end)}`` byte offsets of each tensor within the data section."""
        return {k: (e[2], e[3]) for k, e in self._entries.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        dtype, shape, start, end = self._entries[key]
        raw = self._bytes[self._base + start : self._base + end]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if raw.storage_offset() % itemsize:
            # Misaligned in the file: a view is not legal, so read a copy, length-checked.
            with FileReader(self.mapped) as reader:
                raw = reader.read(raw)
        return raw.view(dtype).view(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _read_header(path: str) -> Tuple[FileIdentity, int, bytes]:
    """``(identity, header length, header bytes)`` of the file, the length checked."""
    fd = open_exact(path)
    try:
        identity = FileIdentity.of_fd(fd)
        size = identity.size
        raw = os.pread(fd, 8, 0)
        if len(raw) < 8:
            raise _bad_header(path, "it is shorter than its header")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > _MAX_HEADER or n < 2:
            raise _bad_header(path, f"its header length {n} does not fit the file")
        text = os.pread(fd, n, 8)
    finally:
        os.close(fd)
    if len(text) != n:
        raise _bad_header(path, "the file changed while its header was read")
    return identity, n, text


def _bad_header(path: str, problem: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        path,
        f"not a valid safetensors file: {problem}.",
        "Re-export or re-download it (python -m d2_efficient_ckpt convert writes valid ones).",
    )


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate name '{k}'")
        out[k] = v
    return out


def _parse_header(path: str, text: bytes) -> Dict[str, Any]:
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise _bad_header(path, "its header is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_header(path, f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad_header(path, "its header is not a JSON object")
    return header


def _entry(path: str, key: str, info: Any, data_size: int) -> Tuple[torch.dtype, tuple, int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad_header(path, f"entry '{key}' is not {{dtype, shape, data_offsets}}")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise _bad_header(path, f"tensor '{key}' has unsupported dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(type(d) is int and 0 <= d < MAX_DIM for d in shape)
    ):
        # Each dimension below 2**62, even beside a 0: torch cannot make such a view.
        raise _bad_header(path, f"tensor '{key}' has an invalid shape {short_text(shape)}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad_header(path, f"tensor '{key}' has invalid data_offsets {short_text(offsets)}")
    start, end = offsets
    if end > data_size:
        raise CheckpointFormatError(
            path,
            f"the file is truncated: tensor '{key}' ends at data byte {end} but the data "
            f"section has {data_size} bytes.",
            "Re-export or re-download it.",
        )
    need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if end - start != need:
        raise _bad_header(
            path, f"tensor '{key}' has {end - start} bytes but its shape {shape} needs {need}"
        )
    return dtype, tuple(shape), start, end


def encode_header(
    layout: Iterable[Tuple[str, str, Sequence[int], int]], metadata: Optional[Dict[str, str]]
) -> Tuple[bytes, int]:
    """The header of a file whose tensors follow each other in ``layout`` order.

    Args:
        layout: ``(name, dtype code, shape, bytes)`` of each tensor, in the order written.
        metadata: the ``__metadata__`` strings, if any.

    Returns:
        The bytes that start the file (length and JSON, padded so that tensor data is 8-byte
        aligned), and the size of the data section after them.
    """
    header: Dict[str, Any] = {}
    offset = 0
    for name, code, shape, nbytes in layout:
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keeps tensor data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw, offset


def write_tensor_bytes(f: BinaryIO, t: torch.Tensor) -> int:
    """Write a contiguous host tensor's bytes to ``f`` without copying them; their count."""
    if not t.numel():
        return 0
    data = t.reshape(-1).view(torch.uint8).numpy()
    f.write(data.data)
    return data.nbytes


def write_model(
    entries: Iterable[TensorEntry],
    f: BinaryIO,
    *,
    extra: Optional[Dict[str, Any]] = None,
    progress: bool = False,
    desc: str = "",
    path: str = "",
) -> None:
    """Write model weights as a ``.safetensors`` file into ``f``, one tensor at a time.

    Args:
        entries: the tensors, in the order written.
        f: the open output file.
        extra: plain entries (iteration, ``__author__``, ...), kept as JSON in the metadata
            under :data:`ENTRIES_METADATA_KEY`.
        progress: show a byte progress bar.
        desc: its label.
        path: the output file, for messages.

    Raises:
        CheckpointError: a dtype safetensors cannot store, or a tensor whose shape changed
            while it was written (both are bad input for the tools, with a fix).
    """
    entries = list(entries)
    for e in entries:
        if e.dtype not in CODES:
            raise CheckpointError(
                f"Cannot write {path}: safetensors cannot store '{e.key}' of dtype {e.dtype}. "
                "Write a .pth file instead, or leave the key out."
            )
    metadata = {"format": "pt"}
    if extra:
        metadata[ENTRIES_METADATA_KEY] = json.dumps(extra)
    head, total = encode_header(
        ((e.key, CODES[e.dtype], e.shape, e.nbytes) for e in entries), metadata
    )
    with byte_progress(total, desc, progress) as bar:
        f.write(head)
        for e in entries:
            t = e.fetch().to(e.dtype).contiguous()
            if tuple(t.shape) != e.shape:
                raise CheckpointError(
                    f"Cannot write {path}: '{e.key}' changed shape while it was written "
                    f"({tuple(t.shape)}); the input file changed. Run the command again."
                )
            bar.update(write_tensor_bytes(f, t))
