"""plan_keys: every key decision of a load, on plain dictionaries (no model, no file)."""

import torch

from d2_efficient_ckpt.checkpoint.keys.plan import plan_keys
from d2_efficient_ckpt.checkpoint.keys.selection import KeySelector

F32, F16 = torch.float32, torch.float16


def _plan(ckpt, model, **kw):
    resizable = kw.pop("resizable", ())
    return plan_keys(ckpt, model, KeySelector(**kw), resizable)


def test_copy_missing_unexpected_and_shapes():
    ckpt = {"a.w": ((2, 3), F32), "b.w": ((4,), F32), "old.w": ((1,), F32), "c.w": ((5,), F16)}
    model = {"a.w": ((2, 3), F32), "b.w": ((5,), F32), "c.w": ((5,), F32), "d.w": ((1,), F32)}
    plan = _plan(ckpt, model)
    assert plan.copy == {"a.w": "a.w", "c.w": "c.w"}
    assert plan.unexpected == ["old.w"]
    assert plan.missing == ["d.w"]
    assert plan.shape_mismatch == [("b.w", (4,), (5,))]
    assert plan.dtype_changed == [("c.w", str(F16), str(F32))]


def test_wrapper_prefix_is_stripped_only_when_every_key_has_it():
    model = {"a": ((1,), F32), "b": ((1,), F32)}
    assert _plan({"module.a": ((1,), F32), "module.b": ((1,), F32)}, model).copy == {
        "a": "module.a",
        "b": "module.b",
    }
    partial = _plan({"module.a": ((1,), F32), "b": ((1,), F32)}, model)
    assert partial.unexpected == ["module.a"] and partial.missing == ["a"]


def test_rename_then_include_exclude():
    ckpt = {"body.layer1.w": ((1,), F32), "body.layer2.w": ((1,), F32), "head.w": ((1,), F32)}
    model = {
        "backbone.layer1.w": ((1,), F32),
        "backbone.layer2.w": ((1,), F32),
        "head.w": ((1,), F32),
    }
    plan = _plan(
        ckpt,
        model,
        rename=[(r"^body\.", "backbone.")],
        include=["backbone.*", "head.*"],
        exclude=["*.layer2.*"],
    )
    assert plan.copy == {"backbone.layer1.w": "body.layer1.w", "head.w": "head.w"}
    assert plan.skipped == {"backbone.layer2.w": "exclude"}
    assert [(a, b) for a, b, _ in plan.renamed] == [
        ("body.layer1.w", "backbone.layer1.w"),
        ("body.layer2.w", "backbone.layer2.w"),
    ]
    assert plan.missing == [] and plan.unexpected == []


def test_model_keys_outside_include_are_skipped_not_missing():
    plan = _plan({"a": ((1,), F32)}, {"a": ((1,), F32), "b": ((1,), F32)}, include=["a"])
    assert plan.skipped == {"b": "include"} and plan.missing == []


def test_lazy_and_resizable_keys_take_any_shape():
    ckpt = {"lazy.w": ((7, 3), F32), "obs.scale": ((16,), F32), "fixed": ((2,), F32)}
    model = {"lazy.w": (None, F32), "obs.scale": ((1,), F32), "fixed": ((3,), F32)}
    plan = _plan(ckpt, model, resizable={"obs.scale"})
    assert set(plan.copy) == {"lazy.w", "obs.scale"}
    assert plan.shape_mismatch == [("fixed", (2,), (3,))]
