"""The Trainer's saving: async checkpoints joined by train(), failures raised at the next
step, retention, and checkpoint-and-exit on a preemption signal."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.save import CheckpointSaveError, check_full
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.engine.save_hooks import PREEMPTED_EXIT_CODE
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import REPO, train_on_toy
from tests.helpers.faults import FullDisk


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(str(root), num_train=8, num_val=2, size=64, seed=1)
    return root


def _cfg(tiny_cfg, toy, out, max_iter, **overrides):
    cfg = train_on_toy(tiny_cfg(**overrides), toy, prefix="toy_save")
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.OUTPUT_DIR = str(out)
    prepare_datasets(cfg)
    return cfg


def test_async_training_joins_saves_and_keeps_max_to_keep(tiny_cfg, toy, tmp_path):
    cfg = _cfg(
        tiny_cfg,
        toy,
        tmp_path,
        max_iter=4,
        **{"CHECKPOINT.SAVE.ASYNC": True, "CHECKPOINT.SAVE.MAX_TO_KEEP": 2},
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert not trainer.checkpointer.saver.busy  # train() returned with every save durable
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth"))
    assert names == ["model_0000002.pth", "model_0000003.pth", "model_final.pth"]
    for n in names:
        check_full(str(tmp_path / n))
    assert not os.path.exists(tmp_path / "model_0000000.pth.integrity.json")
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(final["model"][k], v), k


def test_the_trainer_saves_in_the_background_by_default_a_direct_checkpointer_does_not(
    tiny_cfg, toy, tmp_path
):
    cfg = _cfg(tiny_cfg, toy, tmp_path / "trainer", max_iter=3)
    assert cfg.CHECKPOINT.SAVE.ASYNC is None  # the default: the Trainer decides
    trainer = Trainer(cfg)
    assert trainer.cfg.CHECKPOINT.SAVE.ASYNC is True
    saver = trainer.checkpointer.saver
    assert saver.options.asynchronous
    trainer.resume_or_load(resume=False)
    trainer.train()
    # Every save was a pipelined one: the weights and momenta were copied after save().
    assert saver.last_result is not None and not saver.busy
    assert trainer.checkpointer.saver._stable is not None
    final = torch.load(tmp_path / "trainer" / "model_final.pth", weights_only=True)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(final["model"][k], v), k
    # Built in a user's own code from the same config, save() returns with the file there.
    direct = EfficientDetectionCheckpointer(trainer.model, str(tmp_path / "direct"), cfg=cfg)
    assert not direct.saver.options.asynchronous
    direct.save("model_0000000")
    check_full(str(tmp_path / "direct" / "model_0000000.pth"))


def test_failed_background_save_stops_training_at_the_next_step(tiny_cfg, toy, tmp_path):
    cfg = _cfg(tiny_cfg, toy, tmp_path, max_iter=20, **{"CHECKPOINT.SAVE.ASYNC": True})
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.checkpointer.saver.opener = FullDisk(room=1 << 16)
    with pytest.raises(CheckpointSaveError, match="disk is full"):
        trainer.train()
    # The first periodic save (iteration 0) failed; it was raised a step or two later at
    # most (back-pressure joins it at the next save), never lost.
    assert trainer.iter <= 2
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".pth")]


def test_bad_signal_name_is_a_config_error(tiny_cfg, toy, tmp_path):
    from d2_efficient_ckpt.checkpoint.save import SaveConfigError

    cfg = _cfg(tiny_cfg, toy, tmp_path, 2, **{"CHECKPOINT.SAVE.ON_SIGNAL": ["SIGKILL"]})
    with pytest.raises(SaveConfigError, match="ON_SIGNAL"):
        Trainer(cfg)


def test_signal_checkpoints_exits_and_resume_continues(tiny_cfg, toy, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoint.save.worker", "trainer", str(out), str(toy)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.strip() == "step 1":
                proc.send_signal(signal.SIGUSR1)
                break
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == PREEMPTED_EXIT_CODE
    tagged = (out / "last_checkpoint").read_text()
    stopped = int(tagged[len("model_") : -len(".pth")])
    assert stopped >= 1
    check_full(str(out / tagged))
    cfg = _cfg(tiny_cfg, toy, out, max_iter=1000)
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == stopped + 1


class _Preempted(Exception):
    pass


def test_extended_max_iter_then_preempted_resumes_the_newest_save(tiny_cfg, toy, tmp_path):
    # The demo's workflow: train to the end, extend SOLVER.MAX_ITER and resume, get
    # preempted, resume again. The second resume continues from the newest periodic
    # checkpoint, not from the model_final of the first run.
    from detectron2.engine.train_loop import HookBase

    first = Trainer(_cfg(tiny_cfg, toy, tmp_path, max_iter=2))
    first.resume_or_load(resume=False)
    first.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"

    class PreemptAfter(HookBase):
        def after_step(self):
            if self.trainer.iter == 3:
                raise _Preempted()

    extended = Trainer(_cfg(tiny_cfg, toy, tmp_path, max_iter=6))
    extended.register_hooks([PreemptAfter()])
    extended.resume_or_load(resume=True)
    assert extended.start_iter == 2
    with pytest.raises(_Preempted):
        extended.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    again = Trainer(_cfg(tiny_cfg, toy, tmp_path, max_iter=6))
    again.resume_or_load(resume=True)
    assert again.start_iter == 4
    assert again.checkpointer.last_report.path.endswith("model_0000003.pth")
