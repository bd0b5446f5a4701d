"""Keys left out are never read: page-cache residency of a real file after a selective load,
for torch zip and for safetensors files."""

import json
import os
import struct

import pytest
import torch
import torch.nn as nn

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.formats.torch_zip import load_torch_zip
from d2_efficient_ckpt.checkpoint.storage.page_cache import (
    evict_from_page_cache,
    page_cache_residency,
)


def _residency(path, offset, length):
    """Fraction of the pages of ``path[offset:offset+length]`` in the page cache."""
    fraction = page_cache_residency(path, offset, length)
    if fraction is None:
        pytest.skip("mincore is not available here")
    return fraction


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
    evict_from_page_cache(path)
    if _residency(path, 0, os.path.getsize(path)) > 0.05:
        pytest.skip("this file system keeps the file cached; eviction cannot be tested")
    dst = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048))
    EfficientDetectionCheckpointer(dst).load(path, exclude=["1.*"])
    assert torch.equal(dst[0].weight, src[0].weight)
    assert not torch.equal(dst[1].weight, src[1].weight)
    assert _residency(path, kept_off, kept_len) > 0.95
    # Read-around at the boundary may touch a few pages; the tensor itself was not read.
    assert _residency(path, left_off, left_len) < 0.1


def _safetensors_range(path, key):
    """``(offset, length)`` in the file of tensor ``key``, from the safetensors header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    begin, end = header[key]["data_offsets"]
    return 8 + n + begin, end - begin


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise (Linux)")
def test_excluded_safetensors_tensors_stay_on_disk(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048))  # 8 MB and 16 MB
    path = str(tmp_path / "m.safetensors")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    kept_off, kept_len = _safetensors_range(path, "0.weight")
    left_off, left_len = _safetensors_range(path, "1.weight")
    evict_from_page_cache(path)
    if _residency(path, 0, os.path.getsize(path)) > 0.05:
        pytest.skip("this file system keeps the file cached; eviction cannot be tested")
    dst = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048))
    ck = EfficientDetectionCheckpointer(dst)
    ck.load(path, exclude=["1.*"])
    assert ck.last_report.format == "safetensors"
    assert torch.equal(dst[0].weight, src[0].weight)
    assert not torch.equal(dst[1].weight, src[1].weight)
    assert _residency(path, kept_off, kept_len) > 0.95
    assert _residency(path, left_off, left_len) < 0.1
