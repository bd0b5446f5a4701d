"""Read the parts of a mapped checkpoint that a load uses: prefetched, and length-checked.

Copying from a memory-mapped file that is not in the page cache faults page by page, with
small reads. Announcing the byte ranges first (``POSIX_FADV_WILLNEED``) lets the kernel
stream them with large, asynchronous reads. Only the selected tensors' ranges are announced,
so keys left out are still never read.

The mapping only gives tensors their shapes and file offsets. Their bytes are read through
the file's :class:`~.source.ByteSource` into the destination (:class:`FileReader`): for a
local file ``pread``, for an object ranged GETs. A read that comes back short, or a file
whose size, inode or modification time (an object whose ETag) changed since it was opened,
is an error that names it. Touching a mapping past the end of a file that shrank kills the
process with ``SIGBUS``; a read cannot.
"""

import ctypes
import os
import stat
import threading
from typing import TYPE_CHECKING, Any, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointFormatError
from .page_cache import MADV_RANDOM, madvise

__all__ = ["FileIdentity", "MappedFile", "FileReader", "changed_error", "read_exact", "open_exact"]

if TYPE_CHECKING:
    from .source import ByteSource

_STAGING = 4 << 20  # bytes of host staging for reads into non-CPU or converted destinations
# Gaps up to a page (zip headers between records, tiny tensors sharing a page) are bridged;
# a left-out tensor any larger is not.
_MERGE_GAP = 4096


class FileIdentity(NamedTuple):
    """What must not change about a file while a load reads it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of_fd(cls, fd: int) -> "FileIdentity":
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def check(self, fd: int, path: str) -> None:
        """Raise if the file behind ``fd`` is not the one that was opened."""
        now = FileIdentity.of_fd(fd)
        if now != self:
            what = (
                f"its size went from {self.size} to {now.size} bytes"
                if now.size != self.size
                else "it was replaced or rewritten"
            )
            raise changed_error(path, what)


def changed_error(path: str, what: str) -> CheckpointFormatError:
    """The error of a file or object whose bytes changed while a load read them."""
    return CheckpointFormatError(
        path,
        f"the file changed while it was being read ({what}).",
        "Another process may be writing it: wait for the save to finish, or load a "
        "checkpoint that is complete.",
    )


def open_exact(path: str) -> int:
    """Open ``path`` for exact reads only: no kernel read-ahead around them.

    A small read through an ordinary descriptor makes the kernel read a window ahead and
    mark a page in it; a later large read that reaches the marked page then reads ahead
    by its own size, into tensors a selective load leaves out. Every read of checkpoint
    bytes goes through a descriptor opened here.

    The open never blocks, and only a regular file is accepted: a FIFO or a device put under
    the name (also after the format was detected) is refused before any read.

    Raises:
        CheckpointFormatError: ``path`` is not a regular file.
        OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        is_file = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not is_file:
        os.close(fd)
        raise CheckpointFormatError(
            path, "it is not a regular file (a FIFO, a device or a socket)."
        )
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


def read_exact(
    fd: int, offset: int, nbytes: int, path: str, into: Optional[torch.Tensor] = None
) -> bytes:
    """Read exactly ``nbytes`` at ``offset``; raise if the file ends first.

    Args:
        into: a contiguous CPU tensor of ``nbytes`` bytes to fill instead of returning bytes.

    Raises:
        CheckpointFormatError: the file ends early, or the read fails.
    """
    if offset < 0 or nbytes < 0:
        raise CheckpointFormatError(path, f"it points at byte {offset} (the file is corrupt).")
    try:
        return _read_exact(fd, offset, nbytes, path, into)
    except OSError as e:
        raise CheckpointFormatError(
            path, f"reading {nbytes} bytes at byte {offset} failed ({e.strerror or e})."
        ) from None


def _read_exact(fd: int, offset: int, nbytes: int, path: str, into: Optional[torch.Tensor]):
    if into is None:
        parts = []
        done = 0
        while done < nbytes:
            chunk = os.pread(fd, min(nbytes - done, 64 << 20), offset + done)
            if not chunk:
                raise changed_error(path, f"it ends before byte {offset + nbytes}")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)
    view = memoryview((ctypes.c_char * nbytes).from_address(into.data_ptr())).cast("B")
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise changed_error(path, f"it ends before byte {offset + nbytes}")
        done += got
    return b""


