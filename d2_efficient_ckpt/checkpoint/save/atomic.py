"""Crash-safe file replacement: temporary file, fsync, rename, directory fsync.

A file written here either exists complete under its final name or not at all. The
temporary name never ends in a checkpoint suffix, so a file left by a killed process is never
listed as a checkpoint, and :func:`remove_stale_temp_files` deletes it on the next run.
"""

import contextlib
import logging
import os
import re
import uuid
from typing import BinaryIO, Callable, Iterator, List

__all__ = [
    "TEMP_INFIX",
    "is_temp_file",
    "temp_path_for",
    "fsync_dir",
    "atomic_file",
    "atomic_write_bytes",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)

# "model_0000009.pth" is written as ".model_0000009.pth.partial-<pid>-<hex>".
TEMP_INFIX = ".partial-"
_TEMP_RE = re.compile(r"^\..+\.partial-(\d+)-[0-9a-f]+$")


def is_temp_file(name: str) -> bool:
    """Whether ``name`` (a base name) is a temporary file of :func:`atomic_file`."""
    return bool(_TEMP_RE.match(name))


def temp_path_for(path: str) -> str:
    """A unique temporary path next to ``path``: same directory, so the rename is atomic."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TEMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) refuse fsync on directories
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str, *, durable: bool = True, opener=open) -> Iterator[BinaryIO]:
    """Open a temporary file that replaces ``path`` only when the block completes.

    On success the file is flushed and fsynced, renamed over ``path`` and the directory is
    fsynced. On any error, including KeyboardInterrupt, the temporary file is removed and
    ``path`` is left as it was.

    Args:
        path: the final file name.
        durable: fsync the file and the directory (off only for throwaway files).
        opener: ``open``-like function for the temporary file (tests inject failing disks).
    """
    tmp = temp_path_for(path)
    f = opener(tmp, "xb")
    try:
        yield f
        f.flush()
        if durable:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        f.close()
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(path))


def atomic_write_bytes(path: str, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` by ``data`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, durable=durable) as f:
        f.write(data)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(directory: str, alive: Callable[[int], bool] = _alive) -> List[str]:
    """Delete temporary files of killed writers in ``directory``; return their names.

    A file whose writer process still runs on this machine is kept: two jobs may share an
    output directory for a moment (a finishing job and its successor).
    """
    removed: List[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if not m or alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
            removed.append(name)
    if removed:
        logger.warning(
            f"Removed {len(removed)} incomplete file(s) left in {directory} by an interrupted "
            f"save: {', '.join(sorted(removed))}"
        )
    return removed
