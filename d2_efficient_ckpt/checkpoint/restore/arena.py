"""One host allocation for the many tensors of restored optimizer state.

Restoring optimizer state means writing ~all of it once into fresh memory. One buffer,
carved into aligned tensors, costs one allocation instead of hundreds. Advising it with
``MADV_HUGEPAGE`` was tried and dropped: on a machine that had run for hours, huge-page
faults made a warm resume two to three times slower, and the gain on a fresh one was small.
"""

import torch

__all__ = ["HostArena"]

_ALIGN = 64  # bytes; a multiple of every dtype's size, and a cache line


class HostArena:
    """Hands out CPU tensors carved from one buffer of ``nbytes`` (plus alignment).

    Args:
        nbytes: total bytes the caller will take, counting each tensor rounded up to 64.
    """

    def __init__(self, nbytes: int):
        self._buf = torch.empty(nbytes + _ALIGN, dtype=torch.uint8)
        start = self._buf.data_ptr()
        self._pos = (-start) % _ALIGN

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
