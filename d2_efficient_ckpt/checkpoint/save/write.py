"""Write one checkpoint file durably, with its integrity record, and check it.

The order of operations is what makes a save crash-safe:
    1. serialize into a temporary file next to the target, hashing every byte on the way,
       and fsync it;
    2. with ``verify``, read the temporary file back from the device (past the page cache,
       see ``integrity``) and compare it with the hash: a file that fails never gets the
       final name, and the previous file of that name is untouched. For an object, the
       local spool is read back through the page cache instead, where the upload reads its
       parts from: the durable copy is the store's, and the store checks each part's MD5
       (``storage/s3.py``);
    3. remove the previous record of that name, if any (re-saving ``model_final``), so that no
       kill can leave the new file next to the old file's record;
    4. rename the file over the target and fsync the directory;
    5. write the integrity record (also atomically).
A kill at any point leaves either the previous state or a complete file. A file without its
record (a kill between 3 and 5) is complete, and is checked by its zip structure instead.
Every ``OSError`` on the way, the directory fsync included, becomes a
:class:`CheckpointSaveError`, and no temporary file outlives an error.
"""

import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..formats.registry import writer_for
from ..storage.registry import is_remote, store_for
from .errors import CheckpointSaveError
from .integrity import (
    READ_STORE,
    HashingWriter,
    IntegrityRecord,
    compare_with,
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
        verified_from: where the check read the bytes (``integrity.READ_DEVICE``,
            ``READ_PAGE_CACHE`` where the file system refuses ``O_DIRECT``, ``READ_STORE``
            for the spool of an object); "" without verify.
        cpu_s: CPU seconds of the calling thread for all of it (for an asynchronous save,
            what the background thread took from the machine).
    """

    path: str
    record: IntegrityRecord
    write_s: float
    verify_s: float = 0.0
    verified_from: str = ""
    cpu_s: float = 0.0


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
    run: str = "",
    serializer: Optional[Serializer] = None,
    opener=open,
) -> SaveResult:
    """Serialize ``data`` to ``path`` durably and write its integrity record.

    Args:
        path: the checkpoint file; its directory must exist.
        data: what to serialize (a dict of state dicts).
        verify: read the file back from the device before it gets its name, and compare it
            with the hash of what was written.
        iteration: stored in the record, so a resume can order checkpoints cheaply.
        run: the run identity stored in the record (see ``fallback`` and ``retention``).
        serializer: ``fn(data, file_object)``; the ``pth`` writer (torch's zip archive) by
            default.
        opener: ``open``-like function for the temporary file.

    Raises:
        CheckpointSaveError: the write or the read-back failed (full disk, read-only
            directory, I/O error); the previous file of that name, if any, is unchanged.
        IntegrityError: the file read back differs from what was written; it was removed
            and the previous file of that name is unchanged.
    """
    write: Serializer = serializer or writer_for("pth")
    start = time.perf_counter()
    cpu = time.thread_time()
    hashing: Optional[HashingWriter] = None
    verify_s = 0.0
    verified_from = ""
    remote = is_remote(path)

    def before_replace(tmp: str) -> None:
        nonlocal verify_s, verified_from
        assert hashing is not None
        if verify:
            t = time.perf_counter()
            try:
                verified_from = compare_with(
                    tmp, hashing.size, hashing.hexdigest(), direct=not remote, name=path
                )
                if remote:  # the spool, read where the parts came from; the store checks MD5s
                    verified_from = READ_STORE
            except OSError as e:
                raise CheckpointSaveError(
                    path,
                    f"it could not be read back to verify it ({e.strerror or e}); it was not "
                    "kept, and the previous file of this name is unchanged.",
                    "Check the storage (dmesg, the file system's health), then save again.",
                ) from e
            verify_s = time.perf_counter() - t
        _drop_old_record(path)

    try:
        with store_for(path).open_atomic(path, opener=opener, before_replace=before_replace) as f:
            hashing = HashingWriter(f)
            write(data, hashing)
        record = IntegrityRecord(
            os.path.basename(path), hashing.size, hashing.hexdigest(), iteration=iteration, run=run
        )
        write_record(path, record)
    except CheckpointSaveError:
        raise
    except Exception as e:
        cause = hashing.error if hashing is not None and hashing.error is not None else e
        if isinstance(cause, OSError):
            raise explain_os_error(path, cause) from e
        raise
    elapsed = time.perf_counter() - start - verify_s
    return SaveResult(path, record, elapsed, verify_s, verified_from, time.thread_time() - cpu)


def _drop_old_record(path: str) -> None:
    # The record of the file about to be replaced must go first, durably: after the rename
    # it would describe a file that is no longer there.
    store = store_for(path)
    if not store.exists(record_path(path)):
        return
    store.remove(record_path(path))
    store.sync_directory(os.path.dirname(path))


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint and its integrity record (either may be missing)."""
    store = store_for(path)
    for p in (path, record_path(path)):
        store.remove(p)
