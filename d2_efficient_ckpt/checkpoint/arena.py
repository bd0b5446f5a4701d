"""One host allocation for many tensors, backed by transparent huge pages where available.

Restoring optimizer state means writing ~all of it once into fresh memory. Done tensor by
tensor, most of that time is first-touch page faults on 4 KiB pages; one buffer advised
with ``MADV_HUGEPAGE`` faults in 2 MiB pages instead, about 500 times fewer.
"""

import ctypes
import ctypes.util
import sys
from typing import Optional

import torch

__all__ = ["HostArena"]

_MADV_HUGEPAGE = 14
_HUGE = 2 << 20
_ALIGN = 64  # bytes; a multiple of every dtype's size, and a cache line
_libc: Optional[ctypes.CDLL] = None


def _advise_hugepages(ptr: int, nbytes: int) -> None:
    global _libc
    if not sys.platform.startswith("linux") or nbytes < _HUGE:
        return
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    # Advice only; a kernel without THP (or with it off) just ignores it.
    _libc.madvise(ctypes.c_void_p(ptr), ctypes.c_size_t(nbytes), _MADV_HUGEPAGE)


class HostArena:
    """Hands out CPU tensors carved from one buffer of ``nbytes`` (plus alignment).

    Args:
        nbytes: total bytes the caller will take, counting each tensor rounded up to 64.
    """

    def __init__(self, nbytes: int):
        self._buf = torch.empty(nbytes + _HUGE, dtype=torch.uint8)
        start = self._buf.data_ptr()
        self._pos = (-start) % _HUGE  # first byte on a 2 MiB boundary
        _advise_hugepages(start + self._pos, nbytes)

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
