"""Parity with fvcore's and detectron2's loading: tied modules, quantization observers, lazy
modules, module versions in ``_metadata``, Caffe2/pycls files and checkpointables.

Each test loads the same file with the stock ``DetectionCheckpointer`` and with ours and
compares what they report and what they load.
"""

import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from fvcore.common.checkpoint import _filter_reused_missing_keys
from torch.ao.quantization import PerChannelMinMaxObserver, default_per_channel_weight_fake_quant

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.restore.state_dict_rules import (
    count_params,
    default_checkpointables,
    filled_by_module,
    loaded_through_ties,
    rename_metadata,
    resizable_keys,
    tied_keys,
)
from tests.helpers.models import assert_same_weights, build_tiny, caffe2_name, trained_state


def stock_load(model, path, **kwargs):
    """Load with the stock class; return (missing after fvcore's filter, unexpected, shapes)."""
    ck = DetectionCheckpointer(model)
    seen = {}
    log = ck._log_incompatible_keys

    def capture(incompatible):
        seen["inc"] = incompatible
        log(incompatible)

    ck._log_incompatible_keys = capture
    out = ck.load(path, **kwargs)
    inc = seen["inc"]
    missing = sorted(_filter_reused_missing_keys(model, inc.missing_keys))
    return missing, sorted(inc.unexpected_keys), list(inc.incorrect_shapes), out


def ours_load(model, path, **kwargs):
    ck = EfficientDetectionCheckpointer(model)
    out = ck.load(path, **kwargs)
    return ck.last_report, out


# ------------------------------------------------------------------ tied (reused) modules
class _Reused(nn.Module):
    def __init__(self, tie: bool):
        super().__init__()
        self.a = nn.Linear(3, 4)
        if tie:
            self.b = self.a  # one module under two names
        self.c = nn.Linear(4, 4)
        self.d = nn.Linear(4, 4, bias=False)
        if tie:
            self.d.weight = self.c.weight  # one parameter in two modules


def test_tied_keys_finds_reused_modules_and_parameters():
    model = _Reused(tie=True)
    groups = tied_keys(model, model.state_dict())
    assert sorted(map(sorted, groups)) == [
        ["a.bias", "b.bias"],
        ["a.weight", "b.weight"],
        ["c.weight", "d.weight"],
    ]
    assert tied_keys(_Reused(tie=False)) == []


def test_loaded_through_ties_only_when_another_name_was_loaded():
    groups = [["a.weight", "b.weight"], ["a.bias", "b.bias"]]
    missing, tied = loaded_through_ties(["b.weight", "a.bias", "b.bias", "x"], ["a.weight"], groups)
    assert missing == ["a.bias", "b.bias", "x"]  # neither name of the bias was loaded
    assert tied == {"b.weight": "a.weight"}


def test_count_params_counts_a_tied_tensor_once():
    model = _Reused(tie=True)
    sd = model.state_dict()
    groups = tied_keys(model, sd)
    assert count_params(sd, sd, groups) == sum(p.numel() for p in model.parameters())


def test_reused_module_in_a_detectron2_model(tiny_cfg, tmp_path):
    src = build_tiny(tiny_cfg)
    DetectionCheckpointer(src, str(tmp_path)).save("plain")
    path = str(tmp_path / "plain.pth")

    def tied_model():
        model = build_tiny(tiny_cfg)
        model.box_head_alias = model.roi_heads.box_head  # reused under a second name
        return model

    stock = tied_model()
    missing, unexpected, _, _ = stock_load(stock, path)
    assert missing == [] and unexpected == []
    ours = tied_model()
    report, _ = ours_load(ours, path, on_mismatch="error")
    assert report.missing == []
    alias = [k for k in ours.state_dict() if k.startswith("box_head_alias.")]
    assert alias and sorted(report.tied) == sorted(alias)
    assert report.tied["box_head_alias.fc1.weight"] == "roi_heads.box_head.fc1.weight"
    once = sum(t.numel() for t in build_tiny(tiny_cfg).state_dict().values())
    assert report.num_params_model == once  # the reused head counted once
    assert report.num_params_loaded == report.num_params_model
    assert "100.0%" in report.format_table()
    tied_rows = [g for g in report.groups() if g.status == "tied"]
    assert [(g.pattern, g.count) for g in tied_rows] == [("box_head_alias.*", len(alias))]
    assert "same tensors as roi_heads.box_head.*" in report.format_table()
    assert_same_weights(ours, stock)


