"""The checkpoint file formats by name: which one a file is, how it opens, how each is
written, and the names checkpoint files have.

This is the one home of the checkpoint suffixes and of the periodic name
``<prefix>_<7 digits><suffix>``. Format detection, the loader, the saver, resume, retention
and the command-line tools all ask here instead of spelling a suffix themselves.

Two sets of names meet here:
    * written formats: ``pth`` (called ``torch`` by the tools' output) and ``safetensors``,
      the values of ``CHECKPOINT.SAVE.FORMAT``. Checkpoint files have their suffixes
      (``.pth``, ``.safetensors``); the tools also write torch files named ``.pt``, ``.ckpt``
      or ``.bin``.
    * detected formats (:func:`detect_format`): ``torch-zip``, ``torch-legacy``,
      ``safetensors``, ``pkl`` and ``pyth``; an opened file says more (``pkl-caffe2``).
"""

import os
import re
import stat
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple

from ..errors import CheckpointFormatError, UnsafeCheckpointError
from ..storage.registry import is_remote, open_bytes, store_for
from .opened import OpenedCheckpoint
from .pycls import SUFFIX as PYCLS_SUFFIX
from .pycls import open_pycls
from .safetensors import SUFFIX as SAFETENSORS_SUFFIX
from .safetensors import write_model as write_safetensors_model
from .torch_file import LEGACY, ZIP, container_of, open_torch, read_head, write_checkpoint_file
from .torch_file import SUFFIX as TORCH_SUFFIX
from .torch_file import SUFFIXES as TORCH_SUFFIXES
from .torch_file import write_model as write_torch_model
from .torch_legacy import HEAD as LEGACY_HEAD
from .torch_zip import is_complete_zip, load_torch_zip
from .training_safetensors import open_safetensors, write_training_safetensors
from .zoo_pickle import SUFFIX as ZOO_SUFFIX
from .zoo_pickle import open_zoo_pickle

__all__ = [
    "SAVE_FORMATS",
    "CHECKPOINT_SUFFIXES",
    "detect_format",
    "open_checkpoint",
    "suffix_for",
    "writer_for",
    "model_writer_for",
    "output_format",
    "is_checkpoint_name",
    "checkpoint_format",
    "periodic_name",
    "parse_periodic",
    "iteration_from_name",
]

# The values of CHECKPOINT.SAVE.FORMAT, the default first: what the saver writes and a
# resume reads back (either, whatever the setting).
SAVE_FORMATS = ("pth", "safetensors")
# What the tools call each written format in their output ("output_format").
_TOOL_NAMES = {"pth": "torch", "safetensors": "safetensors"}
_SUFFIXES = {"pth": TORCH_SUFFIX, "safetensors": SAFETENSORS_SUFFIX}
# The suffixes of checkpoint files, in SAVE_FORMATS order.
CHECKPOINT_SUFFIXES = tuple(_SUFFIXES[f] for f in SAVE_FORMATS)
# What a name (a tools' output file) says of its format.
_OUTPUT_SUFFIXES = {SAFETENSORS_SUFFIX: "safetensors", **dict.fromkeys(TORCH_SUFFIXES, "pth")}
# Formats told by their suffix alone; any other file is sniffed for a torch container.
_READ_BY_SUFFIX = {SAFETENSORS_SUFFIX: "safetensors", ZOO_SUFFIX: "pkl", PYCLS_SUFFIX: "pyth"}

# fn(data, file object): a whole checkpoint, as the saver writes it.
Serializer = Callable[[Any, BinaryIO], None]
# fn(entries, file object, *, extra, progress, desc, path): model weights, as the tools do.
ModelWriter = Callable[..., None]
_OPENERS: Dict[str, Callable[..., OpenedCheckpoint]] = {
    "safetensors": open_safetensors,
    "pkl": open_zoo_pickle,
    "pyth": open_pycls,
    ZIP: open_torch,
    LEGACY: open_torch,
}
_WRITERS: Dict[str, Serializer] = {
    "pth": write_checkpoint_file,
    "safetensors": write_training_safetensors,
}
_MODEL_WRITERS: Dict[str, ModelWriter] = {
    "pth": write_torch_model,
    "safetensors": write_safetensors_model,
}
_PERIODIC_DIGITS = 7  # fvcore's PeriodicCheckpointer: f"{prefix}_{iteration:07d}"
_PERIODIC = re.compile(
    r"^(?P<prefix>.+)_(?P<iter>\d{%d})(?:%s)$"
    % (_PERIODIC_DIGITS, "|".join(re.escape(s) for s in CHECKPOINT_SUFFIXES))
)
_ITERATION = re.compile(r"_(\d+)$")


