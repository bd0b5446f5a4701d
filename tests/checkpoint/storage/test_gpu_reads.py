"""Reads straight to a CUDA device: pinned double-buffered staging, values exact.

Skipped, visibly, without a GPU (``benchmarks/gpu_check.sh`` runs it on a GPU machine).
"""

import pytest
import torch
import torch.nn as nn

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.formats.registry import open_checkpoint
from d2_efficient_ckpt.checkpoint.storage.mapped import _STAGING

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA not available: GPU read path not tested"
)


def test_reader_streams_large_tensors_to_the_gpu(tmp_path):
    big = torch.randn(3 * _STAGING // 4 + 123)  # several staging pieces, a ragged end
    path = str(tmp_path / "m.pth")
    torch.save({"model": {"big": big, "small": torch.arange(5.0)}}, path)
    opened = open_checkpoint(path)
    model, _ = opened.split_model()
    with opened.reader() as reader:
        out = torch.empty_like(big, device="cuda")
        reader.read_into(out, model["big"])
        small = torch.empty(5, device="cuda")
        reader.read_into(small, model["small"])
    assert torch.equal(out.cpu(), big) and torch.equal(small.cpu(), torch.arange(5.0))


def test_model_and_optimizer_restored_on_the_gpu(tmp_path):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512))
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    for p in src.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    path = str(tmp_path / "m.pth")
    torch.save({"model": src.state_dict(), "optimizer": opt.state_dict()}, path)
    dst = nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512)).cuda()
    dst_opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
    EfficientDetectionCheckpointer(dst, optimizer=dst_opt).load(path)
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert b.is_cuda and torch.equal(a, b.cpu())
    for p_src, p_dst in zip(src.parameters(), dst.parameters()):
        m_src = opt.state[p_src]["momentum_buffer"]
        m_dst = dst_opt.state[p_dst]["momentum_buffer"]
        assert m_dst.device == p_dst.device and torch.equal(m_src, m_dst.cpu())