# ------------------------------------------------------------------ quantization observers
def _observed(tiny_cfg):
    model = build_tiny(tiny_cfg)
    conv = model.backbone.bottom_up.stem.conv1
    conv.weight_fake_quant = default_per_channel_weight_fake_quant()
    conv.observer = PerChannelMinMaxObserver(ch_axis=0)
    return model, conv


def test_resizable_keys_are_observer_buffers_and_lazy_tensors(tiny_cfg):
    model, _ = _observed(tiny_cfg)
    keys = resizable_keys(model, model.state_dict())
    stem = "backbone.bottom_up.stem.conv1."
    assert {stem + "weight_fake_quant.scale", stem + "observer.min_val"} <= keys
    assert stem + "weight" not in keys
    lazy = nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d())
    assert resizable_keys(lazy, lazy.state_dict()) == {
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
    }


def test_per_channel_observer_state_is_loaded(tiny_cfg, tmp_path):
    src, conv = _observed(tiny_cfg)
    conv.weight_fake_quant(conv.weight)
    conv.observer(conv.weight)
    DetectionCheckpointer(src, str(tmp_path)).save("qat")
    path = str(tmp_path / "qat.pth")
    stock, _ = _observed(tiny_cfg)
    assert stock_load(stock, path)[2] == []
    ours, fresh_conv = _observed(tiny_cfg)
    assert fresh_conv.weight_fake_quant.scale.shape == (1,)
    report, _ = ours_load(ours, path, on_mismatch="error")
    assert report.shape_mismatch == []
    channels = conv.weight.shape[0]
    assert fresh_conv.weight_fake_quant.scale.shape == (channels,)
    assert fresh_conv.observer.min_val.shape == (channels,)
    assert_same_weights(ours, src)
    assert_same_weights(ours, stock)


# ------------------------------------------------------------------ lazy modules
def test_lazy_parameters_and_buffers_take_the_checkpoint_shape(tmp_path):
    src = nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d())
    src(torch.randn(2, 3))
    torch.save({"model": src.state_dict()}, tmp_path / "lazy.pth")
    # fvcore only knows UninitializedParameter; the lazy BatchNorm's buffers make it fail.
    with pytest.raises(RuntimeError, match="uninitialized"):
        DetectionCheckpointer(nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d())).load(
            str(tmp_path / "lazy.pth")
        )
    ours = nn.Sequential(nn.LazyLinear(4), nn.LazyBatchNorm1d())
    report, _ = ours_load(ours, str(tmp_path / "lazy.pth"), on_mismatch="error")
    assert not report.has_mismatch
    assert_same_weights(ours, src)


# ------------------------------------------------------------------ _metadata versions
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.frozen = FrozenBatchNorm2d(3)


def _old_state(bn_version, frozen_version, prefix=""):
    """A state dict of ``_Net`` as an old writer left it: no BatchNorm step counter, no
    FrozenBatchNorm running statistics, with the given module versions."""
    sd = _Net().state_dict()
    sd["frozen.weight"].fill_(2.0)
    out = OrderedDict(
        (prefix + k, v)
        for k, v in sd.items()
        if not k.endswith(("num_batches_tracked", "frozen.running_mean", "frozen.running_var"))
    )
    meta = OrderedDict(
        (prefix + k if k else prefix.rstrip("."), dict(v)) for k, v in sd._metadata.items()
    )
    meta[prefix + "bn"]["version"] = bn_version
    meta[prefix + "frozen"]["version"] = frozen_version
    out._metadata = meta
    return out


def test_rename_metadata_follows_stripped_and_renamed_keys():
    meta = OrderedDict(
        [("", {"version": 1}), ("module", {"version": 1}), ("module.bn", {"version": 2})]
    )
    out = rename_metadata(meta, {"module.bn.weight": "bn.weight"})
    assert out["bn"] == {"version": 2}
    assert rename_metadata(meta, {"bn.weight": "bn.weight"}) is meta
    assert rename_metadata(None, {"a.b": "c.b"}) is None
    renamed = rename_metadata(OrderedDict([("old.bn", {"version": 1})]), {"old.bn.w": "new.bn.w"})
    assert renamed["new.bn"] == {"version": 1}