def _written(fmt: str) -> str:
    """The written format named ``fmt`` (its tools' name too: ``torch`` is ``pth``)."""
    for name, tool_name in _TOOL_NAMES.items():
        if fmt in (name, tool_name):
            return name
    raise ValueError(f"unknown checkpoint format {fmt!r}; known: {', '.join(SAVE_FORMATS)}")


def suffix_for(fmt: str) -> str:
    """The suffix files of a written format get: ``pth`` -> ``.pth``.

    Raises:
        ValueError: not a written format.
    """
    return _SUFFIXES[_written(fmt)]


def writer_for(fmt: str) -> Serializer:
    """``fn(data, f)`` that writes a whole checkpoint in format ``fmt``.

    Raises:
        ValueError: not a written format.
    """
    return _WRITERS[_written(fmt)]


def model_writer_for(fmt: str) -> ModelWriter:
    """``fn(entries, f, *, extra, progress, desc, path)`` that writes model weights and plain
    entries in format ``fmt`` (see ``safetensors.write_model``, ``torch_file.write_model``).

    Raises:
        ValueError: not a written format.
    """
    return _MODEL_WRITERS[_written(fmt)]


def output_format(name: str) -> Optional[str]:
    """The tools' name of the format an output file called ``name`` gets (``torch`` or
    ``safetensors``), or None when its suffix says nothing."""
    for suffix, fmt in _OUTPUT_SUFFIXES.items():
        if name.endswith(suffix):
            return _TOOL_NAMES[fmt]
    return None


