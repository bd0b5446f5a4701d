"""End to end on toy data: train, checkpoint, resume, and continue where training stopped."""

import os
import shutil

import pytest
import torch
from detectron2.engine import hooks

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import train_on_toy


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(str(root), num_train=8, num_val=2, size=64, seed=1)
    return root


def _cfg(tiny_cfg, toy, out, max_iter, **overrides):
    cfg = train_on_toy(tiny_cfg(**overrides), toy, prefix="toy_e2e")
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.STEPS = (3,)
    cfg.OUTPUT_DIR = str(out)
    prepare_datasets(cfg)
    return cfg


def _momentum(trainer):
    return [s["momentum_buffer"] for s in trainer.optimizer.state_dict()["state"].values()]


def _train(cfg, resume):
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, toy):
    from tests.helpers.config import tiny_frcnn_cfg

    out = tmp_path_factory.mktemp("run")
    cfg = _cfg(tiny_frcnn_cfg, toy, out, max_iter=4)
    trainer = _train(cfg, resume=False)
    trainer.train()
    return trainer, out


def test_hooks_and_resume_use_the_configured_checkpointer(first_run):
    trainer, out = first_run
    assert type(trainer.checkpointer) is EfficientDetectionCheckpointer
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert periodic and periodic[0].checkpointer is trainer.checkpointer
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
    ]
    assert open(out / "last_checkpoint").read().strip() == "model_final.pth"


def _copy(out, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    return dst


def test_resume_continues_exactly(first_run, tiny_cfg, toy, tmp_path):
    trainer, out = first_run
    out = _copy(out, tmp_path)
    cfg = _cfg(tiny_cfg, toy, out, max_iter=6)
    resumed = _train(cfg, resume=True)
    # The last checkpoint was written at iteration 3; training continues at 4.
    assert resumed.start_iter == 4 == trainer.max_iter
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    before, after = _momentum(trainer), _momentum(resumed)
    assert len(before) == len(after) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert resumed.scheduler.last_epoch == trainer.scheduler.last_epoch
    assert resumed.checkpointer.last_report.checkpointables["trainer"] == "restored"
    resumed.train()
    assert resumed.iter == 6  # one past the last iteration run, as TrainerBase leaves it
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 5 and saved["trainer"]["iteration"] == 5


def test_resume_weights_and_iteration_with_fresh_optimizer(first_run, tiny_cfg, toy, tmp_path):
    trainer, out = first_run
    out = _copy(out, tmp_path)
    cfg = _cfg(
        tiny_cfg,
        toy,
        out,
        max_iter=6,
        **{"CHECKPOINT.LOAD.CHECKPOINTABLES": ["iteration", "scheduler"]},
    )
    resumed = _train(cfg, resume=True)
    st = resumed.checkpointer.last_report.checkpointables
    assert st["trainer.iteration"] == "restored" and st["trainer.optimizer"] == "skipped"
    assert resumed.start_iter == 4
    assert _momentum(resumed) == []
    assert resumed.scheduler.last_epoch == trainer.scheduler.last_epoch
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_resume_without_iteration_starts_at_zero(first_run, tiny_cfg, toy, tmp_path):
    trainer, out = first_run
    out = _copy(out, tmp_path)
    cfg = _cfg(tiny_cfg, toy, out, max_iter=6, **{"CHECKPOINT.LOAD.CHECKPOINTABLES": ["optimizer"]})
    resumed = _train(cfg, resume=True)
    assert resumed.start_iter == 0
    before, after = _momentum(trainer), _momentum(resumed)
    assert len(before) == len(after) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, after))
