"""tools/train_net.py as a user runs it: train, resume, evaluate, and bad input."""

import os
import subprocess
import sys

import pytest

from d2_efficient_ckpt.data import generate_toy_dataset
from tests.conftest import REPO, tiny_frcnn_cfg

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


@pytest.fixture(scope="module")
def toy_config(tmp_path_factory):
    """A yaml config for the tiny model on a 6 + 2 image toy dataset."""
    root = tmp_path_factory.mktemp("tn")
    generate_toy_dataset(str(root / "toy"), num_train=6, num_val=2, size=64, seed=3)
    cfg = tiny_frcnn_cfg()
    for split in ("train", "val"):
        node = cfg.DATASETS.CUSTOM[f"toy_{split}"]
        node.ANN_FILE = str(root / "toy" / "annotations" / f"{split}.json")
        node.IMAGE_ROOT = str(root / "toy" / "images" / split)
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.STEPS = ()
    cfg.OUTPUT_DIR = str(root / "out")
    path = root / "tiny.yaml"
    path.write_text(cfg.dump())
    return path


def _run(*argv):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, TRAIN_NET, *argv], capture_output=True, text=True, env=env, timeout=600
    )


def test_train_resume_eval_only(toy_config):
    out = os.path.join(os.path.dirname(toy_config), "out")
    r = _run("--config-file", str(toy_config))
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    r = _run("--config-file", str(toy_config), "--resume", "SOLVER.MAX_ITER", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "Training continues at iteration 2 of 3" in log
    assert "Loading trainer state" in log
    r = _run(
        "--config-file",
        str(toy_config),
        "--eval-only",
        "MODEL.WEIGHTS",
        os.path.join(out, "model_final.pth"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "copypaste: AP,AP50" in r.stdout + r.stderr


@pytest.mark.parametrize(
    "opts,expected",
    [
        (["DATASETS.TRAIN", "('nope_train',)"], "nope_train"),
        (["DATASETS.TRAIN", "toy_train"], "('toy_train',)"),
        (
            ["DATASETS.CUSTOM.toy_train.ANN_FILE", "/nonexistent/train.json"],
            "/nonexistent/train.json",
        ),
        (["DATASETS.CUSTOM.toy_val.IMAGE_ROOT", "/nonexistent/images"], "/nonexistent/images"),
        (
            ["MODEL.WEIGHTS", "/nonexistent/model.pth", "SOLVER.MAX_ITER", "1"],
            "/nonexistent/model.pth",
        ),
        (
            ["SOLVER.MAX_ITR", "5"],
            "SOLVER.MAX_ITR is not a config key. Did you mean SOLVER.MAX_ITER",
        ),
    ],
)
def test_bad_input_is_one_clear_error(toy_config, opts, expected):
    r = _run("--config-file", str(toy_config), *opts)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "error:" in r.stderr and expected in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1


def test_missing_config_file():
    r = _run("--config-file", "/nonexistent/config.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "/nonexistent/config.yaml" in r.stderr


def test_mismatch_policy_error_stops_before_training(toy_config, tmp_path):
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    other = build_model(tiny_frcnn_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 7}))
    DetectionCheckpointer(other, str(tmp_path)).save("seven_classes")
    weights = str(tmp_path / "seven_classes.pth")
    out = str(tmp_path / "out")
    base = ["--config-file", str(toy_config), "OUTPUT_DIR", out, "MODEL.WEIGHTS", weights]
    r = _run(*base, "CHECKPOINT.LOAD.ON_MISMATCH", "error")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "roi_heads.box_predictor" in r.stderr and "ALLOW_MISMATCH" in r.stderr
    assert "Starting training" not in r.stdout + r.stderr
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    assert os.path.isfile(os.path.join(out, "load_report_seven_classes.json"))
    r = _run(
        *base,
        "CHECKPOINT.LOAD.ON_MISMATCH",
        "error",
        "CHECKPOINT.LOAD.ALLOW_MISMATCH",
        "['roi_heads.box_predictor.*']",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == 1
