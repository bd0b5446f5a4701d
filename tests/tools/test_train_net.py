"""tools/train_net.py as a user runs it: train, resume, evaluate, and bad input."""

import importlib.util
import logging
import os
import subprocess
import sys

import pytest
import torch
from detectron2.engine import default_argument_parser

from tests.helpers.config import REPO, TRAIN_NET, tiny_frcnn_cfg


def _run(*argv):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, TRAIN_NET, *argv], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def train_net():
    """tools/train_net.py loaded as a module, for the bad-input cases run in this process."""
    spec = importlib.util.spec_from_file_location("train_net_under_test", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_in_process(train_net, capsys):
    """Run train_net's command line in this process, as its ``__main__`` block does (one
    process, no workers): ``(exit code, stdout, stderr)``. The loggers that train_net sets up
    (no propagation, file handlers) are put back afterwards, for the tests that follow."""
    names = ("d2_efficient_ckpt", "detectron2", "fvcore")
    before = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names
    }

    def run(*argv):
        args = default_argument_parser().parse_args(list(argv))
        with pytest.raises(SystemExit) as e:
            train_net.exit_on_user_error(train_net._launch, args)
        out, err = capsys.readouterr()
        return e.value.code, out, err

    yield run
    for name, (handlers, propagate) in before.items():
        log = logging.getLogger(name)
        for h in log.handlers:
            if h not in handlers:
                log.removeHandler(h)
                h.close()
        log.propagate = propagate


def test_train_resume_eval_only(toy_config):
    out = os.path.join(os.path.dirname(toy_config), "out")
    r = _run("--config-file", str(toy_config))
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    r = _run("--config-file", str(toy_config), "--resume", "SOLVER.MAX_ITER", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "Training continues at iteration 2 of 3" in log
    # The resumed run started where the file says: it ran iteration 2 only.
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 2 and final["trainer"]["iteration"] == 2
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 3
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
def test_bad_input_is_one_clear_error(toy_config, opts, expected, run_in_process, tmp_path):
    out = str(tmp_path / "out")
    code, _, err = run_in_process("--config-file", str(toy_config), "OUTPUT_DIR", out, *opts)
    assert code == 2
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert expected in line
    assert not os.path.exists(os.path.join(out, "model_final.pth"))


def test_missing_config_file():
    # Through the real command line: the exit status and the one error line.
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
