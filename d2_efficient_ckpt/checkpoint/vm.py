"""``madvise`` for the few places that steer the kernel's paging of checkpoint memory."""

import ctypes
import ctypes.util
import mmap
import sys
from typing import Optional

__all__ = ["MADV_RANDOM", "madvise"]

MADV_RANDOM = 1  # no read-around: only the pages touched (or announced) are read
_libc: Optional[ctypes.CDLL] = None


def madvise(ptr: int, nbytes: int, advice: int) -> bool:
    """Advise the kernel about ``[ptr, ptr + nbytes)``, widened to whole pages.

    Returns:
        Whether the advice was taken; ``False`` off Linux or when the kernel refuses. It is
        only advice, so callers carry on either way.
    """
    global _libc
    if not sys.platform.startswith("linux") or nbytes <= 0:
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = ptr - ptr % mmap.PAGESIZE
    return _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(nbytes + ptr - start), advice) == 0
