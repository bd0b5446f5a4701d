"""The kernel's paging of checkpoint files: ``madvise``, page-cache residency, eviction and
early writeback.

The one home of the libc calls the package, its tests and its benchmarks make. Everything
here is advice or measurement: off Linux, or where libc lacks a call, the functions return
``False`` or ``None`` instead of raising, and callers carry on.
"""

import ctypes
import ctypes.util
import mmap
import os
import sys
from typing import Optional

__all__ = [
    "MADV_POPULATE_WRITE",
    "MADV_RANDOM",
    "evict_from_page_cache",
    "madvise",
    "page_cache_residency",
    "start_writeback",
]

MADV_RANDOM = 1  # no read-around: only the pages touched (or announced) are read
MADV_POPULATE_WRITE = 23  # fault pages in, writable, without writing them (Linux 5.14+)
_PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value
_libc: Optional[ctypes.CDLL] = None


def _load_libc() -> Optional[ctypes.CDLL]:
    """libc with the signatures of the calls used here, or ``None`` off Linux."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long,
        ]  # fmt: skip
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc = libc
    return _libc


def madvise(ptr: int, nbytes: int, advice: int) -> bool:
    """Advise the kernel about ``[ptr, ptr + nbytes)``, widened to whole pages.

    Returns:
        Whether the advice was taken; ``False`` off Linux or when the kernel refuses. It is
        only advice, so callers carry on either way.
    """
    libc = _load_libc() if nbytes > 0 else None
    if libc is None:
        return False
    start = ptr - ptr % _PAGE
    return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(nbytes + ptr - start), advice) == 0


def page_cache_residency(
    path: str, offset: int = 0, length: Optional[int] = None
) -> Optional[float]:
    """Fraction (0 to 1) of the pages of ``path[offset:offset + length]`` in the page cache.

    The range is mapped and ``mincore`` asked about it, which reads nothing from the file.

    Args:
        path: a file.
        offset: first byte of the range.
        length: bytes in the range; ``None`` for the rest of the file.

    Returns:
        The fraction, or ``None`` where it cannot be measured (not Linux, no ``mincore``, the
        mapping fails).
    """
    if length is None:
        length = os.path.getsize(path) - offset
    if length <= 0:
        return 1.0
    libc = _load_libc()
    if libc is None:
        return None
    start = offset - offset % _PAGE
    n = offset + length - start
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        if addr in (None, _MAP_FAILED):
            return None
        try:
            vec = (ctypes.c_ubyte * ((n + _PAGE - 1) // _PAGE))()
            if libc.mincore(ctypes.c_void_p(addr), n, vec) != 0:
                return None
        finally:
            libc.munmap(ctypes.c_void_p(addr), n)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / len(vec)


def evict_from_page_cache(path: str) -> bool:
    """Drop the file's pages from the page cache, so that the next read comes from disk.

    ``POSIX_FADV_DONTNEED`` cannot drop dirty pages, or pages a live process has mapped, so
    the file is synced first; check the effect with :func:`page_cache_residency`.

    Returns:
        Whether the advice could be given (``False`` without ``posix_fadvise``).
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing the dirty pages of ``[offset, offset + length)`` of an open file to the
    device, without waiting, and drop the pages of the range already clean.

    ``POSIX_FADV_DONTNEED`` does both on Linux. Only advice: the caller's fsync still makes
    the bytes durable.

    Returns:
        Whether the advice could be given (``False`` without ``posix_fadvise``, or where the
        file refuses it).
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True