def test_filled_by_module_follows_torch_and_detectron2_versions():
    model = _Net()
    keys = ["bn.num_batches_tracked", "frozen.running_mean", "frozen.running_var", "conv.bias"]
    loaded = ["bn.weight", "frozen.weight"]
    old = {"bn": {"version": 1}, "frozen": {"version": 1}}
    assert sorted(filled_by_module(keys, model, old, loaded)) == keys[:3]
    new = {"bn": {"version": 2}, "frozen": {"version": 3}}
    assert filled_by_module(keys, model, new, loaded) == {}
    assert sorted(filled_by_module(keys, model, None, loaded)) == keys[:3]  # no versions
    # A module the checkpoint lacks altogether stays missing as a whole.
    assert sorted(filled_by_module(keys, model, None, ["bn.weight"])) == keys[:1]


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("versions", [(1, 1), (2, 3)])
def test_old_module_versions_match_stock(tmp_path, prefix, versions):
    path = str(tmp_path / "old.pth")
    torch.save({"model": _old_state(*versions, prefix=prefix)}, path)
    stock, ours = _Net(), _Net()
    missing, unexpected, _, _ = stock_load(stock, path)
    report, _ = ours_load(ours, path)
    assert sorted(report.missing) == missing
    assert sorted(report.unexpected) == unexpected
    if versions == (1, 1):
        assert missing == []
        assert sorted(report.filled) == [
            "bn.num_batches_tracked",
            "frozen.running_mean",
            "frozen.running_var",
        ]
    assert_same_weights(ours, stock)


def test_matching_heuristics_drop_module_versions_like_stock(tmp_path):
    """Name matching builds a new state dict without ``_metadata``: every module then loads
    as of no recorded version, in both loaders."""
    path = str(tmp_path / "new.pth")
    torch.save({"model": _old_state(2, 3)}, path)
    stock, ours = _Net(), _Net()
    missing, unexpected, _, _ = stock_load(stock, path + "?matching_heuristics=True")
    report, _ = ours_load(ours, path + "?matching_heuristics=True")
    assert sorted(report.missing) == missing == []
    assert sorted(report.filled) == [
        "bn.num_batches_tracked",
        "frozen.running_mean",
        "frozen.running_var",
    ]
    assert_same_weights(ours, stock)


def test_module_versions_follow_rename_rules(tmp_path):
    path = str(tmp_path / "old.pth")
    torch.save({"model": _old_state(1, 1, prefix="net.")}, path)
    report, _ = ours_load(_Net(), path, rename=[["^net\\.", ""]], on_mismatch="error")
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.filled) == [
        "bn.num_batches_tracked",
        "frozen.running_mean",
        "frozen.running_var",
    ]
    path = str(tmp_path / "new.pth")
    torch.save({"model": _old_state(2, 3, prefix="net.")}, path)
    report, _ = ours_load(_Net(), path, rename=[["^net\\.", ""]])
    assert report.filled == {}  # versions 2 and 3 have these keys: they are missing
    assert len(report.missing) == 3


# ------------------------------------------------------------------ Caffe2 and pycls files
def test_caffe2_backbone_without_running_stats_matches_stock(tiny_cfg, tmp_path):
    """Caffe2 ImageNet weights have no running statistics and no module versions: the
    FrozenBatchNorm layers fill them in, and neither loader calls them missing."""

    frozen = {"MODEL.RESNETS.NORM": "FrozenBN"}  # as in detectron2's ImageNet-backbone configs
    src = build_tiny(tiny_cfg, **frozen)
    prefix = "backbone.bottom_up."
    blobs = {}
    for k, v in src.state_dict().items():
        name = caffe2_name(k[len(prefix) :]) if k.startswith(prefix) else None
        if name:
            blobs[name] = v.numpy()
    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    path = str(tmp_path / "R-18.pkl")
    stock, ours = build_tiny(tiny_cfg, **frozen), build_tiny(tiny_cfg, **frozen)
    missing, unexpected, shapes, rest = stock_load(stock, path)
    report, ours_rest = ours_load(ours, path)
    assert sorted(ours_rest) == sorted(rest) == ["__author__", "matching_heuristics"]
    assert not any(k.endswith(("running_mean", "running_var")) for k in report.missing)
    assert sorted(report.missing) == missing
    assert sorted(report.unexpected) == unexpected
    assert report.shape_mismatch == shapes
    assert report.filled and all(k.startswith(prefix) for k in report.filled)
    # The statistics the FrozenBatchNorm layers set do not split the backbone's row.
    loaded_rows = [(g.status, g.pattern) for g in report.groups() if g.pattern.startswith(prefix)]
    assert loaded_rows == [("loaded", prefix + "*")]
    assert "incl. 40 set by the module: FrozenBatchNorm2d" in report.format_table()
    assert_same_weights(ours, stock)


