"""convert, inspect and verify on whole training checkpoints in the pickle-free format."""

import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from d2_efficient_ckpt.checkpoint.formats.training_safetensors import TRAINING_FORMAT
from d2_efficient_ckpt.cli import main
from tests.helpers.config import tiny_frcnn_cfg
from tests.helpers.models import assert_same_state


@pytest.fixture(scope="module")
def training_pth(tmp_path_factory):
    """A stock training checkpoint: model, SGD momentum, a scheduler, iteration."""
    root = tmp_path_factory.mktemp("training")
    torch.manual_seed(0)
    model = build_model(tiny_frcnn_cfg())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    sched.step()
    ck = DetectionCheckpointer(model, str(root), optimizer=opt, scheduler=sched)
    ck.save("model_0000004", iteration=4)
    return root / "model_0000004.pth"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_convert_round_trip_keeps_the_whole_training_state(training_pth, tmp_path, capsys):
    st = tmp_path / "model_0000004.safetensors"
    code, out, err = _run(capsys, "convert", "--training", "--json", training_pth, st)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["training_state"] and summary["iteration"] == 4
    assert set(summary["entries"]) == {"model", "optimizer", "scheduler", "iteration"}
    assert os.path.exists(str(st) + ".integrity.json")

    back = tmp_path / "back.pth"
    code, _, err = _run(capsys, "convert", st, back)
    assert code == 0, err
    original = torch.load(training_pth, weights_only=True)
    assert_same_state(original, torch.load(back, weights_only=True))
    assert original["model"]._metadata  # module versions survive both ways
    assert original["optimizer"]["state"]  # momentum buffers came along

    code, out, _ = _run(capsys, "inspect", st)
    assert code == 0
    assert "training checkpoint" in out and "pickle-free" in out
    assert "optimizer" in out and "scheduler" in out and "<skeleton," in out
    code, out, _ = _run(capsys, "inspect", "--json", st)
    info = json.loads(out)
    assert info["pickle_free"] and info["training_checkpoint"] and info["iteration"] == 4
    assert info["metadata"]["format"] == TRAINING_FORMAT
    n_momentum = len(original["optimizer"]["state"])
    assert info["entries"]["optimizer"]["tensors"] == n_momentum
    assert info["entries"]["model"]["tensors"] == len(original["model"])

    code, out, _ = _run(capsys, "verify", "--json", st)
    result = json.loads(out)
    assert code == 0 and result["ok"], result["problems"]
    assert any("integrity record matches" in c for c in result["checks"])
    assert any("header and offsets ok" in c for c in result["checks"])
    assert f"training state decoded, {n_momentum} tensors readable" in result["checks"]


def test_verify_catches_flipped_bytes_and_a_broken_skeleton(training_pth, tmp_path, capsys):
    st = tmp_path / "a.safetensors"
    assert _run(capsys, "convert", "--training", training_pth, st)[0] == 0
    data = bytearray(st.read_bytes())
    data[-100] ^= 0x10  # in a tensor: only the integrity record can tell
    st.write_bytes(bytes(data))
    code, out, _ = _run(capsys, "verify", st)
    assert code == 1 and "content changed after it was written" in out

    # A skeleton that names a tensor the file lacks: the header is valid JSON, the
    # training tree is not; the loader says so and names the file.
    os.remove(str(st) + ".integrity.json")
    data = st.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    tree = header["__metadata__"]["tree"].replace('"k":"optimizer/', '"k":"nowhere/', 1)
    header["__metadata__"]["tree"] = tree
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    st.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    code, out, _ = _run(capsys, "verify", st)
    assert code == 1 and "nowhere/" in out and str(st) in out
    code, _, err = _run(capsys, "inspect", st)
    assert code == 2 and "skeleton" in err
