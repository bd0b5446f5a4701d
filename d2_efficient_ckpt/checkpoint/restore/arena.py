"""One host allocation for the many tensors of restored optimizer state.

Restoring optimizer state means writing ~all of it once into fresh memory. One buffer,
carved into aligned tensors, costs one allocation instead of hundreds. Advising it with
``MADV_HUGEPAGE`` was tried and dropped: on a machine that had run for hours, huge-page
faults made a warm resume two to three times slower, and the gain on a fresh one was small.

Faulting fresh memory in (the kernel zeroes every page) costs about as much as the copy
into it. An arena made before the model's weights are copied can have its pages faulted in
by a background thread (``MADV_POPULATE_WRITE``) while the weights copy, so the optimizer
state is later written into memory that is already there.
"""

import threading
from typing import Iterable, Optional

import torch

from ..storage.page_cache import MADV_POPULATE_WRITE, madvise

__all__ = ["HostArena"]

_ALIGN = 64  # bytes; a multiple of every dtype's size, and a cache line
_PREFAULT_CHUNK = 16 << 20  # bytes per advice call, so writes can start behind it
_PREFAULT_MIN = 4 << 20  # smaller arenas fault in quickly enough on first write


class HostArena:
    """Hands out CPU tensors carved from one buffer of ``nbytes`` (plus alignment).

    A request past the end gets memory of its own, so a caller that sized the arena from a
    plan and then needs a little more still gets correct tensors.

    Args:
        nbytes: total bytes the caller will take, counting each tensor rounded up to 64.
        prefault: fault the buffer's pages in from a background thread, starting now.
    """

    def __init__(self, nbytes: int, prefault: bool = False):
        self._buf = torch.empty(nbytes + _ALIGN, dtype=torch.uint8)
        start = self._buf.data_ptr()
        self._pos = (-start) % _ALIGN
        self._end = self._pos + nbytes
        if prefault and nbytes >= _PREFAULT_MIN:
            # The thread holds the buffer, so it stays mapped until the advice is done.
            threading.Thread(target=_prefault, args=(self._buf,), daemon=True).start()

    @classmethod
    def for_tensors(
        cls, tensors: Iterable[torch.Tensor], prefault: bool = False
    ) -> Optional["HostArena"]:
        """An arena for the tensors that share one (see :func:`shares_arena`), if any; a
        tensor listed more than once (the same object) counts once."""
        distinct = {id(t): t for t in tensors}.values()
        nbytes = sum(cls.footprint(t) for t in distinct if shares_arena(t))
        return cls(nbytes, prefault) if nbytes else None

    @staticmethod
    def footprint(t: torch.Tensor) -> int:
        """Bytes ``t`` takes in an arena."""
        return (t.numel() * t.element_size() + _ALIGN - 1) // _ALIGN * _ALIGN

    def empty_like(self, t: torch.Tensor) -> torch.Tensor:
        """A contiguous, uninitialised CPU tensor with ``t``'s shape and dtype."""
        n = t.numel() * t.element_size()
        if self._pos + n > self._end:
            return torch.empty(t.shape, dtype=t.dtype)
        out = self._buf[self._pos : self._pos + n].view(t.dtype).view(t.shape)
        self._pos += self.footprint(t)
        return out


def shares_arena(t: torch.Tensor) -> bool:
    """Whether a restored host tensor shares the arena: floating-point state only.

    Other tensors get memory of their own: torch's RNG setters crash on a byte tensor that
    is a view at an offset into a larger buffer, and RNG states are byte tensors.
    """
    return t.dim() > 0 and t.is_floating_point()


def _prefault(buf: torch.Tensor) -> None:
    ptr, size = buf.data_ptr(), buf.numel()
    for start in range(0, size, _PREFAULT_CHUNK):
        # Advice only: an old kernel refuses it, and the pages then fault in on first write.
        if not madvise(ptr + start, min(_PREFAULT_CHUNK, size - start), MADV_POPULATE_WRITE):
            return
