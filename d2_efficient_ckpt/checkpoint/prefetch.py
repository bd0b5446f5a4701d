"""Ask the kernel to read the parts of a mapped checkpoint that a load is about to use.

Copying from a memory-mapped file that is not in the page cache faults page by page, with
small reads. Announcing the byte ranges first (``POSIX_FADV_WILLNEED``) lets the kernel
stream them with large, asynchronous reads while the copy runs. Only the selected
tensors' ranges are announced, so keys left out are still never read.
"""

import os
import threading
from typing import Iterable, List, Optional, Tuple

import torch

__all__ = ["MappedFile"]

_MERGE_GAP = 1 << 20  # bytes; closer ranges are read as one
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
