"""Keys left out are never read: page-cache residency of a real file after a selective load."""

import ctypes
import ctypes.util
import mmap
import os

import pytest
import torch
import torch.nn as nn

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.torch_zip import load_torch_zip

_PAGE = mmap.PAGESIZE


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
    ]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def _residency(path, offset, length):
    """Fraction of the pages of ``path[offset:offset+length]`` in the page cache.

    Mapping a file and asking ``mincore`` reads nothing from it.
    """
    libc = _libc()
    start = offset // _PAGE * _PAGE
    n = offset + length - start
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, n, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        if addr in (None, ctypes.c_void_p(-1).value):
            pytest.skip("mmap for mincore failed here")
        vec = (ctypes.c_ubyte * ((n + _PAGE - 1) // _PAGE))()
        rc = libc.mincore(ctypes.c_void_p(addr), n, vec)
        libc.munmap(ctypes.c_void_p(addr), n)
    finally:
        os.close(fd)
    if rc != 0:
        pytest.skip("mincore is not available here")
    return sum(v & 1 for v in vec) / len(vec)


def _evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise (Linux)")
def test_excluded_tensors_stay_on_disk(tmp_path):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048))  # 8 MB and 16 MB
    path = str(tmp_path / "m.pth")
    torch.save({"model": src.state_dict()}, path)
    data, mapping = load_torch_zip(path)
    sd = data["model"]
    ((kept_off, kept_len),) = mapping.ranges([sd["0.weight"]])
    ((left_off, left_len),) = mapping.ranges([sd["1.weight"]])
    del data, sd, mapping
    _evict(path)
    if _residency(path, 0, os.path.getsize(path)) > 0.05:
        pytest.skip("this file system keeps the file cached; eviction cannot be tested")
    dst = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048))
    EfficientDetectionCheckpointer(dst).load(path, exclude=["1.*"])
    assert torch.equal(dst[0].weight, src[0].weight)
    assert not torch.equal(dst[1].weight, src[1].weight)
    assert _residency(path, kept_off, kept_len) > 0.95
    # Read-around at the boundary may touch a few pages; the tensor itself was not read.
    assert _residency(path, left_off, left_len) < 0.1
