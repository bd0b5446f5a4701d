"""Snapshots: equal copies in buffers that are reused, with the state dict's shape kept."""

from collections import OrderedDict

import pytest
import torch

from d2_efficient_ckpt.checkpoint.save.snapshot import SnapshotBuffers


def _state():
    sd = OrderedDict(w=torch.randn(4, 3), half=torch.randn(5).to(torch.bfloat16))
    sd["t"] = torch.randn(3, 4).t()  # not contiguous
    sd._metadata = OrderedDict({"": {"version": 2}})
    return {"model": sd, "optimizer": {"state": {0: {"m": torch.ones(2)}}, "lr": [0.1]}, "it": 3}


def test_snapshot_equals_the_state_and_reuses_buffers():
    state = _state()
    buffers = SnapshotBuffers()
    first = buffers.take(state).data
    assert isinstance(first["model"], OrderedDict) and first["model"]._metadata == {
        "": {"version": 2}
    }
    for k, v in state["model"].items():
        assert torch.equal(first["model"][k], v) and first["model"][k].stride() == v.stride()
    assert first["optimizer"]["lr"] == [0.1] and first["it"] == 3
    ptrs = {k: v.data_ptr() for k, v in first["model"].items()}
    state["model"]["w"].add_(1)
    second = buffers.take(state).data
    assert {k: v.data_ptr() for k, v in second["model"].items()} == ptrs
    assert torch.equal(second["model"]["w"], state["model"]["w"])
    state["model"]["w"].add_(1)  # the snapshot does not follow the live tensor
    assert not torch.equal(second["model"]["w"], state["model"]["w"])


def test_buffers_follow_shape_changes_and_dropped_tensors():
    buffers = SnapshotBuffers()
    buffers.take({"a": torch.zeros(10), "b": torch.zeros(10)})
    before = buffers.allocated_bytes
    buffers.take({"a": torch.zeros(20)})
    assert buffers.allocated_bytes == before  # a grew by 40 bytes, b's 40 were released


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_tensors_go_to_pinned_buffers():
    state = {"w": torch.randn(1000, device="cuda")}
    snap = SnapshotBuffers().take(state)
    snap.wait()
    assert snap.data["w"].is_pinned() and snap.data["w"].device.type == "cpu"
    assert torch.equal(snap.data["w"], state["w"].cpu())
