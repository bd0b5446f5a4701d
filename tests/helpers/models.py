"""Tiny real models with non-trivial state, and strict comparisons of saved and restored state."""

import torch
from detectron2.modeling import build_model


def build_tiny(tiny_cfg, **overrides):
    torch.manual_seed(0)
    return build_model(tiny_cfg(**overrides))


def trained_state(model):
    """One SGD-momentum step with random gradients: weights and momentum both non-trivial."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return opt


def step_trainer_state(trainer, scheduler_steps=5, seed=1):
    """A Trainer's optimizer stepped once with random gradients, and its scheduler
    ``scheduler_steps`` times: momentum and LR state that are not the initial ones."""
    torch.manual_seed(seed)
    for p in trainer.model.parameters():
        p.grad = torch.randn_like(p)
    trainer.optimizer.step()
    for _ in range(scheduler_steps):
        trainer.scheduler.step()


def assert_same_weights(a, b, keys=None):
    sa, sb = a.state_dict(), b.state_dict()
    for k in keys if keys is not None else sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_same_state(a, b, path="state", *, exact_types=True):
    """Deep equality of saved and restored state: same types and key order at every level,
    equal tensors of the same dtype, the same ``_metadata``.

    With ``exact_types=False`` containers are compared by their items only (a dict against
    an ``OrderedDict`` is fine) and tensors on the CPU: saved state against live state.
    """
    if exact_types:
        assert type(a) is type(b), f"{path}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b) if exact_types else torch.equal(a.cpu(), b.cpu()), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        if exact_types:
            assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}/{k}", exact_types=exact_types)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}/{i}", exact_types=exact_types)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_values(a, b, path="state"):
    """:func:`assert_same_state` without the container types: saved against live state."""
    assert_same_state(a, b, path, exact_types=False)


def caffe2_name(key):
    """detectron2 ResNet key -> Caffe2/Detectron1 blob name (conv weights and norm affine)."""
    parts = key.split(".")
    if parts[0] == "stem":
        base, rest = "conv1", parts[2:]
        bn = "res_conv1_bn"
    else:
        conv = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}
        branch = "branch1" if parts[2] == "shortcut" else conv[parts[2]]
        base = f"{parts[0]}_{parts[1]}_{branch}"
        bn, rest = base + "_bn", parts[3:]
    if rest == ["weight"]:
        return base + "_w"
    return {("norm", "weight"): bn + "_s", ("norm", "bias"): bn + "_b"}.get(tuple(rest))
