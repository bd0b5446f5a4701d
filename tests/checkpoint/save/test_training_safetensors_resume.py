"""CHECKPOINT.SAVE.FORMAT safetensors end to end: a trainer saves pickle-free, a new trainer
resumes from it exactly as from .pth, and convert turns one into the other and back."""

import json
import os
import subprocess
import sys

import pytest

from d2_efficient_ckpt.checkpoint.formats import open_checkpoint
from d2_efficient_ckpt.checkpoint.formats.training_safetensors import (
    TRAINING_FORMAT,
    TrainingModelView,
)
from d2_efficient_ckpt.checkpoint.save import check_full
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import REPO, train_on_toy
from tests.helpers.models import assert_same_state


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(str(root), num_train=4, num_val=1, size=64, seed=3)
    return root


def _cfg(tiny_cfg, toy, out, max_iter, fmt):
    cfg = train_on_toy(tiny_cfg(**{"CHECKPOINT.SAVE.FORMAT": fmt}), toy, prefix="toy_st")
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.SOLVER.STEPS = (1,)  # the scheduler's state changes within the run
    cfg.OUTPUT_DIR = str(out)
    prepare_datasets(cfg)
    return cfg


def _state(trainer):
    """Everything a resume restores, as plain tensors and values."""
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "iter": trainer.iter,
    }


def _resume(tiny_cfg, toy, out, fmt):
    trainer = Trainer(_cfg(tiny_cfg, toy, out, max_iter=10, fmt=fmt))
    trainer.resume_or_load(resume=True)
    return trainer


def _convert(src, dst):
    cmd = [sys.executable, "-m", "d2_efficient_ckpt", "convert", "--json", str(src), str(dst)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_trainer_saves_pickle_free_and_resumes_as_from_pth(tiny_cfg, toy, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(_cfg(tiny_cfg, toy, out, max_iter=3, fmt="safetensors"))
    trainer.resume_or_load(resume=False)
    trainer.train()
    saved = _state(trainer)
    saved["iter"] -= 1  # train() ends one past the last step, which the final save holds
    assert saved["scheduler"]["last_epoch"] == 3
    final = out / "model_final.safetensors"
    assert (out / "last_checkpoint").read_text() == "model_final.safetensors"
    assert not [n for n in os.listdir(out) if n.endswith(".pth")]
    check_full(str(final))
    assert b"PK\x03\x04" not in final.read_bytes()[:8]  # not a torch zip: no pickle inside

    opened = open_checkpoint(str(final))
    assert opened.metadata["format"] == TRAINING_FORMAT
    assert isinstance(opened.data["model"], TrainingModelView)
    assert opened.data["iteration"] == 2 and opened.data["trainer"]["iteration"] == 2

    resumed = _resume(tiny_cfg, toy, tmp_path / "run", "safetensors")
    assert resumed.start_iter == 3
    assert resumed.checkpointer.last_report.format == "safetensors"
    assert_same_state(saved, _state(resumed))

    # The same checkpoint as .pth (convert) resumes to exactly the same state.
    pth_dir = tmp_path / "as_pth"
    pth_dir.mkdir()
    summary = _convert(final, pth_dir / "model_final.pth")
    assert summary["output_format"] == "torch" and summary["training_state"]
    (pth_dir / "last_checkpoint").write_text("model_final.pth")
    from_pth = _resume(tiny_cfg, toy, pth_dir, "pth")
    assert from_pth.start_iter == 3
    assert_same_state(saved, _state(from_pth))
