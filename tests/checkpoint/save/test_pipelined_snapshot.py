"""Pipelined snapshots: an asynchronous save copies the parameters and the optimizer state
while the next forward and backward run, and ``optimizer.step()`` waits for the copy. The
file holds the state of the moment ``save()`` was called, whatever training does next."""

import copy
import threading
import time

import pytest
import torch
from torch import nn

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.save import snapshot as snapshot_module
from d2_efficient_ckpt.checkpoint.save.snapshot import SnapshotBuffers
from tests.helpers.config import tiny_frcnn_cfg
from tests.helpers.models import assert_same_state, assert_same_values


def _model_and_optimizer(device="cpu"):
    torch.manual_seed(0)
    # BatchNorm: forward changes its buffers, which must be copied before save() returns.
    model = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 8))
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    _step(model, opt, device)
    return model, opt


def _step(model, opt, device="cpu"):
    opt.zero_grad()
    model(torch.randn(32, 64, device=device)).square().mean().backward()
    opt.step()


def _checkpointer(model, opt, directory):
    cfg = tiny_frcnn_cfg(output_dir=str(directory), **{"CHECKPOINT.SAVE.ASYNC": True})
    return EfficientDetectionCheckpointer(model, str(directory), cfg=cfg, optimizer=opt)


def _expected(ck):
    return {"model": copy.deepcopy(ck.model.state_dict()), "optimizer": copy.deepcopy(
        ck.checkpointables["optimizer"].state_dict())}  # fmt: skip


@pytest.fixture
def slow_helper(monkeypatch):
    """The helper thread's copies take long enough that a step not waiting for them would
    change the weights before they are read."""
    copy_now = snapshot_module._host_copy

    def slow(buf, src):
        if threading.current_thread().name == "checkpoint-snapshot":
            time.sleep(0.02)
        copy_now(buf, src)

    monkeypatch.setattr(snapshot_module, "_host_copy", slow)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_file_holds_the_state_of_save_although_training_goes_on(tmp_path, device, slow_helper):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model, opt = _model_and_optimizer(device)
    ck = _checkpointer(model, opt, tmp_path)
    ck.defer_until_step(model, opt)
    for i in range(3):
        expected = _expected(ck)
        ck.save(f"model_{i:07d}")
        # What was left to copy after save() returned: every parameter and momentum.
        snapshot = ck.saver._copying
        stable = sum(p.numel() * p.element_size() for p in model.parameters()) * 2
        assert snapshot is not None and snapshot.deferred_bytes == stable
        # Forward changes the BatchNorm statistics at once; the step waits for the copy.
        _step(model, opt, device)
        ck.wait()
        saved = torch.load(tmp_path / f"model_{i:07d}.pth", weights_only=True)
        assert_same_values(expected, saved)
        # And training moved on from the state that was saved.
        assert not torch.equal(saved["model"]["0.weight"], model[0].weight.detach().cpu())


def test_without_defer_every_tensor_is_copied_before_save_returns(tmp_path):
    model, opt = _model_and_optimizer()
    ck = _checkpointer(model, opt, tmp_path)
    expected = _expected(ck)
    ck.save("model_0000000")
    assert ck.saver._copying is None
    with torch.no_grad():  # a loop that changes weights outside optimizer.step()
        for p in model.parameters():
            p.add_(1.0)
    ck.wait()
    saved = torch.load(tmp_path / "model_0000000.pth", weights_only=True)
    assert_same_state(expected["model"], saved["model"], "model")


def test_a_deferred_copy_that_fails_fails_the_save(tmp_path):
    buffers = SnapshotBuffers()
    good = torch.arange(4.0)
    state = {"w": good}
    snap = buffers.take(state, frozenset({good.untyped_storage().data_ptr()}))
    snap.wait()
    assert torch.equal(snap.data["w"], good)
    # A buffer of another shape than its source makes the helper thread's copy raise.
    buf, src = torch.empty(3), torch.arange(5.0)
    failing = SnapshotBuffers().take({"x": torch.zeros(1)})
    failing._pending = [(buf, src)]
    failing._start()
    with pytest.raises(ValueError):
        failing.wait()
