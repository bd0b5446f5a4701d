"""Hostile module metadata and key names: the model's own tensors stay, errors stay ours.

``_metadata`` is the one part of a state dict that torch hands to the modules themselves;
key names end up in ``int()`` calls of the report and the explanations. Each test is a file
of the second red team's, rebuilt here from its mechanism, loaded into a tiny real Faster
R-CNN.
"""

import collections

import torch

from d2_efficient_ckpt import EfficientDetectionCheckpointer


def _save(path, state, metadata=None, **extra):
    if metadata is not None:
        state = collections.OrderedDict(state)
        state._metadata = metadata
    torch.save({"model": state, **extra}, path)
    return str(path)


def test_metadata_cannot_swap_the_models_parameters(saved, fresh, tmp_path):
    # assign_to_params_buffers would make BatchNorm take the file's (float64) tensors as its
    # parameters, behind the optimizer's back. Only {"version": n} reaches the modules.
    _, trained, _ = saved
    state = {k: v.double() if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    names = {k.rsplit(".", 1)[0] for k in state} | {""}
    meta = {n: {"version": 2, "assign_to_params_buffers": True} for n in names}
    path = _save(tmp_path / "assign.pth", state, meta)
    model = fresh()
    before = {n: (id(p), p.dtype) for n, p in model.named_parameters()}
    EfficientDetectionCheckpointer(model).load(path)
    assert {n: (id(p), p.dtype) for n, p in model.named_parameters()} == before
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]), k


def test_odd_metadata_and_flags_load_as_plain_files(saved, fresh, tmp_path):
    _, trained, _ = saved
    state = trained.state_dict()
    meta = {"": {"version": "x"}, "backbone": {"version": 10**5000}, "roi_heads": [1, 2]}
    path = _save(tmp_path / "odd.pth", state, meta, matching_heuristics=torch.ones(3))
    model = fresh()
    EfficientDetectionCheckpointer(model).load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_key_names_with_odd_digits_are_reported_not_raised(saved, fresh, tmp_path):
    _, trained, _ = saved
    state = dict(trained.state_dict())
    odd = {
        "roi_heads.extra.².weight": torch.ones(1),
        "roi_heads.extra.³.weight": torch.ones(1),
        "backbone.bottom_up.res2." + "7" * 5000 + ".conv1.weight": torch.ones(1),
        "backbone.bottom_up.res3." + "1" * 30 + ".conv1.weight": torch.ones(1),
    }
    path = _save(tmp_path / "names.pth", {**state, **odd})
    ck = EfficientDetectionCheckpointer(fresh())
    ck.load(path)
    assert set(ck.last_report.unexpected) == set(odd)
    assert "unexpected" in ck.last_report.format_table()
