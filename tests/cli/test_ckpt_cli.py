"""The checkpoint command-line tool: every subcommand, good and bad input."""

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from safetensors.torch import load_file

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.cli import main
from tests.helpers.config import REPO, tiny_frcnn_cfg

COMMANDS = ("inspect", "diff", "convert", "strip", "verify")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two checkpoints of a tiny Faster R-CNN with momentum, B = A with roi_heads trained."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    cfg = tiny_frcnn_cfg()
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    ck = DetectionCheckpointer(model, str(root), optimizer=opt)
    ck.save("a", iteration=9)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("roi_heads."):
                p.add_(0.01 * torch.randn_like(p))
    ck.save("b", iteration=19)
    cfg.OUTPUT_DIR = str(root / "out")
    config = root / "tiny.yaml"
    config.write_text(cfg.dump())
    return {
        "root": root,
        "a": str(root / "a.pth"),
        "b": str(root / "b.pth"),
        "config": str(config),
        "model": model,
    }


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_json(capsys, *argv):
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def test_help_has_examples(capsys):
    for cmd in COMMANDS:
        code, out, _ = run(capsys, cmd, "--help")
        assert code == 0 and "examples:" in out and f"python -m d2_efficient_ckpt {cmd}" in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(cmd in out for cmd in COMMANDS)


def test_inspect(files, capsys, tmp_path):
    code, info = run_json(capsys, "inspect", files["a"])
    assert code == 0 and info["format"] == "torch-zip" and info["iteration"] == 9
    assert info["safe"] and not info["pickle_free"]
    model = info["entries"]["model"]
    assert model["keys"] == 150 and model["bytes"] > 40e6
    params = len(list(files["model"].parameters()))
    assert info["entries"]["optimizer"]["tensors"] == params  # one momentum buffer each
    assert info["dtypes"]["float32"]["tensors"] == 130 and info["dtypes"]["int64"]["tensors"] == 20
    code, out, _ = run(capsys, "inspect", files["a"])
    assert code == 0 and "pickle-free  no" in out and "optimizer" in out


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_INSPECT",))


def test_inspect_never_runs_unsafe_pickle(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"w": torch.ones(2)}, "x": _Boom()}, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {}, "__author__": _Boom()}, f)
    for name in ("evil.pth", "evil.pkl"):
        code, info = run_json(capsys, "inspect", tmp_path / name)
        assert code == 0 and not info["safe"] and any("system" in g for g in info["unsafe_globals"])
    assert not (tmp_path / "PWNED_BY_INSPECT").exists()


def test_convert_round_trip_and_pickle_free(files, capsys, tmp_path):
    st, back = tmp_path / "a.safetensors", tmp_path / "back.pth"
    code, _, _ = run(capsys, "convert", files["a"], st)
    assert code == 0
    ref = torch.load(files["a"], weights_only=True)
    tensors = load_file(str(st))  # readable by the reference implementation
    assert set(tensors) == set(ref["model"])
    assert all(torch.equal(tensors[k], v) for k, v in ref["model"].items())
    code, info = run_json(capsys, "inspect", st)
    assert info["pickle_free"] and info["format"] == "safetensors"
    code, summary = run_json(capsys, "convert", st, back)
    assert code == 0 and summary["entries"] == {"iteration": 9}
    again = torch.load(back, weights_only=True)
    assert again["iteration"] == 9
    assert all(torch.equal(again["model"][k], v) for k, v in ref["model"].items())
    code, _, err = run(capsys, "convert", files["a"], st)
    assert code == 2 and "--force" in err


