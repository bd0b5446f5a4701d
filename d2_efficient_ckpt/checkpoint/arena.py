"""One host allocation for many tensors, backed by transparent huge pages where available.

Restoring optimizer state means writing ~all of it once into fresh memory. Done tensor by
tensor, most of that time is first-touch page faults on 4 KiB pages; one buffer advised
with ``MADV_HUGEPAGE`` faults in 2 MiB pages instead, about 500 times fewer.
"""

import torch

from .vm import MADV_HUGEPAGE, madvise

__all__ = ["HostArena"]

_HUGE = 2 << 20
_ALIGN = 64  # bytes; a multiple of every dtype's size, and a cache line


class HostArena:
    """Hands out CPU tensors carved from one buffer of ``nbytes`` (plus alignment).

    Args:
        nbytes: total bytes the caller will take, counting each tensor rounded up to 64.
    """

    def __init__(self, nbytes: int):
        self._buf = torch.empty(nbytes + _HUGE, dtype=torch.uint8)
        start = self._buf.data_ptr()
        self._pos = (-start) % _HUGE  # first byte on a 2 MiB boundary
        if nbytes >= _HUGE:
            madvise(start + self._pos, nbytes, MADV_HUGEPAGE)

    @staticmethod
    def footprint(t: torch.Tensor) -> int:
        """Bytes ``t`` takes in an arena."""
        return (t.numel() * t.element_size() + _ALIGN - 1) // _ALIGN * _ALIGN

    def empty_like(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous, uninitialised tensor with ``t``'s shape and dtype."""
        n = t.numel() * t.element_size()
        out = self._buf[self._pos : self._pos + n].view(t.dtype).view(t.shape)
        self._pos += self.footprint(t)
        return out
