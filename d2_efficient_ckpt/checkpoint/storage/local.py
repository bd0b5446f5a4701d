"""The local POSIX store: a file system the machine mounts (a disk or shared storage).

Atomic writes are a locked temporary file next to the target, fsynced, renamed over it,
then the directory fsynced (``atomic``); reads are ``mmap`` and length-checked ``pread``
of the file itself; the clean-up removes temporary files whose writer is dead (``stale``).
"""

import contextlib
import os
import threading
from typing import BinaryIO, Callable, List, Optional, Sequence, Tuple

import torch

from .atomic import atomic_file, fsync_dir, read_regular_file
from .base import FileInfo, Store
from .mapped import FileIdentity, changed_error, open_exact, read_exact
from .source import ByteSource
from .stale import remove_stale_temp_files

__all__ = ["LocalSource", "LocalStore"]

_ADVICE_CHUNK = 8 << 20  # bytes per advice call, so reads start before all are queued


class LocalStore(Store):
    """Files under local paths."""

    description = "the local file system (a disk or storage mounted at a path)"

    def local_path(self, path: str) -> str:
        return path

    def open_bytes(self, path: str) -> "LocalSource":
        return LocalSource(path)

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


class LocalSource(ByteSource):
    """A local file, read with ``pread`` on a descriptor opened for exact reads.

    Raises:
        OSError: the file cannot be opened (the caller names it).
    """

    def __init__(self, path: str, identity: Optional[FileIdentity] = None):
        self.name = path
        self._fd = open_exact(path)
        try:
            self.identity = FileIdentity.of_fd(self._fd)
            if identity is not None:
                identity.check(self._fd, path)
                self.identity = identity
        except BaseException:
            os.close(self._fd)
            raise
        self.size = self.identity.size

    @property
    def fd(self) -> int:
        """The descriptor (reads exactly, see ``open_exact``)."""
        return self._fd

    def read(self, offset: int, nbytes: int) -> bytes:
        return read_exact(self._fd, offset, nbytes, self.name)

    def read_into(self, offset: int, nbytes: int, into: torch.Tensor) -> None:
        read_exact(self._fd, offset, nbytes, self.name, into=into)

    def advise(self, ranges: Sequence[Tuple[int, int]]) -> Optional[threading.Thread]:
        if getattr(os, "posix_fadvise", None) is None or not ranges:
            return None
        thread = threading.Thread(target=self._advise, args=(list(ranges),), daemon=True)
        thread.start()
        return thread

    def _advise(self, ranges: List[Tuple[int, int]]) -> None:
        try:
            fd = os.open(self.name, os.O_RDONLY)
        except OSError:
            return
        try:
            for offset, length in ranges:
                for start in range(offset, offset + length, _ADVICE_CHUNK):
                    n = min(_ADVICE_CHUNK, offset + length - start)
                    os.posix_fadvise(fd, start, n, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # advice only
        finally:
            os.close(fd)

    def check_unchanged(self) -> None:
        try:
            fd = os.open(self.name, os.O_RDONLY)
        except OSError as e:
            raise changed_error(self.name, f"it can no longer be opened: {e.strerror}") from None
        try:
            self.identity.check(fd, self.name)
        finally:
            os.close(fd)

    def reopen(self) -> "LocalSource":
        try:
            return LocalSource(self.name, self.identity)
        except OSError as e:
            raise changed_error(self.name, f"it can no longer be opened: {e}") from None

    def address_space(self) -> torch.UntypedStorage:
        # torch's stubs type from_file as the storage base class's; it is untyped here.
        storage: torch.UntypedStorage = torch.UntypedStorage.from_file(  # type: ignore[assignment]
            self.name, shared=False, nbytes=self.size
        )
        self.check_unchanged()  # the mapping must not extend past the file's end
        return storage

    def fileobj(self) -> BinaryIO:
        return open(self._fd, "rb", closefd=False)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
