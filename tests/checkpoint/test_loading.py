"""Lazy, selective, safe loading into real detectron2 models."""

import logging
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from safetensors.torch import save_file

from d2_efficient_ckpt import EfficientDetectionCheckpointer, build_checkpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError, UnsafeCheckpointError
from d2_efficient_ckpt.checkpoint.formats.safetensors import SafetensorsStateDict
from tests.helpers.models import assert_same_weights, caffe2_name, trained_state


def test_model_only_load_matches_stock(saved, fresh):
    path, model, _ = saved
    ours, stock = fresh(), fresh()
    ck = EfficientDetectionCheckpointer(ours)
    extra = ck.load(path, checkpointables=[])
    stock_extra = DetectionCheckpointer(stock).load(path, checkpointables=[])
    assert_same_weights(ours, model)
    assert_same_weights(ours, stock)
    assert set(extra) == set(stock_extra) == {"optimizer", "iteration"}
    assert extra["iteration"] == 9
    r = ck.last_report
    assert r.format == "torch-zip" and not r.missing and not r.unexpected
    assert len(r.loaded) == len(model.state_dict())


def test_copies_into_existing_parameters(saved, fresh):
    path, model, _ = saved
    ours = fresh()
    ptrs = {k: v.data_ptr() for k, v in ours.state_dict().items()}
    EfficientDetectionCheckpointer(ours).load(path)
    # Same storage as before: weights were copied in place, the file's pages are not kept.
    assert ptrs == {k: v.data_ptr() for k, v in ours.state_dict().items()}
    assert_same_weights(ours, model)


def test_full_resume_restores_optimizer_off_the_file(saved, fresh, tmp_path):
    path, model, opt = saved
    ours = fresh()
    opt2 = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    ck = EfficientDetectionCheckpointer(ours, str(tmp_path), optimizer=opt2)
    extra = ck.resume_or_load("ignored.pth", resume=True)
    assert extra == {"iteration": 9}
    assert ck.last_report.checkpointables == {"optimizer": "restored"}
    # Overwrite the file: state still backed by it would change.
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(os.urandom(size))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert len(s1) == len(s2) > 0
    for i in s1:
        assert torch.equal(s1[i]["momentum_buffer"], s2[i]["momentum_buffer"])


def test_include_exclude_rename(saved, fresh):
    path, model, _ = saved
    ours = fresh()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ck = EfficientDetectionCheckpointer(ours)
    ck.load(path, include=["backbone.*", "proposal_generator.*"], exclude=["backbone.fpn_*"])
    r = ck.last_report
    sd = ours.state_dict()
    for k in sd:
        if k.startswith("backbone.bottom_up") or k.startswith("proposal_generator"):
            assert torch.equal(sd[k], model.state_dict()[k]), k
            assert k in r.loaded
        else:
            assert torch.equal(sd[k], before[k]), k
            assert r.skipped[k] == ("exclude" if k.startswith("backbone.fpn_") else "include")
    assert not r.missing and not r.unexpected


def test_rename_rules_apply_in_order(tmp_path, saved, fresh):
    path, model, _ = saved
    sd = {("old." + k): v for k, v in model.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "renamed.pth")
    ours = fresh()
    ck = EfficientDetectionCheckpointer(ours)
    ck.load(str(tmp_path / "renamed.pth"), rename=[[r"^old\.", "tmp."], [r"^tmp\.", ""]])
    assert_same_weights(ours, model)
    ck_key, key, rules = ck.last_report.renamed[0]
    assert ck_key.startswith("old.") and not key.startswith(("old.", "tmp."))
    assert rules == [r"^old\.", r"^tmp\."]


def test_config_options_and_keyword_override(saved, fresh, tiny_cfg):
    path, model, _ = saved
    cfg = tiny_cfg()
    cfg.CHECKPOINT.LOAD.EXCLUDE = ["roi_heads.*"]
    ours = fresh()
    ck = build_checkpointer(cfg, ours)
    ck.load(path)
    assert all(k.startswith("roi_heads") for k in ck.last_report.skipped)
    assert ck.last_report.skipped
    ck.load(path, exclude=[])
    assert not ck.last_report.skipped
    assert_same_weights(ours, model)


def test_excluded_keys_never_read(tmp_path, saved, fresh, monkeypatch):
    path, model, _ = saved
    st = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st)
    read = []
    orig = SafetensorsStateDict.__getitem__
    monkeypatch.setattr(
        SafetensorsStateDict, "__getitem__", lambda s, k: read.append(k) or orig(s, k)
    )
    ours = fresh()
    EfficientDetectionCheckpointer(ours).load(st, exclude=["roi_heads.*"])
    assert read and not [k for k in read if k.startswith("roi_heads")]
    assert_same_weights(ours, model, [k for k in read])


