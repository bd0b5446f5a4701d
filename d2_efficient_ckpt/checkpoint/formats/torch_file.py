"""A torch file (``torch.save``), zip or legacy: suffixes, sniffing, reading, writing.

Which container a file is comes from its first bytes, never its name: ``.pth``, ``.pt``,
``.ckpt`` and ``.bin`` files are all read the same way. Reading runs the pickle on the safe
unpickler (:mod:`.torch_zip`, :mod:`.torch_legacy`) unless the caller trusts the file
(``weights_only=False``); only then does ``torch.load`` run. Writing is the zip archive of
``torch.save``, by our one-pass writer (:mod:`.torch_zip_writer`): whole training checkpoints
(:func:`write_checkpoint_file`) and model weights for the tools (:func:`write_model`).
"""

import logging
import os
from typing import Any, BinaryIO, Dict, Iterable, Optional, Tuple

import torch

from ..errors import CheckpointFormatError
from ..storage.mapped import MappedFile, open_exact
from .entries import TensorEntry, byte_progress, compact
from .opened import OpenedCheckpoint
from .torch_legacy import HEAD as LEGACY_HEAD
from .torch_legacy import load_torch_legacy
from .torch_zip import MAGIC as ZIP_MAGIC
from .torch_zip import load_torch_zip
from .torch_zip_writer import write_torch_zip

__all__ = [
    "SUFFIX",
    "SUFFIXES",
    "ZIP",
    "LEGACY",
    "read_head",
    "container_of",
    "read_torch",
    "open_torch",
    "write_checkpoint_file",
    "write_model",
]

SUFFIX = ".pth"  # the suffix this package writes
SUFFIXES = (SUFFIX, ".pt", ".ckpt", ".bin")  # names the tools take for a torch output file
ZIP, LEGACY = "torch-zip", "torch-legacy"  # the two containers, as ``detect_format`` names them

logger = logging.getLogger(__name__)


def read_head(path: str) -> bytes:
    """The first bytes of ``path``: enough to tell the containers apart.

    Raises:
        OSError: the file cannot be read.
    """
    fd = open_exact(path)  # an ordinary read here would set up read-ahead into the tensors
    try:
        return os.pread(fd, len(LEGACY_HEAD), 0)
    finally:
        os.close(fd)


def container_of(head: bytes) -> Optional[str]:
    """:data:`ZIP` or :data:`LEGACY` for a file starting with ``head``, else None."""
    if head.startswith(ZIP_MAGIC):
        return ZIP
    if head == LEGACY_HEAD:
        return LEGACY
    return None


def read_torch(
    path: str, container: str, *, mmap: bool, weights_only: bool
) -> Tuple[Any, Optional[MappedFile]]:
    """The unpickled object of a torch file and the mapping its tensors view (or None).

    Args:
        path: a local file.
        container: :data:`ZIP` or :data:`LEGACY`.
        mmap: let tensors view a private mapping of the file (zip only).
        weights_only: run the pickle on the safe unpickler; ``False`` runs ``torch.load``.

    Raises:
        CheckpointFormatError: the file is damaged, or too large for this machine.
        UnsafeCheckpointError: the pickle names a global outside the allowlist.
    """
    if not weights_only:
        return _torch_load_trusted(path, mmap=mmap and container == ZIP), None
    try:
        if container == ZIP:
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


def open_torch(path: str, fmt: str, *, mmap: bool, weights_only: bool) -> OpenedCheckpoint:
    """Open a torch file whose container ``fmt`` was detected; zip files stay mapped."""
    if fmt == LEGACY:
        logger.info(f"{path} uses torch's legacy (pre-zip) format: reading it eagerly.")
    use_mmap = mmap and fmt == ZIP
    data, mapping = read_torch(path, fmt, mmap=use_mmap, weights_only=weights_only)
    return OpenedCheckpoint(path, data, fmt, lazy=use_mmap, mapping=mapping)


def write_checkpoint_file(data: Any, f: BinaryIO) -> None:
    """``torch.save(data, f)``: a whole checkpoint (``CHECKPOINT.SAVE.FORMAT pth``), by the
    one-pass writer of :mod:`.torch_zip_writer`."""
    write_torch_zip(data, f)


def write_model(
    entries: Iterable[TensorEntry],
    f: BinaryIO,
    *,
    extra: Optional[Dict[str, Any]] = None,
    progress: bool = False,
    desc: str = "",
    path: str = "",
) -> None:
    """``torch.save({"model": {...}, **extra}, f)``, each tensor alone in its storage.

    Args:
        entries: the model's tensors, read here one at a time.
        f: the open output file.
        extra: plain entries besides the weights (iteration, ``__author__``, ...).
        progress: show a byte progress bar while the tensors are read.
        desc: its label.
        path: the output file, for messages (unused: torch writes every dtype).
    """
    if extra and "model" in extra:  # it would replace the weights
        raise ValueError("an extra entry named 'model'")
    entries = list(entries)
    model: Dict[str, torch.Tensor] = {}
    with byte_progress(sum(e.nbytes for e in entries), desc, progress) as bar:
        for e in entries:
            model[e.key] = compact(e.fetch().to(e.dtype))
            bar.update(e.nbytes)
    write_torch_zip({"model": model, **(extra or {})}, f)
