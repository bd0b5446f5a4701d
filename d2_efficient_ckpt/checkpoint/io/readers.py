"""Open checkpoint files lazily, safely, and with clear errors.

Formats:
    * torch zip (``torch.save`` since 1.6): memory-mapped, so storages are read only when used;
    * legacy torch (pre-zip): read eagerly, with a log line saying so;
    * ``.safetensors``: header checked here, tensors are views of a private mapping; a
      pickle-free training checkpoint (``CHECKPOINT.SAVE.FORMAT safetensors``) gives all its
      entries, decoded by :mod:`.training_tree`, with the model still read key by key;
    * ``.pkl``: Detectron2 or Caffe2/Detectron1 model zoo pickles;
    * ``.pyth``: pycls checkpoints (torch files).

Every pickle runs on this package's own :mod:`.unpickler` unless the caller opts out with
``weights_only=False``; ``torch.load`` is used only then. Tensor data is read through
:meth:`OpenedCheckpoint.reader`, which checks that the file did not change.
"""

import json
import logging
import math
import os
import pickle
import stat
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointFormatError
from ..storage.mapped import FileIdentity, FileReader, MappedFile, open_exact
from .allowlist import MAX_DIM, MAX_DIMS, numpy_globals
from .torch_legacy import load_torch_legacy
from .torch_zip import load_torch_zip, pickle_error
from .training_tree import TrainingModelView, is_training_metadata, training_entries
from .unpickler import MalformedPickle, UnsafeGlobal, unpickle

__all__ = ["OpenedCheckpoint", "open_checkpoint", "SafetensorsStateDict", "detect_format"]

_ZOO_GLOBALS = numpy_globals()
_ARRAYS = (torch.Tensor, np.ndarray)
_MAX_HEADER = 100 * 2**20  # bytes of safetensors JSON header; real ones are far smaller

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
        mapping: the file mapping its tensors view, when known, for prefetching and reading.
    """

    path: str
    data: Dict[str, Any]
    format: str
    lazy: bool
    metadata: Dict[str, str] = field(default_factory=dict)
    mapping: Optional[MappedFile] = None

    def reader(self) -> FileReader:
        """A :class:`FileReader` for this checkpoint's tensors (use as a context manager).

        Always read tensor values through it: it reads lazy tensors from the file with
        length-checked reads and fails cleanly if the file changed since it was opened.
        """
        return FileReader(self.mapping)

    def read_model(self) -> Tuple["ReadingStateDict", Dict[str, Any]]:
        """Like :meth:`split_model`, with model values read into fresh memory on access."""
        model, rest = self.split_model()
        return ReadingStateDict(model, self.mapping), rest

    def split_model(self) -> Tuple[Mapping, Dict[str, Any]]:
        """The model state dict and the other entries, checked.

        A file with a ``model`` entry gives that entry; a bare state dict (every value a
        tensor or array), as the stock class accepts, is the model itself.

        Raises:
            CheckpointFormatError: not a dict, no model entry, or a model entry that is not
                a map from string keys to tensors or arrays.
        """
        data = self.data
        if not isinstance(data, dict):
            raise CheckpointFormatError(self.path, f"it holds a {type(data).__name__}, not a dict.")
        if "model" in data:
            model, rest = data["model"], {k: v for k, v in data.items() if k != "model"}
        elif data and all(isinstance(v, _ARRAYS) for v in data.values()):
            model, rest = data, {}
        else:
            raise CheckpointFormatError(
                self.path,
                f"it has no 'model' entry and is not a state dict (entries: "
                f"{', '.join(short_text(k) for k in list(data)[:10])}).",
                "Pass a checkpoint written by a Checkpointer or a model state dict.",
            )
        if not isinstance(model, Mapping):
            raise CheckpointFormatError(
                self.path, f"its 'model' entry is a {type(model).__name__}, not a state dict."
            )
        bad_key = next((k for k in model if not isinstance(k, str)), None)
        if bad_key is not None:
            raise CheckpointFormatError(
                self.path, f"its model has a key that is not a string: {short_text(bad_key, 60)}."
            )
        if not isinstance(model, _LAZY_STATES):  # their values are tensors by design
            bad = next((k for k, v in model.items() if not isinstance(v, _ARRAYS)), None)
            if bad is not None:
                raise CheckpointFormatError(
                    self.path,
                    f"model key '{bad}' holds a {type(model[bad]).__name__}, not a tensor.",
                )
        return model, rest


def detect_format(path: str) -> str:
    """Tell a checkpoint's format from its extension and first bytes.

    Raises:
        CheckpointFormatError: for a missing, empty, truncated or unrecognised file.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointFormatError(
            path, "the file does not exist.", "Check MODEL.WEIGHTS or the path given to load()."
        ) from None
    except OSError as e:
        raise CheckpointFormatError(path, f"it cannot be read ({e.strerror}).") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointFormatError(
            path, "it is a directory, not a file.", "Pass the checkpoint file inside it."
        )
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointFormatError(
            path,
            "it is not a regular file (a pipe, socket or device).",
            "Pass a checkpoint file on disk.",
        )
    if st.st_size == 0:
        raise CheckpointFormatError(
            path, "the file is empty.", "It was probably cut off during a save."
        )
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith(".pkl"):
        return "pkl"
    if path.endswith(".pyth"):
        return "pyth"
    try:
        head = _head(path)
    except OSError as e:
        raise CheckpointFormatError(path, f"it cannot be read ({e.strerror}).") from None
    if head.startswith(b"PK\x03\x04"):
        try:
            with os.fdopen(open_exact(path), "rb") as f:  # never a FIFO swapped in since
                is_zip = zipfile.is_zipfile(f)
        except OSError as e:
            raise CheckpointFormatError(path, f"it cannot be read ({e.strerror}).") from None
        except zipfile.BadZipFile:  # raised for some damaged end records (e.g. "multi-disk")
            is_zip = False
        if not is_zip:
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
        data: Dict[str, Any] = {"model": sd}
        if is_training_metadata(sd.metadata):
            data = training_entries(path, sd, sd.metadata, sd.mapped)
        return OpenedCheckpoint(path, data, fmt, lazy=True, metadata=sd.metadata, mapping=sd.mapped)
    if fmt == "pkl":
        return _open_zoo_pickle(path, weights_only)
    if fmt == "pyth":
        data, _ = _read_torch(path, _torch_kind(path), mmap=False, weights_only=weights_only)
        if not isinstance(data, dict) or not isinstance(data.get("model_state"), dict):
            raise CheckpointFormatError(path, "a .pyth file must hold a pycls 'model_state' entry.")
        model = {
            k: v
            for k, v in data["model_state"].items()
            if not str(k).endswith("num_batches_tracked")
        }
        return OpenedCheckpoint(
            path, {"model": model, "__author__": "pycls", "matching_heuristics": True}, fmt, False
        )
    if fmt == "torch-legacy":
        logger.info(f"{path} uses torch's legacy (pre-zip) format: reading it eagerly.")
    use_mmap = mmap and fmt == "torch-zip"
    data, mapping = _read_torch(path, fmt, mmap=use_mmap, weights_only=weights_only)
    return OpenedCheckpoint(path, data, fmt, lazy=use_mmap, mapping=mapping)


