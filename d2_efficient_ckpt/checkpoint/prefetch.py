"""Ask the kernel to read the parts of a mapped checkpoint that a load is about to use.

Copying from a memory-mapped file that is not in the page cache faults page by page, with
small reads. Announcing the byte ranges first (``POSIX_FADV_WILLNEED``) lets the kernel
stream them with large, asynchronous reads while the copy runs. Only the selected
tensors' ranges are announced, so keys left out are still never read.
"""

import ctypes
import os
import threading
from typing import Iterable, List, Optional, Tuple

import torch

from .vm import MADV_RANDOM, madvise

__all__ = ["MappedFile", "FileReader"]

# Gaps up to a page (zip headers between records, tiny tensors sharing a page) are bridged;
# a left-out tensor any larger is not.
_MERGE_GAP = 4096
_CHUNK = 8 << 20  # bytes per advice call, so reads start before all are queued


class MappedFile:
    """A checkpoint file mapped at ``base_ptr``; tensors viewing it can be prefetched.

    Args:
        path: the file.
        base_ptr: address of the file's first byte in this process.
        size: mapped length in bytes.
    """

    def __init__(self, path: str, base_ptr: int, size: int):
        self.path, self.base_ptr, self.size = path, base_ptr, size

    def ranges(self, tensors: Iterable[torch.Tensor]) -> List[Tuple[int, int]]:
        """Merged ``(offset, length)`` file ranges of the tensors that view this mapping."""
        spans = []
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            start = t.data_ptr() - self.base_ptr
            n = t.numel() * t.element_size()
            if 0 <= start and start + n <= self.size and n:
                spans.append((start, start + n))
        spans.sort()
        merged: List[List[int]] = []
        for a, b in spans:
            if merged and a - merged[-1][1] <= _MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return [(a, b - a) for a, b in merged]

    def prefetch(self, tensors: Iterable[torch.Tensor]) -> Optional[threading.Thread]:
        """Start asynchronous reads of the tensors' bytes; a no-op where unsupported.

        The advice is issued from a background thread in file order, chunk by chunk, so
        the caller's copy (in the same order) overlaps with the reads instead of waiting
        for all of them to be queued.

        Returns:
            The thread issuing the advice, or ``None`` when there was nothing to do.
        """
        if getattr(os, "posix_fadvise", None) is None:
            return None
        ranges = self.ranges(tensors)
        if not ranges:
            return None
        thread = threading.Thread(target=self._advise, args=(ranges,), daemon=True)
        thread.start()
        return thread

    def _advise(self, ranges: List[Tuple[int, int]]) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            for offset, length in ranges:
                for start in range(offset, offset + length, _CHUNK):
                    n = min(_CHUNK, offset + length - start)
                    os.posix_fadvise(fd, start, n, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # advice only
        finally:
            os.close(fd)

    def read_only_what_is_used(self) -> None:
        """Turn off the kernel's read-around for faults on this mapping.

        Read-around (up to the device's read-ahead size, often megabytes) keeps a full load
        fast when the copy outruns :meth:`prefetch`, but reads past the tensors asked for. A
        load that leaves keys out sets this, so that the keys it leaves out stay on disk.
        """
        madvise(self.base_ptr, self.size, MADV_RANDOM)

    def reader(self) -> "FileReader":
        """A :class:`FileReader` over this file (use as a context manager)."""
        return FileReader(self)


class FileReader:
    """Reads tensors that view a :class:`MappedFile` straight into other host tensors.

    ``pread`` into the destination asks the kernel for exactly the tensor's bytes in large
    requests: no page faults on the mapping and no read-ahead past the tensor.
    """

    def __init__(self, mapped: MappedFile):
        self.mapped = mapped
        self._fd = -1

    def __enter__(self) -> "FileReader":
        try:
            self._fd = os.open(self.mapped.path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:
            self._fd = -1
        return self

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_into(self, dst: torch.Tensor, src: torch.Tensor) -> bool:
        """Fill ``dst`` with ``src``'s bytes from the file; ``False`` if that cannot apply."""
        n = src.numel() * src.element_size()
        if (
            self._fd < 0
            or n == 0
            or dst.device.type != "cpu"
            or src.device.type != "cpu"
            or dst.dtype != src.dtype
            or dst.shape != src.shape
            or not (dst.is_contiguous() and src.is_contiguous())
        ):
            return False
        offset = src.data_ptr() - self.mapped.base_ptr
        if offset < 0 or offset + n > self.mapped.size:
            return False
        view = memoryview((ctypes.c_char * n).from_address(dst.data_ptr())).cast("B")
        done = 0
        while done < n:
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                return False  # the file shrank; the caller copies from the mapping instead
            done += got
        return True