class MappedFile:
    """Tensors viewing ``source``'s address space from ``base_ptr``; they can be prefetched.

    Args:
        source: the bytes (see :class:`~.source.ByteSource`); a reader reopens it.
        base_ptr: address of the first byte in this process (0: nothing is mapped).
        size: mapped length in bytes.
    """

    def __init__(self, source: "ByteSource", base_ptr: int, size: int):
        self.source, self.path, self.base_ptr, self.size = source, source.name, base_ptr, size

    def check_unchanged(self) -> None:
        """Raise :class:`CheckpointFormatError` if the bytes changed since they were opened."""
        self.source.check_unchanged()

    def span(self, t: torch.Tensor) -> Optional[Tuple[int, int]]:
        """``(file offset, bytes)`` of the storage behind a tensor that views this mapping."""
        if not self.base_ptr or not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return None
        start = t.untyped_storage().data_ptr() - self.base_ptr
        n = t.untyped_storage().nbytes()
        if start < 0 or start + n > self.size:
            return None
        return start, n

    def tensor_bytes(self, t: torch.Tensor) -> Optional[Tuple[int, int]]:
        """``(file offset, bytes)`` of a contiguous tensor's own elements in the file.

        Only the tensor's bytes, not its storage's: safetensors values are views of one
        storage that spans the whole file.
        """
        span = self.span(t) if isinstance(t, torch.Tensor) and t.is_contiguous() else None
        if span is None:
            return None
        return span[0] + int(t.storage_offset()) * t.element_size(), int(
            t.numel()
        ) * t.element_size()

    def ranges(self, tensors: Iterable[torch.Tensor]) -> List[Tuple[int, int]]:
        """Merged ``(offset, length)`` file ranges of the tensors that view this mapping."""
        spans = []
        for t in tensors:
            # A contiguous tensor's own bytes, as FileReader reads them; else its storage.
            span = self.tensor_bytes(t) or self.span(t)
            if span is None or not span[1]:
                continue
            spans.append((span[0], span[0] + span[1]))
        spans.sort()
        merged: List[List[int]] = []
        for a, b in spans:
            if merged and a - merged[-1][1] <= _MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return [(a, b - a) for a, b in merged]

    def prefetch(self, tensors: Iterable[torch.Tensor]) -> Optional[threading.Thread]:
        """Start reading the tensors' bytes in the background; a no-op where unsupported.

        The reads are issued in file order, chunk by chunk, so the caller's copy (in the
        same order) overlaps with them instead of waiting for all of them to be queued.

        Returns:
            The thread issuing them, or ``None`` when there was nothing to do.
        """
        ranges = self.ranges(tensors)
        return self.source.advise(ranges) if ranges else None

    def check_owed(self, tensors: Iterable[torch.Tensor]) -> None:
        """Run the checks the tensors' bytes owe before they are used (see
        :meth:`~.source.ByteSource.add_check`), waiting for their fetches if needed.

        Raises:
            CheckpointFormatError: a check failed; nothing was copied yet.
        """
        for offset, length in self.ranges(tensors):
            self.source.run_checks(offset, offset + length)

    def read_only_what_is_used(self) -> None:
        """Turn off the kernel's read-around for faults on this mapping.

        Read-around (up to the device's read-ahead size, often megabytes) keeps a full load
        fast when the copy outruns :meth:`prefetch`, but reads past the tensors asked for. A
        load that leaves keys out sets this, so that the keys it leaves out stay on disk.
        """
        if not self.source.remote:  # remote bytes are never faulted in
            madvise(self.base_ptr, self.size, MADV_RANDOM)

    def reader(self) -> "FileReader":
        """A :class:`FileReader` over this file (use as a context manager)."""
        return FileReader(self)


