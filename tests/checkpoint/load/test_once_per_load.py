"""Each decision of a load or a resume is made once: counted with spies on the real code.

A resume chooses its file once; a load checks the mismatch policy once, selects the
trainer's parts once and writes its report file once, also when the policy stops it.
"""

import pytest
import torch

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer, checkpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointPolicyError
from d2_efficient_ckpt.checkpoint.load import pipeline
from d2_efficient_ckpt.checkpoint.restore import checkpointables
from d2_efficient_ckpt.checkpoint.resume import choice
from tests.helpers.models import build_tiny, trained_state


class _Trainer:
    """The shape of ``DefaultTrainer.state_dict()``: iteration, hooks, the inner trainer."""

    def __init__(self, optimizer):
        self.optimizer, self.iter = optimizer, 0

    def state_dict(self):
        inner = {"iteration": self.iter, "optimizer": self.optimizer.state_dict()}
        return {"iteration": self.iter, "hooks": {}, "_trainer": inner}

    def load_state_dict(self, state):
        self.iter = state["iteration"]
        self.optimizer.load_state_dict(state["_trainer"]["optimizer"])


def _spy(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.fixture
def spies(monkeypatch):
    return {
        "choice": _spy(monkeypatch, choice, "choose_resume"),
        "policy": _spy(monkeypatch, pipeline, "check_policy"),
        "parts": _spy(monkeypatch, checkpointables, "select_trainer_state"),
        "report": _spy(monkeypatch, checkpointer, "write_report_json"),
    }


@pytest.fixture
def run_dir(tiny_cfg, tmp_path):
    """A folder holding one saved, tagged training checkpoint (iteration 5)."""
    model = build_tiny(tiny_cfg)
    trainer = _Trainer(trained_state(model))
    trainer.iter = 5
    EfficientDetectionCheckpointer(model, str(tmp_path), trainer=trainer).save("model_0000005")
    return tmp_path


def _fresh(tiny_cfg, out, **cfg):
    model = build_tiny(tiny_cfg, **{k: v for k, v in cfg.items() if k.startswith("MODEL.")})
    trainer = _Trainer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    config = tiny_cfg(**{"OUTPUT_DIR": str(out), **cfg})
    return EfficientDetectionCheckpointer(model, str(out), cfg=config, trainer=trainer), trainer


def test_a_resume_chooses_once_and_a_load_decides_once(tiny_cfg, run_dir, spies):
    ck, trainer = _fresh(tiny_cfg, run_dir, **{"CHECKPOINT.LOAD.CHECKPOINTABLES": ["optimizer"]})
    ck.resume_or_load("", resume=True)
    assert ck.last_report.checkpointables["trainer"] == "partial"
    assert trainer.iter == 0  # the iteration was not among the parts
    assert {k: len(v) for k, v in spies.items()} == {
        "choice": 1,
        "policy": 1,
        "parts": 1,
        "report": 1,
    }


def test_a_load_the_policy_stops_writes_its_report_once(tiny_cfg, run_dir, spies):
    ck, _ = _fresh(tiny_cfg, run_dir, **{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    with pytest.raises(CheckpointPolicyError):
        ck.load(str(run_dir / "model_0000005.pth"), on_mismatch="error")
    assert ck.last_report.policy["broken"]
    assert (len(spies["policy"]), len(spies["report"]), len(spies["choice"])) == (1, 1, 0)


def test_a_plan_reads_no_weights_and_writes_nothing(tiny_cfg, run_dir, spies):
    ck, _ = _fresh(tiny_cfg, run_dir, **{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    before = {k: v.clone() for k, v in ck.model.state_dict().items()}
    report = ck.plan(str(run_dir / "model_0000005.pth"))
    assert report.shape_mismatch and report.loaded
    assert all(torch.equal(before[k], v) for k, v in ck.model.state_dict().items())
    assert (len(spies["policy"]), len(spies["report"])) == (1, 0)