def test_safetensors_round_trip(tmp_path, saved, fresh):
    path, model, _ = saved
    st = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st)
    ours = fresh()
    ck = EfficientDetectionCheckpointer(ours)
    assert ck.load(st) == {}
    assert ck.last_report.format == "safetensors"
    assert_same_weights(ours, model)


def test_legacy_file_loads_eagerly_with_log(tmp_path, saved, fresh, caplog):
    path, model, _ = saved
    legacy = str(tmp_path / "legacy.pth")
    torch.save({"model": model.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    ours = fresh()
    with caplog.at_level(logging.INFO):
        EfficientDetectionCheckpointer(ours).load(legacy)
    assert "legacy" in caplog.text and "eagerly" in caplog.text
    assert_same_weights(ours, model)


def test_mmap_off_still_loads(saved, fresh, tiny_cfg):
    path, model, _ = saved
    cfg = tiny_cfg()
    cfg.CHECKPOINT.LOAD.MMAP = False
    ours = fresh()
    build_checkpointer(cfg, ours).load(path)
    assert_same_weights(ours, model)


def test_module_prefix_stripped(tmp_path, saved, fresh):
    path, model, _ = saved
    torch.save(
        {"model": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "ddp.pth"
    )
    ours = fresh()
    ck = EfficientDetectionCheckpointer(ours)
    ck.load(str(tmp_path / "ddp.pth"))
    assert not ck.last_report.missing and not ck.last_report.unexpected
    assert_same_weights(ours, model)


def test_bare_state_dict_and_matching_heuristics_query(tmp_path, saved, fresh):
    path, model, _ = saved
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    ours = fresh()
    EfficientDetectionCheckpointer(ours).load(
        str(tmp_path / "bare.pth") + "?matching_heuristics=True"
    )
    assert_same_weights(ours, model)
    with pytest.raises(ValueError, match="Unsupported query"):
        EfficientDetectionCheckpointer(fresh()).load(str(tmp_path / "bare.pth") + "?foo=1")


def test_old_cell_anchors_not_reported(tmp_path, saved, fresh):
    path, model, _ = saved
    sd = dict(model.state_dict())
    sd["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    torch.save({"model": sd}, tmp_path / "old.pth")
    ck = EfficientDetectionCheckpointer(fresh())
    ck.load(str(tmp_path / "old.pth"))
    assert ck.last_report.missing == [] and ck.last_report.unexpected == []


def test_shape_mismatch_skipped_like_stock(saved, fresh):
    path, model, _ = saved
    ours = fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    stock = fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    ck = EfficientDetectionCheckpointer(ours)
    ck.load(path)
    DetectionCheckpointer(stock).load(path)
    assert_same_weights(ours, stock)
    bad = {k for k, _, _ in ck.last_report.shape_mismatch}
    assert bad == {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    }


def test_dtype_change_is_recorded(tmp_path, saved, fresh):
    path, model, _ = saved
    torch.save(
        {
            "model": {
                k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()
            }
        },
        tmp_path / "h.pth",
    )
    ours = fresh()
    ck = EfficientDetectionCheckpointer(ours)
    ck.load(str(tmp_path / "h.pth"))
    assert ck.last_report.dtype_changed
    k = ck.last_report.dtype_changed[0][0]
    assert ours.state_dict()[k].dtype == torch.float32
    assert torch.allclose(ours.state_dict()[k], model.state_dict()[k].half().float())


def test_refuses_unsafe_pickle_and_names_opt_in(tmp_path, saved, fresh):
    import argparse

    path, model, _ = saved
    bad = str(tmp_path / "args.pth")
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1)}, bad)
    with pytest.raises(UnsafeCheckpointError) as e:
        EfficientDetectionCheckpointer(fresh()).load(bad)
    assert "argparse.Namespace" in str(e.value) and "WEIGHTS_ONLY False" in str(e.value)
    assert bad in str(e.value)
    ours = fresh()
    extra = EfficientDetectionCheckpointer(ours).load(bad, weights_only=False)
    assert extra["args"].lr == 1
    assert_same_weights(ours, model)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pkl_restricted_unpickler(tmp_path, saved, fresh, monkeypatch):
    import pickle

    path, model, _ = saved
    monkeypatch.chdir(tmp_path)
    zoo = {"model": {k: v.numpy() for k, v in model.state_dict().items()}, "__author__": "tests"}
    with open("zoo.pkl", "wb") as f:
        pickle.dump(zoo, f)
    ours = fresh()
    EfficientDetectionCheckpointer(ours).load(str(tmp_path / "zoo.pkl"))
    assert_same_weights(ours, model)
    with open("evil.pkl", "wb") as f:
        pickle.dump({"model": {}, "__author__": _Boom()}, f)
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        EfficientDetectionCheckpointer(fresh()).load(str(tmp_path / "evil.pkl"))
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_pyth_pycls_file(tmp_path, saved, fresh):
    path, model, _ = saved
    torch.save({"model_state": model.state_dict()}, tmp_path / "m.pyth")
    ours = fresh()
    EfficientDetectionCheckpointer(ours).load(str(tmp_path / "m.pyth"))
    assert_same_weights(ours, model)


def test_last_checkpoint_and_resume_semantics(tmp_path, saved, fresh):
    path, model, opt = saved
    ours = fresh()
    opt2 = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    ck = EfficientDetectionCheckpointer(ours, str(tmp_path), optimizer=opt2)
    assert ck.has_checkpoint() and ck.get_checkpoint_file() == path
    # resume=False: weights from the given path, no checkpointables.
    assert set(ck.resume_or_load(path, resume=False)) == {"optimizer", "iteration"}
    assert opt2.state_dict()["state"] == {}
    trained_state(ours)
    ck.save("model_0000019", iteration=19)
    assert ck.get_checkpoint_file().endswith("model_0000019.pth")


def test_empty_path_loads_nothing(fresh):
    assert EfficientDetectionCheckpointer(fresh()).load("") == {}


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "does not exist"),
        (b"", "empty"),
        (b"just some text, not a checkpoint", "not a checkpoint format"),
    ],
)
def test_bad_files(tmp_path, fresh, content, match):
    p = tmp_path / "bad.pth"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match=match) as e:
        EfficientDetectionCheckpointer(fresh()).load(str(p))
    assert str(p) in str(e.value)


