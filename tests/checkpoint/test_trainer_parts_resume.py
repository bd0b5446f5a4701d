"""A resume through the Trainer restores every part of its state, compared value by value:
weights, momentum, iteration (from the file), scheduler, hook state and the AMP grad scaler."""

import pytest
import torch
from detectron2.engine import AMPTrainer, HookBase

from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import train_on_toy
from tests.helpers.models import assert_same_weights, step_trainer_state


class _Counter(HookBase):
    """A hook with its own state, as an EMA or a metric tracker has."""

    def __init__(self):
        self.seen = []

    def state_dict(self):
        return {"seen": list(self.seen), "total": torch.tensor(float(sum(self.seen)))}

    def load_state_dict(self, state):
        self.seen = list(state["seen"])
        assert float(state["total"]) == sum(self.seen)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_parts")
    generate_toy_dataset(str(root), num_train=2, num_val=1, size=64, seed=0)
    return root


def _trainer(tiny_cfg, toy, out, **overrides):
    cfg = train_on_toy(
        tiny_cfg(**{"OUTPUT_DIR": str(out), "SOLVER.AMP.ENABLED": True, **overrides}), toy, "parts"
    )
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 20, (3,), 2
    prepare_datasets(cfg)
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, AMPTrainer)
    # torch's CUDA scaler is disabled on a CPU-only host (its state is then empty); the
    # CPU one has the same state dict, so the scaler part is tested on any machine.
    trainer._trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    counter = _Counter()
    trainer.register_hooks([counter])
    return trainer, counter


def _momenta(opt):
    return [opt.state[p]["momentum_buffer"] for g in opt.param_groups for p in g["params"]]


def _assert_same_momenta(a, b):
    ma, mb = _momenta(a), _momenta(b)
    assert len(ma) == len(mb) == sum(len(g["params"]) for g in a.param_groups)
    for x, y in zip(ma, mb):
        assert torch.equal(x, y)


@pytest.fixture
def first_run(tiny_cfg, toy, tmp_path):
    """``(trainer, out)``: a trainer whose every part has non-trivial state, saved at 5."""
    out = tmp_path / "run"
    first, counter = _trainer(tiny_cfg, toy, out)
    # Non-trivial state in every part: one momentum step, a scheduler past its warmup and
    # first decay, a scaler with its own scale and growth count, a hook's history.
    step_trainer_state(first)
    scaler = first._trainer.grad_scaler
    scaler.load_state_dict({**scaler.state_dict(), "scale": 512.0, "_growth_tracker": 7})
    counter.seen = [3, 1, 4]
    first.iter = 5
    first.checkpointer.save("model_0000005", iteration=5)
    first.checkpointer.wait()  # the Trainer's checkpointer saves in the background
    saved_iter = torch.load(out / "model_0000005.pth", weights_only=True)["iteration"]
    assert saved_iter == 5
    return first, out


def test_amp_scaler_hooks_momentum_and_iteration_come_back(first_run, tiny_cfg, toy):
    first, out = first_run
    scaler = first._trainer.grad_scaler
    saved_iter = torch.load(out / "model_0000005.pth", weights_only=True)["iteration"]
    second, counter2 = _trainer(tiny_cfg, toy, out)
    assert second._trainer.grad_scaler.state_dict()["scale"] == 2.0**16
    second.resume_or_load(resume=True)

    assert_same_weights(second.model, first.model)
    _assert_same_momenta(first.optimizer, second.optimizer)
    assert second.iter == saved_iter and second.start_iter == saved_iter + 1
    assert second.scheduler.state_dict() == first.scheduler.state_dict()
    assert second.scheduler.last_epoch == 5
    assert second.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]
    assert second._trainer.grad_scaler.state_dict() == scaler.state_dict()
    assert second._trainer.grad_scaler.get_scale() == 512.0
    assert counter2.seen == [3, 1, 4]
    parts = second.checkpointer.last_report.checkpointables
    assert parts["trainer.scaler"] == parts["trainer.hooks"] == "restored"


def test_only_the_optimizer_restores_momentum_and_starts_at_zero(first_run, tiny_cfg, toy):
    first, out = first_run
    only = {"CHECKPOINT.LOAD.CHECKPOINTABLES": ["optimizer"]}
    second, counter2 = _trainer(tiny_cfg, toy, out, **only)
    second.resume_or_load(resume=True)
    assert second.start_iter == 0
    _assert_same_momenta(first.optimizer, second.optimizer)
    assert second.scheduler.last_epoch == 0  # not restored: the schedule starts over
    assert second._trainer.grad_scaler.get_scale() == 2.0**16 and counter2.seen == []
    parts = second.checkpointer.last_report.checkpointables
    assert parts["trainer.optimizer"] == "restored"
    assert parts["trainer.iteration"] == parts["trainer.scaler"] == "skipped"


@pytest.mark.parametrize("select_on_resume", [False, True])
def test_trainer_resume_and_the_key_selection(first_run, tiny_cfg, toy, select_on_resume):
    first, out = first_run
    selection = {
        "CHECKPOINT.LOAD.EXCLUDE": ["roi_heads.*"],
        "CHECKPOINT.LOAD.RENAME": [["^backbone\\.fpn_", "backbone.fpn_old_"]],
        "CHECKPOINT.LOAD.SELECT_ON_RESUME": select_on_resume,
    }
    second, _ = _trainer(tiny_cfg, toy, out, **selection)
    built = {k: v.clone() for k, v in second.model.state_dict().items()}
    second.resume_or_load(resume=True)
    assert second.start_iter == 6
    _assert_same_momenta(first.optimizer, second.optimizer)
    report = second.checkpointer.last_report
    if not select_on_resume:  # the run's own checkpoint: every key, as saved
        assert_same_weights(second.model, first.model)
        assert not report.skipped and not report.missing and not report.unexpected
        return
    now, saved = second.model.state_dict(), first.model.state_dict()
    left = [
        n
        for n, _ in second.model.named_parameters()
        if n.startswith(("roi_heads.", "backbone.fpn_"))
    ]
    assert any(k.startswith("roi_heads.") for k in left) and any("fpn_" in k for k in left)
    for k in left:
        assert torch.equal(now[k], built[k]) and not torch.equal(now[k], saved[k]), k
    assert_same_weights(
        second.model, first.model, [k for k in now if k.startswith("backbone.bottom_up.")]
    )
    assert any(k.startswith("backbone.fpn_old_") for k in report.unexpected)