def test_convert_torchvision_resnet(capsys, tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(tv, tmp_path / "r18.pth")
    out = tmp_path / "r18_d2.pth"
    code, summary = run_json(
        capsys,
        "convert",
        "--from",
        "torchvision",
        "--prefix",
        "backbone.bottom_up.",
        tmp_path / "r18.pth",
        out,
    )
    assert code == 0 and summary["tensors"] == len(tv) - 2 - 20  # fc.* and num_batches_tracked
    model = build_model(tiny_frcnn_cfg())  # a ResNet-18 FPN
    ck = EfficientDetectionCheckpointer(model)
    ck.load(str(out))
    loaded = [k for k in ck.last_report.loaded if k.startswith("backbone.bottom_up.")]
    assert len(loaded) == summary["tensors"] and not ck.last_report.unexpected
    sd = model.state_dict()
    assert torch.equal(
        sd["backbone.bottom_up.res3.0.shortcut.weight"], tv["layer2.0.downsample.0.weight"]
    )
    assert torch.equal(sd["backbone.bottom_up.res2.1.conv2.norm.bias"], tv["layer1.1.bn2.bias"])


def test_convert_caffe2_pkl(capsys, tmp_path):
    blobs = {
        "conv1_w": np.ones((4, 3, 7, 7), np.float32),
        "res_conv1_bn_s": np.ones(4, np.float32),
        "res2_0_branch2a_w": np.ones((4, 4, 1, 1), np.float32),
        "res2_0_branch1_bn_b": np.zeros(4, np.float32),
        "conv1_w_momentum": np.zeros(1, np.float32),
    }
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    code, summary = run_json(capsys, "convert", tmp_path / "R-50.pkl", tmp_path / "R-50.pth")
    assert code == 0 and summary["input_format"] == "pkl-caffe2"
    data = torch.load(tmp_path / "R-50.pth", weights_only=True)
    assert set(data["model"]) == {
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "res2.0.conv1.weight",
        "res2.0.shortcut.norm.bias",
    }
    assert data["matching_heuristics"] is True


def test_strip_fp16_is_deployable(files, capsys, tmp_path):
    out = tmp_path / "deploy.safetensors"
    code, s = run_json(capsys, "strip", "--fp16", files["a"], out)
    assert code == 0 and s["dropped_entries"] == ["optimizer", "iteration"]
    # Weights only (no momentum), in half the bytes: about a quarter of the training file.
    assert s["bytes"] < 0.3 * os.path.getsize(files["a"])
    assert s["fp16_tensors"] == 130
    model = build_model(tiny_frcnn_cfg())
    ck = EfficientDetectionCheckpointer(model)
    ck.load(str(out))
    assert len(ck.last_report.dtype_changed) == 130 and not ck.last_report.has_mismatch
    ref = files["model"]  # B's weights differ from A only in roi_heads
    w = "backbone.bottom_up.stem.conv1.weight"
    assert torch.allclose(model.state_dict()[w], ref.state_dict()[w], atol=1e-3)


def test_strip_keeps_values_beyond_fp16_in_fp32(capsys, tmp_path):
    torch.save({"model": {"big": torch.tensor([1e6]), "small": torch.ones(3)}}, tmp_path / "m.pth")
    code, s = run_json(capsys, "strip", "--fp16", tmp_path / "m.pth", tmp_path / "s.pth")
    assert code == 0 and s["kept_fp32_overflow"] == ["big"]
    data = torch.load(tmp_path / "s.pth", weights_only=True)["model"]
    assert data["big"].dtype == torch.float32 and data["small"].dtype == torch.float16


def test_verify(files, capsys, tmp_path):
    code, r = run_json(capsys, "verify", files["a"])
    assert code == 0 and r["ok"] and "zip CRCs ok" in r["checks"]
    code, r = run_json(capsys, "verify", files["a"], "--sha256", r["sha256"][:8])
    assert code == 0 and "sha256 matches" in r["checks"]
    code, r = run_json(capsys, "verify", files["a"], "--sha256", "0" * 64)
    assert code == 1 and "SHA-256" in r["problems"][0]
    data = open(files["a"], "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    code, out, _ = run(capsys, "verify", tmp_path / "cut.pth")
    assert code == 1 and "FAILED" in out and "truncated" in out
    torch.save({"model": {"w": torch.tensor([1.0, float("nan")])}}, tmp_path / "nan.pth")
    code, r = run_json(capsys, "verify", tmp_path / "nan.pth")
    assert code == 1 and "NaN or Inf: w" in r["problems"][0]
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "nan.pth").read_bytes())
    code, r = run_json(capsys, "verify", tmp_path / "bad.safetensors")
    assert code == 1 and not r["ok"]


def test_diff_two_checkpoints(files, capsys):
    code, d = run_json(capsys, "diff", files["a"], files["b"])
    assert code == 0 and not (d["only_a"] or d["only_b"] or d["shape"])
    changes = {m["module"]: m for m in d["modules"]}
    assert changes["backbone.bottom_up.stem.conv1"]["frozen"]
    assert changes["backbone.bottom_up.stem.conv1"]["rel_change"] == 0
    fc1 = changes["roi_heads.box_head.fc1"]
    assert not fc1["frozen"] and fc1["rel_change"] > 0
    a = torch.load(files["a"], weights_only=True)["model"]
    b = torch.load(files["b"], weights_only=True)["model"]
    keys = ("roi_heads.box_head.fc1.weight", "roi_heads.box_head.fc1.bias")
    num = sum(float((a[k].double() - b[k].double()).norm()) ** 2 for k in keys)
    den = sum(float(a[k].double().norm()) ** 2 for k in keys)
    assert math.isclose(fc1["rel_change"], math.sqrt(num / den), rel_tol=1e-9)
    code, out, _ = run(capsys, "diff", files["a"], files["b"], "--depth", "2")
    assert code == 0 and "2 changed" in out and "frozen" in out and "roi_heads.box_head" in out