class FileReader:
    """Reads tensors that view a :class:`MappedFile` into other tensors, length-checked.

    ``pread`` into the destination asks the kernel for exactly the tensor's bytes in large
    requests: no page faults on the mapping and no read-ahead past the tensor. Tensors that
    do not view the file (numpy arrays of zoo pickles, eagerly read files) are copied as
    they are.
    """

    def __init__(self, mapped: Optional[MappedFile]):
        self.mapped = mapped
        self._src: Optional["ByteSource"] = None
        # Two reused host buffers (pinned for CUDA) and the copies still reading them.
        self._staging: List[Optional[torch.Tensor]] = [None, None]
        self._events: List[Any] = [None, None]

    def __enter__(self) -> "FileReader":
        if self.mapped is not None and self.mapped.base_ptr:
            self._src = self.mapped.source.reopen()
        return self

    def __exit__(self, *exc) -> None:
        self._drain()
        if self._src is not None:
            if self._src is not self.mapped.source:  # type: ignore[union-attr]
                self._src.close()
            self._src = None
        self._staging = [None, None]

    def _file_bytes(self, src: torch.Tensor) -> Optional[Tuple[int, int]]:
        """File offset and length of ``src``'s elements, if it views the file densely."""
        if self._src is None or self.mapped is None:
            return None
        return self.mapped.tensor_bytes(src)

    def read(self, src: Any) -> torch.Tensor:
        """A fresh CPU tensor with ``src``'s values (and dtype and shape).

        ``src`` may also be a numpy array (zoo pickles), which becomes a tensor sharing it.
        """
        if isinstance(src, np.ndarray):
            return torch.from_numpy(src)
        out = torch.empty(src.shape, dtype=src.dtype)
        self.read_into(out, src)
        return out

    def read_into(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Fill ``dst`` (any device and dtype, same number of elements) with ``src``'s values.

        Raises:
            CheckpointFormatError: the file changed or ended before the tensor's bytes.
        """
        where = self._file_bytes(src) if isinstance(src, torch.Tensor) else None
        if where is None:
            if isinstance(src, torch.Tensor) and self.mapped is not None and self._src:
                span = self.mapped.span(src)
                if span is not None:  # a strided view of the file: read its storage first
                    raw = torch.empty(span[1], dtype=torch.uint8)
                    self._src.read_into(span[0], span[1], raw)
                    src = torch.empty(0, dtype=src.dtype).set_(
                        raw.untyped_storage(), src.storage_offset(), src.shape, src.stride()
                    )
            dst.copy_(src.reshape(dst.shape) if src.shape != dst.shape else src)
            return
        assert self._src is not None  # where is known only for a tensor of the mapping
        offset, nbytes = where
        direct = (
            dst.device.type == "cpu"
            and dst.dtype == src.dtype
            and dst.is_contiguous()
            and dst.numel() == src.numel()
        )
        if direct:
            if nbytes:
                self._src.read_into(offset, nbytes, dst)
            return
        if dst.dtype != src.dtype or not dst.is_contiguous():
            tmp = torch.empty(src.shape, dtype=src.dtype)
            self.read_into(tmp, src)
            dst.copy_(tmp.reshape(dst.shape))
            return
        # Same dtype, contiguous, on another device: stream through two small host buffers.
        # On CUDA they are pinned and the copies are asynchronous, so reading the next piece
        # overlaps the transfer of this one; a buffer is reused only after its copy ended.
        flat = dst.view(-1).view(torch.uint8)
        cuda = dst.device.type == "cuda"
        for i, start in enumerate(range(0, nbytes, _STAGING)):
            n = min(_STAGING, nbytes - start)
            slot = i % 2
            buf = self._staging_buffer(slot, cuda)
            if self._events[slot] is not None:
                self._events[slot].synchronize()
                self._events[slot] = None
            self._src.read_into(offset + start, n, buf)
            flat[start : start + n].copy_(buf[:n], non_blocking=cuda)
            if cuda:
                self._events[slot] = torch.cuda.Event()
                self._events[slot].record()
        self._drain()

    def _drain(self) -> None:
        """Wait for the asynchronous copies out of the staging buffers."""
        for slot, event in enumerate(self._events):
            if event is not None:
                event.synchronize()
                self._events[slot] = None

    def _staging_buffer(self, slot: int, pinned: bool) -> torch.Tensor:
        buf = self._staging[slot]
        if buf is None:
            buf = self._staging[slot] = torch.empty(_STAGING, dtype=torch.uint8, pin_memory=pinned)
        return buf
