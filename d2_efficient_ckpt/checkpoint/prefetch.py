"""Ask the kernel to read the parts of a mapped checkpoint that a load is about to use.

Copying from a memory-mapped file that is not in the page cache faults page by page, with
small reads. Announcing the byte ranges first (``POSIX_FADV_WILLNEED``) lets the kernel
stream them with large, asynchronous reads while the copy runs. Only the selected
tensors' ranges are announced, so keys left out are still never read.
"""

import os
from typing import Iterable, List, Tuple

import torch

__all__ = ["MappedFile"]

_MERGE_GAP = 1 << 20  # bytes; closer ranges are read as one


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

    def prefetch(self, tensors: Iterable[torch.Tensor]) -> None:
        """Start asynchronous reads of the tensors' bytes; a no-op where unsupported."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            for offset, length in self.ranges(tensors):
                advise(fd, offset, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # advice only
        finally:
            os.close(fd)
