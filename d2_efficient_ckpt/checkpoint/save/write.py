"""Write one checkpoint file durably, with its integrity record, and check it.

The order of operations is what makes a save crash-safe:
    1. serialize into a temporary file next to the target, hashing every byte on the way;
    2. fsync it and rename it over the target, then fsync the directory;
    3. write the integrity record (also atomically);
    4. with ``verify``, read the file back from the device (past the page cache, see
       ``integrity``) and compare it with the record.
A kill at any point leaves either the previous state or a complete file. A file without its
record (a kill between 2 and 3) is complete, and is checked by its zip structure instead.
"""

import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .atomic import atomic_file
from .errors import CheckpointSaveError
from .integrity import (
    HashingWriter,
    IntegrityError,
    IntegrityRecord,
    check_full,
    record_path,
    write_record,
)

__all__ = [
    "CheckpointSaveError",
    "SaveResult",
    "explain_os_error",
    "write_checkpoint",
    "remove_checkpoint",
]

logger = logging.getLogger(__name__)

Serializer = Callable[[Any, Any], None]


@dataclass
class SaveResult:
    """What one write did.

    Attributes:
        path: the checkpoint file.
        record: its integrity record.
        write_s: seconds to serialize, fsync and rename.
        verify_s: seconds to read it back and compare (0 without verify).
    """

    path: str
    record: IntegrityRecord
    write_s: float
    verify_s: float = 0.0


def explain_os_error(path: str, e: OSError) -> CheckpointSaveError:
    """The :class:`CheckpointSaveError` for an ``OSError`` met while writing ``path``."""
    where = os.path.dirname(path) or "."
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return CheckpointSaveError(
            path,
            f"the disk is full ({e.strerror}).",
            f"Free space in {where}, or lower CHECKPOINT.SAVE.MAX_TO_KEEP.",
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CheckpointSaveError(
            path,
            f"{where} is not writable ({e.strerror}).",
            "Set OUTPUT_DIR to a writable directory.",
        )
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return CheckpointSaveError(
            path,
            f"{e.filename or where} is in the way: {e.strerror}.",
            "Set OUTPUT_DIR to a directory (or a path that can become one).",
        )
    return CheckpointSaveError(path, f"{e.strerror or e}.")


def write_checkpoint(
    path: str,
    data: Any,
    *,
    verify: bool = True,
    iteration: int = -1,
    serializer: Optional[Serializer] = None,
    opener=open,
) -> SaveResult:
    """Serialize ``data`` to ``path`` durably and write its integrity record.

    Args:
        path: the checkpoint file; its directory must exist.
        data: what to serialize (a dict of state dicts).
        verify: read the file back from the device afterwards and compare it with the
            record.
        iteration: stored in the record, so a resume can order checkpoints cheaply.
        serializer: ``fn(data, file_object)``; ``torch.save`` by default.
        opener: ``open``-like function for the temporary file.

    Raises:
        CheckpointSaveError: the write failed (full disk, read-only directory, ...); the
            previous file of that name, if any, is unchanged.
        IntegrityError: the file read back differs from what was written; it was removed.
    """
    serializer = serializer or torch.save
    start = time.perf_counter()
    hashing: Optional[HashingWriter] = None
    try:
        with atomic_file(path, opener=opener) as f:
            hashing = HashingWriter(f)
            serializer(data, hashing)
    except Exception as e:
        cause = hashing.error if hashing is not None and hashing.error is not None else e
        if isinstance(cause, OSError):
            raise explain_os_error(path, cause) from e
        raise
    record = IntegrityRecord(
        os.path.basename(path), hashing.size, hashing.hexdigest(), iteration=iteration
    )
    try:
        write_record(path, record)
    except OSError as e:
        raise explain_os_error(path, e) from e
    result = SaveResult(path, record, time.perf_counter() - start)
    if verify:
        start = time.perf_counter()
        try:
            check_full(path, direct=True)
        except IntegrityError:
            remove_checkpoint(path)  # never leave a file that fails verification
            raise
        result.verify_s = time.perf_counter() - start
    return result


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint and its integrity record (either may be missing)."""
    for p in (path, record_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