def test_truncated_file(tmp_path, saved, fresh):
    path, _, _ = saved
    data = open(path, "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated") as e:
        EfficientDetectionCheckpointer(fresh()).load(str(cut))
    assert str(cut) in str(e.value)
    st = tmp_path / "cut.safetensors"
    save_file({"a": torch.ones(1000)}, str(tmp_path / "full.safetensors"))
    st.write_bytes((tmp_path / "full.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        EfficientDetectionCheckpointer(fresh()).load(str(st))


def test_no_model_entry(tmp_path, fresh):
    p = tmp_path / "opt_only.pth"
    torch.save({"optimizer": {"state": {}}, "iteration": 3}, p)
    with pytest.raises(CheckpointFormatError, match="no 'model' entry") as e:
        EfficientDetectionCheckpointer(fresh()).load(str(p))
    assert "optimizer" in str(e.value)


def test_bad_map_location(saved, fresh):
    path, _, _ = saved
    with pytest.raises(ValueError, match="MAP_LOCATION"):
        EfficientDetectionCheckpointer(fresh()).load(path, map_location="gpu7")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: GPU path not tested")
def test_cuda_restore(saved, fresh):
    path, model, opt = saved
    ours = fresh().to("cuda")
    opt2 = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    ck = EfficientDetectionCheckpointer(ours, optimizer=opt2)
    ck.load(path)
    assert all(v.is_cuda for v in ours.state_dict().values())
    for st in opt2.state_dict()["state"].values():
        assert st["momentum_buffer"].is_cuda
    for k, v in model.state_dict().items():
        assert torch.equal(ours.state_dict()[k].cpu(), v), k


def test_failure_midway_says_model_is_partly_loaded(tmp_path):
    import torch.nn as nn

    from d2_efficient_ckpt.checkpoint.errors import PartialLoadError

    class Refuses(nn.Linear):
        def _load_from_state_dict(self, *args, **kwargs):
            raise RuntimeError("disk went away")

    src = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    torch.save({"model": src.state_dict()}, tmp_path / "m.pth")
    dst = nn.Sequential(nn.Linear(3, 3), Refuses(3, 3))
    with pytest.raises(PartialLoadError, match="partly loaded") as e:
        EfficientDetectionCheckpointer(dst).load(str(tmp_path / "m.pth"))
    assert "disk went away" in str(e.value)
    # The first layer was written before the failure: exactly what the message warns about.
    assert torch.equal(dst[0].weight, src[0].weight)


def test_caffe2_zoo_pkl_matches_stock(tmp_path, saved, fresh):
    import pickle

    path, model, _ = saved
    prefix = "backbone.bottom_up."
    blobs = {}
    for k, v in model.state_dict().items():
        name = caffe2_name(k[len(prefix) :]) if k.startswith(prefix) else None
        if name:
            blobs[name] = v.numpy()
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)  # dropped, as detectron2 does
    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    ours, stock = fresh(), fresh()
    ck = EfficientDetectionCheckpointer(ours)
    ck.load(str(tmp_path / "R-18.pkl"))
    DetectionCheckpointer(stock).load(str(tmp_path / "R-18.pkl"))
    assert ck.last_report.format == "pkl-caffe2"
    assert_same_weights(ours, stock)
    converted = [k for k in ck.last_report.loaded if k.startswith(prefix)]
    assert len(converted) == len(blobs) - 1
    assert_same_weights(ours, model, converted)