def _head(path: str) -> bytes:
    fd = open_exact(path)  # an ordinary read here would set up read-ahead into the tensors
    try:
        return os.pread(fd, len(_LEGACY_TORCH_MAGIC), 0)
    finally:
        os.close(fd)


def _torch_kind(path: str) -> str:
    head = _head(path)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head == _LEGACY_TORCH_MAGIC:
        return "torch-legacy"
    raise CheckpointFormatError(path, "a .pyth file must be a torch file (zip or legacy).")


def _read_torch(
    path: str, fmt: str, *, mmap: bool, weights_only: bool
) -> Tuple[Any, Optional[MappedFile]]:
    if not weights_only:
        return _torch_load_trusted(path, mmap=mmap and fmt == "torch-zip"), None
    try:
        if fmt == "torch-zip":
            return load_torch_zip(path, mmap=mmap)
        return load_torch_legacy(path), None
    except MemoryError:
        raise CheckpointFormatError(
            path, "it asks for more memory than this machine has.", "The file is corrupt."
        ) from None
    except OSError as e:
        raise CheckpointFormatError(path, f"it cannot be read ({e.strerror or e}).") from None


def _torch_load_trusted(path: str, *, mmap: bool) -> Any:
    """``torch.load`` with pickle code allowed: only for files the user trusts."""
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
    except Exception as e:  # noqa: BLE001 (any failure of a trusted pickle is a bad file)
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointFormatError(
            path,
            f"torch could not read it ({type(e).__name__}: {first}).",
            "The file may be truncated or not a torch checkpoint.",
        ) from None


