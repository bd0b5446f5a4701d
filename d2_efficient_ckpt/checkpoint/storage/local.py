"""The local POSIX store: a file system the machine mounts (a disk or shared storage).

Atomic writes are a locked temporary file next to the target, fsynced, renamed over it,
then the directory fsynced (``atomic``); reads are ``mmap`` and length-checked ``pread``
of the file itself; the clean-up removes temporary files whose writer is dead (``stale``).
"""

import contextlib
import os
from typing import BinaryIO, Callable, List, Optional

from .atomic import atomic_file, fsync_dir, read_regular_file
from .base import FileInfo, Store
from .stale import remove_stale_temp_files

__all__ = ["LocalStore"]


class LocalStore(Store):
    """Files under local paths."""

    description = "the local file system (a disk or storage mounted at a path)"

    def local_path(self, path: str) -> str:
        return path

    def read_range(self, path: str, offset: int, nbytes: int) -> bytes:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), nbytes, offset)

    def read_small(self, path: str, limit: int) -> bytes:
        return read_regular_file(path, limit)

    def open_atomic(
        self,
        path: str,
        *,
        durable: bool = True,
        opener: Callable[..., BinaryIO] = open,
        before_replace: Optional[Callable[[str], None]] = None,
    ) -> "contextlib.AbstractContextManager[BinaryIO]":
        return atomic_file(path, durable=durable, opener=opener, before_replace=before_replace)

    def list(self, directory: str) -> List[str]:
        return os.listdir(directory)

    def info(self, path: str) -> FileInfo:
        st = os.stat(path)
        return FileInfo(st.st_size, st.st_mtime)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)

    def makedirs(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)

    def sync_directory(self, directory: str) -> None:
        fsync_dir(directory)

    def remove_stale(self, directory: str, max_age_s: float) -> List[str]:
        return remove_stale_temp_files(directory, max_age_s)
