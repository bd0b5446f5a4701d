"""Every optimizer and scheduler state comes back as saved: same types, same values.

A resume restores the optimizer and scheduler of a config through the same path as this
test (save, then ``resume_or_load``), in both formats. The check is deep: a ``Counter`` (the
milestones of ``MultiStepLR``) must come back as a ``Counter`` with the same counts, a tuple
as a tuple, every tensor equal.
"""

import collections

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_lr_scheduler, build_optimizer
from torch.optim import lr_scheduler as sched

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.config import add_efficient_ckpt_config
from tests.helpers.models import assert_same_state

OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.01),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.01),
    "Adadelta": lambda p: torch.optim.Adadelta(p),
    "Adamax": lambda p: torch.optim.Adamax(p),
    "NAdam": lambda p: torch.optim.NAdam(p),
    "RAdam": lambda p: torch.optim.RAdam(p),
    "ASGD": lambda p: torch.optim.ASGD(p),
    "Rprop": lambda p: torch.optim.Rprop(p),
}

SCHEDULERS = {
    "StepLR": lambda o: sched.StepLR(o, 2),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, [2, 5, 5]),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, 0.9),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, 10),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, 3),
    "LinearLR": lambda o: sched.LinearLR(o),
    "ConstantLR": lambda o: sched.ConstantLR(o),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, 10),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.1, total_steps=20),
    "CyclicLR": lambda o: sched.CyclicLR(o, 0.01, 0.1, step_size_up=2),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.LinearLR(o), sched.MultiStepLR(o, [4, 6])], milestones=[2]
    ),
}

# detectron2's own schedulers, as a config builds them (SOLVER.LR_SCHEDULER_NAME).
D2_SCHEDULERS = ["WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR"]


def _cfg(fmt):
    cfg = add_efficient_ckpt_config(get_cfg())
    cfg.CHECKPOINT.SAVE.FORMAT = fmt
    return cfg


def _round_trip(tmp_path, fmt, make_opt, make_sched):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = make_opt(model.parameters())
    scheduler = make_sched(opt)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
        if isinstance(scheduler, sched.ReduceLROnPlateau):
            scheduler.step(1.0)
        else:
            scheduler.step()
    ck = EfficientDetectionCheckpointer(
        model, str(tmp_path), cfg=_cfg(fmt), optimizer=opt, scheduler=scheduler
    )
    ck.save("model_0000002", iteration=2)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt2 = make_opt(fresh.parameters())
    sched2 = make_sched(opt2)
    again = EfficientDetectionCheckpointer(
        fresh, str(tmp_path), cfg=_cfg(fmt), optimizer=opt2, scheduler=sched2
    )
    assert again.resume_or_load("", resume=True)["iteration"] == 2
    assert_same_state(opt.state_dict(), opt2.state_dict(), "optimizer")
    assert_same_state(scheduler.state_dict(), sched2.state_dict(), "scheduler")


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_torch_optimizer_comes_back(tmp_path, fmt, name):
    _round_trip(tmp_path, fmt, OPTIMIZERS[name], SCHEDULERS["StepLR"])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_torch_scheduler_comes_back(tmp_path, fmt, name):
    _round_trip(tmp_path, fmt, OPTIMIZERS["SGD"], SCHEDULERS[name])


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("name", D2_SCHEDULERS)
def test_every_detectron2_scheduler_a_config_builds_comes_back(tmp_path, fmt, name):
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = name
    cfg.SOLVER.MAX_ITER = 20
    cfg.SOLVER.STEPS = (5, 10)
    cfg.SOLVER.WARMUP_ITERS = 3

    def make_opt(params):
        return build_optimizer(cfg, torch.nn.ModuleList([_Holder(params)]))

    _round_trip(tmp_path, fmt, make_opt, lambda o: build_lr_scheduler(cfg, o))


class _Holder(torch.nn.Module):
    """A module that owns the given parameters, as build_optimizer expects a model."""

    def __init__(self, params):
        super().__init__()
        self.params = torch.nn.ParameterList(list(params))


def test_counter_restores_as_a_counter():
    # The unit under the round trips: a Counter survives the restore walk as a Counter.
    from d2_efficient_ckpt.checkpoint.restore.state import materialize

    out = materialize({"milestones": collections.Counter({2: 1, 5: 2})}, torch.device("cpu"))
    assert type(out["milestones"]) is collections.Counter
    assert out["milestones"] == collections.Counter({2: 1, 5: 2})
    dd = collections.defaultdict(list, {1: [torch.ones(2)]})
    back = materialize({"d": dd}, torch.device("cpu"))["d"]
    assert type(back) is collections.defaultdict and back.default_factory is list
    assert torch.equal(back[1][0], torch.ones(2))