def checkpoint_format(name: str) -> Optional[str]:
    """The written format of a checkpoint file called ``name`` (``pth``, ``safetensors``),
    or None when it is not named like a checkpoint."""
    for fmt, suffix in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` has a checkpoint suffix (of either written format)."""
    return checkpoint_format(name) is not None


def periodic_name(prefix: str, iteration: int, suffix_or_format: str = "") -> str:
    """The name of a periodic checkpoint: ``("model", 99, "pth")`` -> ``model_0000099.pth``.

    Args:
        prefix: the name's start (``model``).
        iteration: the iteration saved.
        suffix_or_format: a suffix (``.pth``), a written format (``pth``), or empty for the
            name without suffix that ``Checkpointer.save`` takes.
    """
    suffix = suffix_or_format
    if suffix and not suffix.startswith("."):
        suffix = suffix_for(suffix)
    return f"{prefix}_{iteration:0{_PERIODIC_DIGITS}d}{suffix}"


def parse_periodic(name: str) -> Optional[Tuple[str, int]]:
    """``(prefix, iteration)`` of a periodic checkpoint's file name, or None.

    Only the names :func:`periodic_name` makes count: ``<prefix>_<7 digits>`` and a
    checkpoint suffix (``model_0000099.pth`` -> ``("model", 99)``; ``model_99.pth``,
    ``model_0000099`` and ``model_final.pth`` -> None).
    """
    m = _PERIODIC.match(name)
    return (m.group("prefix"), int(m.group("iter"))) if m else None


def iteration_from_name(name: str) -> int:
    """The iteration a file's name ends with, whatever its digits: ``model_0000099.pth`` ->
    99, also ``model_99`` (another tool's name) -> 99; ``model_final.pth`` -> -1."""
    stem = name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    m = _ITERATION.search(stem)
    return int(m.group(1)) if m else -1


def _check_is_file(path: str) -> None:
    """Raise the loader's error for a path that is not a non-empty regular file."""
    if is_remote(path):
        _check_is_object(path)
        return
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


def _check_is_object(url: str) -> None:
    try:
        size = store_for(url).info(url).size
    except FileNotFoundError:
        raise CheckpointFormatError(
            url, "there is no such object.", "Check MODEL.WEIGHTS or the URL given to load()."
        ) from None
    if size == 0:
        raise CheckpointFormatError(
            url, "the object is empty.", "It was probably cut off during a save."
        )


def _sniff_torch(path: str) -> str:
    """The torch container of a file without a telling suffix, from its first bytes."""
    try:
        if is_remote(path):
            with open_bytes(path) as source:
                head = source.read(0, min(source.size, len(LEGACY_HEAD)))
                container = container_of(head)
                truncated = False  # the open reads the directory, and says so, by name
        else:
            head = read_head(path)
            container = container_of(head)
            with open_bytes(path) as source:
                truncated = container == ZIP and not is_complete_zip(source)
    except OSError as e:
        raise CheckpointFormatError(path, f"it cannot be read ({e.strerror}).") from None
    if truncated:
        raise CheckpointFormatError(
            path,
            "the torch zip archive is truncated or corrupt (its central directory is missing).",
            "The save was probably interrupted; load an earlier checkpoint.",
        )
    if container is None:
        raise CheckpointFormatError(
            path,
            f"not a checkpoint format this loader knows (first bytes {head[:8]!r}).",
            "Expected a torch .pth/.pt file, .safetensors, or a Detectron/Caffe2 .pkl.",
        )
    return container


def detect_format(path: str) -> str:
    """Tell a checkpoint's format from its suffix, else from its first bytes.

    Args:
        path: a local file, or the URL of an object in a registered store.

    Returns:
        ``safetensors``, ``pkl``, ``pyth``, ``torch-zip`` or ``torch-legacy``.

    Raises:
        CheckpointFormatError: for a missing, empty, truncated or unrecognised file.
    """
    _check_is_file(path)
    for suffix, fmt in _READ_BY_SUFFIX.items():
        if path.endswith(suffix):
            return fmt
    return _sniff_torch(path)


def open_checkpoint(path: str, *, mmap: bool = True, weights_only: bool = True) -> OpenedCheckpoint:
    """Open ``path`` without reading more of it than its structure.

    Args:
        path: a local file, or the URL of an object in a registered store. A torch zip
            object read safely is read lazily, in ranges; any other is downloaded first.
        mmap: memory-map torch zip files instead of reading them whole.
        weights_only: refuse pickles that need globals outside the allowlist.

    Returns:
        The opened checkpoint. Zoo pickles are returned with ``__author__`` and
        ``matching_heuristics`` entries as detectron2 does.

    Raises:
        CheckpointFormatError: the file is missing, truncated or of an unknown format.
        UnsafeCheckpointError: the file needs globals outside the allowlist.
    """
    if is_remote(path):
        return _open_object(path, mmap=mmap, weights_only=weights_only)
    fmt = detect_format(path)
    return _OPENERS[fmt](path, fmt, mmap=mmap, weights_only=weights_only)


def _open_object(url: str, *, mmap: bool, weights_only: bool) -> OpenedCheckpoint:
    """:func:`open_checkpoint` of an object: one HEAD, then ranges; or a download."""
    try:
        source = open_bytes(url)
    except FileNotFoundError:
        raise CheckpointFormatError(
            url, "there is no such object.", "Check MODEL.WEIGHTS or the URL given to load()."
        ) from None
    if source.size == 0:
        raise CheckpointFormatError(
            url, "the object is empty.", "It was probably cut off during a save."
        )
    fmt = next((f for suffix, f in _READ_BY_SUFFIX.items() if url.endswith(suffix)), None)
    if fmt is None:
        # data.pkl and the directory are fetched now, with the first bytes that tell the
        # container: the open that follows reads from them.
        edge = min(source.size, 256 << 10)
        source.advise([(0, edge), (source.size - edge, edge)])
        head = source.read(0, min(source.size, len(LEGACY_HEAD)))
        fmt = container_of(head)
        if fmt is None:
            raise CheckpointFormatError(
                url,
                f"not a checkpoint format this loader knows (first bytes {head[:8]!r}).",
                "Expected a torch .pth/.pt file, .safetensors, or a Detectron/Caffe2 .pkl.",
            )
    if fmt == ZIP and weights_only:
        try:
            data, mapping = load_torch_zip(source, mmap=mmap)
        except MemoryError:
            raise CheckpointFormatError(
                url, "it asks for more memory than this machine has.", "The file is corrupt."
            ) from None
        return OpenedCheckpoint(url, data, fmt, lazy=mmap, mapping=mapping)
    source.close()
    local = store_for(url).local_path(url)  # read whole anyway: downloaded whole
    try:
        return _OPENERS[fmt](local, fmt, mmap=mmap, weights_only=weights_only)
    except (CheckpointFormatError, UnsafeCheckpointError) as e:
        raise _naming(e, local, url) from None


def _naming(error: Exception, local: str, url: str) -> Exception:
    """``error`` about the download ``local`` of an object, told of the object ``url``."""
    error.args = tuple(a.replace(local, url) if isinstance(a, str) else a for a in error.args)
    if getattr(error, "path", None) == local:
        error.path = url  # type: ignore[attr-defined]
    return error