def test_diff_fp16_copy_is_one_dtype_row(files, capsys, tmp_path):
    state = torch.load(files["a"], weights_only=True)["model"]
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model": half}, tmp_path / "half.pth")
    code, out, _ = run(capsys, "diff", files["a"], tmp_path / "half.pth")
    rows = [line for line in out.splitlines() if line.startswith("dtype differs")]
    assert code == 0 and len(rows) == 1, rows  # the int64 BatchNorm counters do not split it
    assert "torch.float32 -> torch.float16" in rows[0]


def test_diff_against_config(files, capsys):
    code, out, err = run(capsys, "diff", files["a"], "--config-file", files["config"])
    assert code == 0 and "Loaded 150 of 150 model keys" in out
    opts = ["MODEL.ROI_HEADS.NUM_CLASSES", "5", "CHECKPOINT.LOAD.ON_MISMATCH", "error"]
    code, out, err = run(capsys, "diff", files["a"], "--config-file", files["config"], *opts)
    assert code == 1 and "Number of classes changed: 3 -> 5 classes" in out
    assert "error:" in err and 'ALLOW_MISMATCH ["roi_heads.box_predictor.*"]' in err
    allow = ["CHECKPOINT.LOAD.ALLOW_MISMATCH", "['roi_heads.box_predictor.*']"]
    code, data = run_json(
        capsys, "diff", files["a"], "--config-file", files["config"], *opts, *allow
    )
    assert code == 0 and data["policy"]["tolerated"] and not data["policy"]["broken"]
    assert data["report"]["explanations"][0]["kind"] == "num_classes"
    assert not (files["root"] / "out").exists()  # diff writes nothing


@pytest.mark.parametrize("cmd", [["inspect"], ["verify"], ["convert", "{out}"], ["strip", "{out}"]])
def test_missing_and_non_checkpoint_files(cmd, capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    for src in (tmp_path / "missing.pth", text):
        argv = [cmd[0], src] + [c.format(out=tmp_path / "o.pth") for c in cmd[1:]]
        code, out, err = run(capsys, *argv)
        assert code != 0, argv
        if cmd[0] == "verify" and src == text:
            assert code == 1 and "not a checkpoint format" in out
        else:
            assert code == 2 and err.startswith("error: ")


def test_diff_bad_input(files, capsys, tmp_path):
    code, _, err = run(capsys, "diff", files["a"])
    assert code == 2 and "two checkpoints" in err
    code, _, err = run(capsys, "diff", files["a"], tmp_path / "missing.pth")
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "diff", files["a"], "--config-file", tmp_path / "nope.yaml")
    assert code == 2 and "does not exist" in err
    bad = ["MODEL.META_ARCHITECTURE", "NoSuchArch"]
    code, _, err = run(capsys, "diff", files["a"], "--config-file", files["config"], *bad)
    assert code == 2 and "does not build a model" in err and "NoSuchArch" in err
    code, _, err = run(
        capsys, "diff", files["a"], "--config-file", files["config"], "MODEL.NOPE", "1"
    )
    assert code == 2 and "MODEL.NOPE" in err
    code, _, err = run(capsys, "inspect", files["a"], "--bogus")
    assert code == 2 and "unrecognized arguments" in err


def test_script_reports_errors_without_traceback(files, tmp_path):
    script = os.path.join(REPO, "tools", "ckpt.py")
    cases = [
        ([script, "inspect", str(tmp_path / "missing.pth")], "no such file"),
        (
            [
                "-m",
                "d2_efficient_ckpt",
                "diff",
                files["a"],
                "--config-file",
                str(tmp_path / "x.yaml"),
            ],
            "does not exist",
        ),
    ]
    for argv, expected in cases:
        p = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=120
        )
        assert p.returncode == 2, p.stderr
        # Only torch's own import-time warnings may precede the one error line.
        last = p.stderr.strip().splitlines()[-1]
        assert "Traceback" not in p.stderr and last.startswith("error: ") and expected in last