def test_pycls_file_matches_stock(tiny_cfg, tmp_path):
    src = build_tiny(tiny_cfg, **{"MODEL.RESNETS.NORM": "BN"})
    state = OrderedDict(
        (k.replace("backbone.bottom_up.", ""), v) for k, v in src.state_dict().items()
    )
    torch.save({"model_state": state}, tmp_path / "net.pyth")
    path = str(tmp_path / "net.pyth")
    stock = build_tiny(tiny_cfg, **{"MODEL.RESNETS.NORM": "BN"})
    ours = build_tiny(tiny_cfg, **{"MODEL.RESNETS.NORM": "BN"})
    missing, unexpected, shapes, _ = stock_load(stock, path)
    report, _ = ours_load(ours, path)
    assert sorted(report.missing) == missing
    assert sorted(report.unexpected) == unexpected
    assert not any(k.endswith("num_batches_tracked") for k in report.missing)
    assert_same_weights(ours, stock)


# ------------------------------------------------------------------ checkpointables
def test_checkpointables_edge_cases_match_stock(tiny_cfg, tmp_path):
    """Registered but absent from the file, present but not asked for, asked for but not
    registered, and entries nobody registered: the same state restored and the same entries
    returned as by the stock class."""
    src = build_tiny(tiny_cfg)
    opt = trained_state(src)
    DetectionCheckpointer(src, str(tmp_path), optimizer=opt).save("m", iteration=4, note=3)
    path = str(tmp_path / "m.pth")

    def run(cls, names):
        model = build_tiny(tiny_cfg)
        new_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(new_opt, 1)  # not in the file
        ck = cls(model, str(tmp_path), optimizer=new_opt, scheduler=sched)
        return ck.load(path, checkpointables=names), new_opt

    for names in (None, [], ["optimizer"], ["scheduler"], ["optimizer", "scheduler"]):
        rest_a, opt_a = run(DetectionCheckpointer, names)
        rest_b, opt_b = run(EfficientDetectionCheckpointer, names)
        assert sorted(rest_a) == sorted(rest_b), names
        assert rest_b["iteration"] == 4 and rest_b["note"] == 3
        state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sorted(state_a) == sorted(state_b), names
        for i in state_a:
            assert torch.equal(state_a[i]["momentum_buffer"], state_b[i]["momentum_buffer"])


class _Counter:
    """A checkpointable of the user's own, as an EMA hook would register."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": torch.tensor(self.value)}

    def load_state_dict(self, state):
        self.value = int(state["value"])


def test_default_checkpointables():
    parts = ["optimizer", "scheduler", "iteration", "hooks", "scaler"]
    registered = ["trainer", "ema", "optimizer"]
    assert default_checkpointables(registered, parts, parts) == parts + ["ema"]
    assert default_checkpointables(registered, ["iteration"], parts) == ["iteration"]


def test_registered_checkpointables_are_restored_like_stock(tiny_cfg, tmp_path):
    src = build_tiny(tiny_cfg)
    DetectionCheckpointer(src, str(tmp_path), ema=_Counter(7)).save("m")
    path = str(tmp_path / "m.pth")
    stock, ours = _Counter(0), _Counter(0)
    DetectionCheckpointer(build_tiny(tiny_cfg), str(tmp_path), ema=stock).resume_or_load("")
    ck = EfficientDetectionCheckpointer(build_tiny(tiny_cfg), str(tmp_path), ema=ours)
    rest = ck.resume_or_load("")
    assert stock.value == ours.value == 7 and "ema" not in rest
    assert ck.last_report.checkpointables["ema"] == "restored"
    # Loading weights only, and a list of the user's own, leave it alone.
    ours = _Counter(0)
    ck = EfficientDetectionCheckpointer(build_tiny(tiny_cfg), str(tmp_path), ema=ours)
    ck.resume_or_load(path, resume=False)
    ck.load(path, checkpointables=["iteration"])
    assert ours.value == 0