def _open_zoo_pickle(path: str, weights_only: bool) -> OpenedCheckpoint:
    try:
        with os.fdopen(open_exact(path), "rb") as f:
            if weights_only:
                data, _ = unpickle(f.read(), find_global=_find_zoo_global, encoding="latin1")
            else:
                data = pickle.load(f, encoding="latin1")
    except (MalformedPickle, UnsafeGlobal) as e:
        raise pickle_error(path, e) from None
    except MemoryError:
        raise CheckpointFormatError(
            path, "it asks for more memory than this machine has."
        ) from None
    except OSError as e:
        raise CheckpointFormatError(path, f"it cannot be read ({e.strerror or e}).") from None
    except Exception as e:  # noqa: BLE001 (only with weights_only=False: a trusted pickle)
        raise CheckpointFormatError(path, f"it is not a readable pickle ({e}).") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(path, f"the pickle holds a {type(data).__name__}, not a dict.")
    if "model" in data and "__author__" in data:
        if not isinstance(data["model"], dict):
            raise CheckpointFormatError(path, "its 'model' entry is not a dict of arrays.")
        logger.info(f"Reading a file from '{data['__author__']}'")
        return OpenedCheckpoint(path, data, "pkl-detectron2", lazy=False)
    # Caffe2 / Detectron1 zoo: detection models keep weights under "blobs".
    blobs = data.get("blobs", data)
    if not isinstance(blobs, dict):
        raise CheckpointFormatError(path, "its 'blobs' entry is not a dict of arrays.")
    model = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
    return OpenedCheckpoint(
        path,
        {"model": model, "__author__": "Caffe2", "matching_heuristics": True},
        "pkl-caffe2",
        lazy=False,
    )


def _find_zoo_global(module: str, name: str) -> Any:
    try:
        return _ZOO_GLOBALS[(module, name)]
    except KeyError:
        raise UnsafeGlobal(f"{module}.{name}") from None


class SafetensorsStateDict(Mapping):
    """Read-only mapping over a ``.safetensors`` file; each tensor is read on first use.

    The header is checked completely when the file is opened: known dtypes, shapes of
    non-negative integers, ``data_offsets`` that are in range, agree with the shape and do not
    overlap, no duplicate names, string metadata. Values are views of one private mapping of
    the file; read their data through :meth:`OpenedCheckpoint.reader`.
    """

    def __init__(self, path: str):
        self.path = path
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
        storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=size)
        self.mapped = MappedFile(path, storage.data_ptr(), size, identity)
        self.mapped.check_unchanged()
        self._bytes = torch.empty(0, dtype=torch.uint8).set_(storage)

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


# State dicts that answer shape()/dtype() from a header and hold only tensors.
_LAZY_STATES = (SafetensorsStateDict, TrainingModelView)


class ReadingStateDict(Mapping):
    """A state dict whose values are read (length-checked) into fresh tensors on access.

    Shapes and dtypes come without reading any data. For tools that touch every value once
    (convert, strip, diff): nothing they hold views the file, so a file that changes under
    them gives a clean error.
    """

    def __init__(self, state: Mapping, mapping: Optional[MappedFile]):
        self._state, self._mapping = state, mapping

    def shape(self, key: str) -> Tuple[int, ...]:
        """Shape of ``key`` without reading its data."""
        if isinstance(self._state, _LAZY_STATES):
            return self._state.shape(key)
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> Optional[torch.dtype]:
        """dtype of ``key`` without reading its data."""
        if isinstance(self._state, _LAZY_STATES):
            return self._state.dtype(key)
        value = self._state[key]
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.reshape(-1)[:0]).dtype
        return value.dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        with FileReader(self._mapping) as reader:
            return reader.read(self._state[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def _bad_header(path: str, problem: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        path,
        f"not a valid safetensors file: {problem}.",
        "Re-export or re-download it (python -m d2_efficient_ckpt convert writes valid ones).",
    )


def _parse_header(path: str, text: bytes) -> Dict[str, Any]:
    def no_duplicates(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate name '{k}'")
            out[k] = v
        return out

    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=no_duplicates)
    except RecursionError:
        raise _bad_header(path, "its header is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad_header(path, f"its header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad_header(path, "its header is not a JSON object")
    return header


def short_text(value: Any, limit: int = 80) -> str:
    """A value read from a file, for a message: at most ``limit`` characters, never an error.

    ``str()`` of an integer of more than 4,300 digits raises, so such numbers are named by
    their size, also inside lists and tuples; strings are shown as they are.
    """
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, (list, tuple)):
        parts = [short_text(v, limit) for v in value[:8]]
        inner = ", ".join(parts) + (", ..." if len(value) > 8 else "")
        return ("[" + inner + "]" if isinstance(value, list) else "(" + inner + ")")[:limit]
    if type(value) is int and not -(10**30) < value < 10**30:
        return f"<a {value.bit_length()}-bit integer>"
    try:
        return repr(value)[:limit]
    except ValueError:
        return f"<a {type(value).__name__}>"


def _entry(path: str, key: str, info: Any, data_size: int) -> Tuple[torch.dtype, tuple, int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _bad_header(path, f"entry '{key}' is not {{dtype, shape, data_offsets}}")
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
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
