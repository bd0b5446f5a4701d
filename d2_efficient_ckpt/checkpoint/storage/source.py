"""Exact reads of one checkpoint's bytes, wherever they are: :class:`ByteSource`.

The formats read a checkpoint through a source: its size, length-checked reads of byte
ranges (into ``bytes`` or straight into a tensor's memory), advice about the ranges a load
will read next, and a check that the bytes did not change since the source was opened. A
local file is a ``local.LocalSource`` (``pread`` on a descriptor without read-ahead, see
``mapped.open_exact``); an object in a store is fetched in ranges by that store's source.

Tensors of a lazy format view :meth:`ByteSource.address_space`: a private mapping of a local
file, or untouched anonymous memory of the object's size for a remote one. Only their offsets
in it matter: every read goes through the source, never through the mapping.
"""

import abc
import io
import threading
from typing import BinaryIO, Callable, Optional, Sequence, Tuple

import torch

__all__ = ["ByteSource", "SourceFile", "Check"]

# check(bytes of a range) raises if they are not what the format expects (see add_check).
Check = Callable[[bytes], None]


class ByteSource(abc.ABC):
    """The bytes of one checkpoint file or object, read exactly.

    Attributes:
        name: the path or URL, for messages.
        size: its length in bytes when it was opened.
        remote: whether reads cross a network (every round trip costs).
    """

    name: str = ""
    size: int = 0
    remote: bool = False

    @abc.abstractmethod
    def read(self, offset: int, nbytes: int) -> bytes:
        """Exactly ``nbytes`` from ``offset``.

        Raises:
            CheckpointFormatError: the bytes end early, changed, or cannot be read.
        """

    @abc.abstractmethod
    def read_into(self, offset: int, nbytes: int, into: torch.Tensor) -> None:
        """Fill a contiguous CPU tensor of ``nbytes`` bytes from ``offset``."""

    @abc.abstractmethod
    def advise(self, ranges: Sequence[Tuple[int, int]]) -> Optional[threading.Thread]:
        """Start reading ``(offset, length)`` ranges ahead of their reads, in the background.

        Returns:
            The thread doing it, or None when there is nothing to do.
        """

    @abc.abstractmethod
    def check_unchanged(self) -> None:
        """Raise :class:`CheckpointFormatError` if the bytes changed since the open."""

    @abc.abstractmethod
    def reopen(self) -> "ByteSource":
        """A source on the same bytes for a reader's ``with`` block, checked unchanged."""

    @abc.abstractmethod
    def address_space(self) -> torch.UntypedStorage:
        """``size`` bytes of address space that tensors of a lazy format view."""

    def add_check(self, start: int, end: int, data_end: int, check: Check) -> None:
        """Run ``check`` on bytes ``[start, end)`` before any of ``[end, data_end)`` is read.

        A local format checks its headers when it opens the file. Over a network, checking
        a header there is a round trip per record; a source that reads lazily takes the check
        here and runs it on the header fetched with the first range of its data. The default
        runs it now.
        """
        check(self.read(start, end - start))

    def run_checks(self, start: int, end: int) -> None:  # noqa: B027 (checks ran at add_check)
        """Run now the checks owed by bytes ``[start, end)`` (a read would run them first)."""

    def close(self) -> None:  # noqa: B027 (most sources hold nothing to release)
        """Release what the source holds (a descriptor); a closed source still reopens."""

    def __enter__(self) -> "ByteSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fileobj(self) -> BinaryIO:
        """A seekable read-only file over the bytes (for ``zipfile`` and ``pickle``)."""
        return io.BufferedReader(SourceFile(self), buffer_size=64 << 10)  # type: ignore[return-value]


class SourceFile(io.RawIOBase):
    """A source as a raw, seekable, read-only file."""

    def __init__(self, source: ByteSource):
        self.source, self.pos = source, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.source.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self.source.size - self.pos))
        if n:
            b[:n] = self.source.read(self.pos, n)
            self.pos += n
        return n
