"""The store interface: everything the checkpointer does to a checkpoint directory.

A store holds the files of one kind of location. Reading needs a local file (``mmap`` and
checked reads) or byte ranges; writing is atomic (a file appears whole under its name or
not at all); listing, removing and the clean-up of interrupted writes complete the set.
The saver, the tag, the integrity records, retention, the resume rule and the load report
reach the directory only through a store (see ``registry.store_for``).
"""

import abc
import contextlib
import shutil
from typing import TYPE_CHECKING, BinaryIO, Callable, List, NamedTuple, Optional

if TYPE_CHECKING:
    from .source import ByteSource

__all__ = ["FileInfo", "Store"]


class FileInfo(NamedTuple):
    """What a listing knows of one file: its size, when it was last written, and for an
    object its ETag (the store's name for this version of its bytes)."""

    size: int
    mtime: float
    etag: str = ""


class Store(abc.ABC):
    """Files under paths of one kind (see :func:`~.registry.store_for`).

    Every method raises ``OSError`` (or a subclass) when the storage fails; callers turn it
    into the package's errors with the path and the fix.
    """

    #: Shown in messages: what this store is.
    description: str = ""

    @abc.abstractmethod
    def local_path(self, path: str) -> str:
        """A local file holding ``path``'s bytes, to map and read."""

    @abc.abstractmethod
    def open_bytes(self, path: str) -> "ByteSource":
        """Exact, checked reads of ``path``'s bytes (see :class:`~.source.ByteSource`).

        Raises:
            FileNotFoundError: there is no such file.
            OSError: it cannot be read.
        """

    def download(self, path: str, local: str) -> FileInfo:
        """Copy ``path`` whole to the local file ``local``; return what was copied."""
        shutil.copyfile(path, local)
        return self.info(path)

    @abc.abstractmethod
    def read_range(self, path: str, offset: int, nbytes: int) -> bytes:
        """``nbytes`` bytes of ``path`` from ``offset`` (fewer only at the end of the file)."""

    @abc.abstractmethod
    def read_small(self, path: str, limit: int) -> bytes:
        """The whole of a small file (a tag, a record), refused above ``limit`` bytes.

        Raises:
            FileNotFoundError: there is no such file.
        """

    @abc.abstractmethod
    def open_atomic(
        self,
        path: str,
        *,
        durable: bool = True,
        opener: Callable[..., BinaryIO] = open,
        before_replace: Optional[Callable[[str], None]] = None,
    ) -> "contextlib.AbstractContextManager[BinaryIO]":
        """A writable file that becomes ``path`` only when the ``with`` block completes.

        ``before_replace`` gets a local path of the complete file before it gets its name
        (the check after a save); an error there, or in the block, leaves ``path`` as it was.
        """

    def write_bytes(self, path: str, data: bytes, *, durable: bool = True) -> None:
        """Replace ``path`` by ``data`` atomically."""
        with self.open_atomic(path, durable=durable) as f:
            f.write(data)

    @abc.abstractmethod
    def list(self, directory: str) -> List[str]:
        """The names in ``directory`` (not recursive)."""

    @abc.abstractmethod
    def info(self, path: str) -> FileInfo:
        """Size and modification time of ``path``.

        Raises:
            FileNotFoundError: there is no such file.
        """

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """Whether ``path`` names anything (a broken link counts)."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Delete ``path``; a missing one is fine."""

    @abc.abstractmethod
    def makedirs(self, directory: str) -> None:
        """Create ``directory`` and its parents if needed."""

    @abc.abstractmethod
    def sync_directory(self, directory: str) -> None:
        """Make the renames and removals in ``directory`` durable."""

    @abc.abstractmethod
    def remove_stale(self, directory: str, max_age_s: float) -> List[str]:
        """Remove what interrupted writes left in ``directory``; return the names. Never
        raises: a clean-up failure must not stop a save or a resume."""
