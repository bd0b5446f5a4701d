"""The safe torch-zip reader agrees with torch.load and refuses globals outside its allowlist."""

import argparse

import pytest
import torch

from d2_efficient_ckpt.checkpoint.errors import UnsafeCheckpointError
from d2_efficient_ckpt.checkpoint.formats.torch_zip import load_torch_zip
from d2_efficient_ckpt.checkpoint.restore.arena import HostArena
from d2_efficient_ckpt.checkpoint.restore.state import materialize


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_training_checkpoint_reads_like_torch_load(saved):
    path, model, _ = saved
    fast, mapping = load_torch_zip(path)
    ref = torch.load(path, weights_only=True)
    assert _same(fast, ref)
    assert getattr(fast["model"], "_metadata", None) == getattr(ref["model"], "_metadata", None)
    # Tensors are views of the mapped file, not copies; their byte ranges are known.
    w = fast["model"]["backbone.bottom_up.stem.conv1.weight"]
    ((offset, length),) = mapping.ranges([w])
    with open(path, "rb") as f:
        f.seek(offset)
        assert f.read(length) == w.contiguous().numpy().tobytes()
    everything = mapping.ranges(list(fast["model"].values()))
    assert len(everything) == 1  # the model's tensors are one run of the file


def test_mixed_dtypes_views_and_parameters(tmp_path):
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    data = {
        "view": base[1:, 2:],
        "same_storage": base,
        "half": torch.ones(3, dtype=torch.float16),
        "bool": torch.tensor([True, False]),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "nested": [{"x": torch.zeros(1, dtype=torch.int64)}, (1, "a", 2.5)],
    }
    torch.save(data, tmp_path / "m.pth")
    fast, _ = load_torch_zip(str(tmp_path / "m.pth"))
    assert _same(fast, torch.load(tmp_path / "m.pth", weights_only=True))
    assert isinstance(fast["param"], torch.nn.Parameter)


@pytest.mark.parametrize("value", [torch.device("cpu"), torch.float32, torch.Size([2, 3])])
def test_reads_plain_torch_values(tmp_path, value):
    torch.save({"model": {"w": torch.ones(1)}, "x": value}, tmp_path / "m.pth")
    data, _ = load_torch_zip(str(tmp_path / "m.pth"))
    assert data["x"] == value and type(data["x"]) is type(value)


def test_refuses_other_globals(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}, "x": argparse.Namespace(a=1)}, tmp_path / "m.pth")
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        load_torch_zip(str(tmp_path / "m.pth"))


def test_materialize_into_one_arena():
    state = {
        "state": {
            0: {"momentum_buffer": torch.randn(1000), "step": torch.tensor(3.0)},
            1: {"momentum_buffer": torch.randn(7, 3).half()},
        },
        "lr": 0.1,
    }
    out = materialize(state, torch.device("cpu"))
    assert _same(out, state)
    a, b = out["state"][0]["momentum_buffer"], out["state"][1]["momentum_buffer"]
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # one buffer
    assert a.data_ptr() % 64 == 0 and b.data_ptr() % 64 == 0
    assert out["state"][0]["step"].untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    assert HostArena.footprint(torch.empty(3, dtype=torch.float16)) == 64
