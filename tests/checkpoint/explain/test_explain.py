"""Explanations of architecture changes, on real detectron2 models built from configs."""

import fnmatch
import os
import uuid

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from d2_efficient_ckpt import EfficientDetectionCheckpointer, add_efficient_ckpt_config
from d2_efficient_ckpt.checkpoint.explain.base import explain
from tests.helpers.config import REPO, apply_overrides, tiny_frcnn_cfg

R50_CONFIG = os.path.join(REPO, "configs", "faster_rcnn_R50_FPN_custom.yaml")
PREDICTOR = {
    "roi_heads.box_predictor.cls_score.weight",
    "roi_heads.box_predictor.cls_score.bias",
    "roi_heads.box_predictor.bbox_pred.weight",
    "roi_heads.box_predictor.bbox_pred.bias",
}


def r50_cfg(**overrides):
    """The R50-FPN config of configs/, built on the CPU (only built, never trained)."""
    cfg = add_efficient_ckpt_config(get_cfg())
    cfg.merge_from_file(R50_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    return apply_overrides(cfg, overrides)


def build(make_cfg, **overrides):
    torch.manual_seed(0)
    cfg = make_cfg(**overrides)
    return cfg, build_model(cfg)


def load(tmp_path, state, model, cfg=None, **options):
    """Save ``state`` as a checkpoint and load it into ``model``; returns the checkpointer."""
    path = tmp_path / f"ck_{uuid.uuid4().hex[:6]}.pth"
    torch.save({"model": state}, path)
    if cfg is not None:
        cfg.OUTPUT_DIR = str(tmp_path)
    ck = EfficientDetectionCheckpointer(model, cfg=cfg)
    ck.load(str(path), checkpointables=[], **options)
    return ck


def by_kind(report):
    return {e.kind: e for e in report.explanations}


@pytest.fixture
def dataset():
    """Factory: a registered dataset name with the given thing_classes."""
    names = []

    def make(classes):
        name = f"explain_{uuid.uuid4().hex[:8]}"
        MetadataCatalog.get(name).thing_classes = list(classes)
        names.append(name)
        return name

    yield make
    for name in names:
        MetadataCatalog.pop(name, None)


def test_num_classes_80_to_3_agrees_with_dataset(tmp_path, dataset):
    _, coco = build(tiny_frcnn_cfg, **{"MODEL.ROI_HEADS.NUM_CLASSES": 80})
    name = dataset(["cat", "dog", "bird"])
    cfg, model = build(
        tiny_frcnn_cfg, **{"MODEL.ROI_HEADS.NUM_CLASSES": 3, "DATASETS.TRAIN": (name,)}
    )
    report = load(tmp_path, coco.state_dict(), model, cfg).last_report
    exp = by_kind(report)["num_classes"]
    assert exp.title == "Number of classes changed: 80 -> 3 classes"
    assert exp.severity == "info" and "agrees" in exp.detail and name in exp.detail
    assert "COCO" in exp.detail and set(exp.covered) == PREDICTOR
    assert exp.keys == ["roi_heads.box_predictor.*"]
    # The suggested fix makes the load clean.
    fixed = load(
        tmp_path, coco.state_dict(), model, cfg, exclude=exp.config["CHECKPOINT.LOAD.EXCLUDE"]
    )
    assert not fixed.last_report.has_mismatch


def test_wrong_num_classes_at_inference_is_flagged(tmp_path, dataset):
    _, finetuned = build(tiny_frcnn_cfg, **{"MODEL.ROI_HEADS.NUM_CLASSES": 3})
    name = dataset(["cat", "dog", "bird"])
    cfg, model = build(
        tiny_frcnn_cfg, **{"MODEL.ROI_HEADS.NUM_CLASSES": 80, "DATASETS.TRAIN": (name,)}
    )
    report = load(tmp_path, finetuned.state_dict(), model, cfg).last_report
    exp = report.explanations[0]
    assert exp.kind == "num_classes" and exp.severity == "error"
    assert "3 -> 80 classes" in exp.title and "probably wrong" in exp.detail
    assert exp.config == {"MODEL.ROI_HEADS.NUM_CLASSES": 3}


def test_num_classes_without_config_or_dataset(tmp_path):
    _, coco = build(tiny_frcnn_cfg, **{"MODEL.ROI_HEADS.NUM_CLASSES": 80})
    _, model = build(tiny_frcnn_cfg)
    exp = by_kind(load(tmp_path, coco.state_dict(), model).last_report)["num_classes"]
    assert exp.severity == "warning" and "MODEL.ROI_HEADS.NUM_CLASSES 80" in exp.fix


def test_class_agnostic_box_regression_switched_on(tmp_path):
    _, per_class = build(tiny_frcnn_cfg)
    cfg, model = build(tiny_frcnn_cfg, **{"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True})
    report = load(tmp_path, per_class.state_dict(), model, cfg).last_report
    assert [e.kind for e in report.explanations] == ["class_agnostic_bbox_reg"]
    exp = report.explanations[0]
    assert exp.title == "Box regression switched from per-class to agnostic"
    assert "12 outputs in the checkpoint (4 per class x 3 classes)" in exp.detail
    assert "CLS_AGNOSTIC_BBOX_REG = True" in exp.detail
    assert set(exp.covered) == {k for k in PREDICTOR if "bbox_pred" in k}


def test_anchor_aspect_ratios_3_to_5(tmp_path):
    _, three = build(tiny_frcnn_cfg)
    ratios = [[0.25, 0.5, 1.0, 2.0, 4.0]]
    cfg, model = build(tiny_frcnn_cfg, **{"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": ratios})
    report = load(tmp_path, three.state_dict(), model, cfg).last_report
    exp = by_kind(report)["anchors"]
    assert exp.title == "Anchors per location changed: 3 -> 5 (RPN head)"
    assert "5 x 1 = 5 anchors per location" in exp.detail
    assert "3 aspect ratios per level" in exp.fix
    assert len(exp.covered) == 4 and all("rpn_head" in k for k in exp.covered)


def test_r50_to_r101(tmp_path):
    _, r50 = build(r50_cfg)
    cfg, r101 = build(r50_cfg, **{"MODEL.RESNETS.DEPTH": 101})
    report = load(tmp_path, r50.state_dict(), r101, cfg).last_report
    exp = by_kind(report)["backbone_depth"]
    assert exp.title == "Backbone depth changed: R50 -> R101"
    assert "res4 has 6 blocks in the checkpoint and 23 in the model" in exp.detail
    assert exp.keys == ["backbone.bottom_up.res4.{6..22}.*"]
    assert exp.config == {"MODEL.RESNETS.DEPTH": 50}
    assert len(exp.covered) == len(report.missing) == 255
    groups = [g for g in report.groups() if g.status == "missing"]
    assert [(g.pattern, g.count) for g in groups] == [("backbone.bottom_up.res4.{6..22}.*", 255)]


def test_state_dict_wrapped_in_module(tmp_path):
    _, model = build(tiny_frcnn_cfg)
    wrapped = {"module." + k: v for k, v in model.state_dict().items()}
    _, fresh = build(tiny_frcnn_cfg)
    report = load(tmp_path, wrapped, fresh).last_report
    assert not report.has_mismatch  # the loader strips a prefix that every key has
    exps = explain(report, ckpt_keys=list(wrapped))
    assert [(e.kind, e.severity) for e in exps] == [("wrapper_prefix", "info")]
    # DDP around a torch.compile'd model: 'module.' is stripped, '_orig_mod.' remains.
    compiled = {"module._orig_mod." + k: v for k, v in model.state_dict().items()}
    report = load(tmp_path, compiled, fresh).last_report
    exp = by_kind(report)["wrapper_prefix"]
    assert exp.title == "Wrapper prefix '_orig_mod.' on checkpoint keys"
    assert "torch.compile" in exp.detail
    fixed = load(tmp_path, compiled, fresh, rename=exp.config["CHECKPOINT.LOAD.RENAME"])
    assert not fixed.last_report.has_mismatch


def test_torchvision_resnet50_names(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None).state_dict()
    cfg, model = build(r50_cfg)
    report = load(tmp_path, tv, model, cfg).last_report
    exp = by_kind(report)["torchvision_naming"]
    assert "320 checkpoint keys use torchvision's ResNet names" in exp.detail
    assert "265 of them land on missing model keys" in exp.detail
    assert "STRIDE_IN_1X1 True" in exp.detail  # the config does not fit torchvision weights
    assert exp.config["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    rename = exp.config["CHECKPOINT.LOAD.RENAME"]
    report = load(tmp_path, tv, model, cfg, rename=rename).last_report
    sd = model.state_dict()
    assert torch.equal(sd["backbone.bottom_up.stem.conv1.weight"], tv["conv1.weight"])
    assert torch.equal(
        sd["backbone.bottom_up.res2.0.shortcut.norm.running_var"],
        tv["layer1.0.downsample.1.running_var"],
    )
    assert torch.equal(sd["backbone.bottom_up.res5.2.conv3.weight"], tv["layer4.2.conv3.weight"])
    assert len([k for k in report.loaded if k.startswith("backbone.bottom_up.")]) == 265
    kinds = by_kind(report)
    assert len(kinds["batchnorm_counters"].covered) == 53
    assert set(report.unexpected) - set(kinds["batchnorm_counters"].covered) == {
        "fc.weight",
        "fc.bias",
    }
    assert "backbone_only" in kinds


def test_fpn_and_box_head_width(tmp_path):
    _, base = build(tiny_frcnn_cfg)
    cfg, narrow = build(tiny_frcnn_cfg, **{"MODEL.FPN.OUT_CHANNELS": 16})
    report = load(tmp_path, base.state_dict(), narrow, cfg).last_report
    assert [e.kind for e in report.explanations] == ["fpn_width"]
    exp = report.explanations[0]
    assert exp.title == "FPN width changed: 32 -> 16 channels" and exp.config == {
        "MODEL.FPN.OUT_CHANNELS": 32
    }
    assert set(exp.covered) == {k for k, _, _ in report.shape_mismatch}  # RPN and fc1 too
    cfg, thin = build(tiny_frcnn_cfg, **{"MODEL.ROI_BOX_HEAD.FC_DIM": 32})
    report = load(tmp_path, base.state_dict(), thin, cfg).last_report
    assert [e.kind for e in report.explanations] == ["box_head_width"]
    assert report.explanations[0].config == {"MODEL.ROI_BOX_HEAD.FC_DIM": 64}


def _pycls_name(key):
    parts = key.split(".")
    if parts[0] == "stem":
        return "stem.conv." + parts[-1] if parts[2] != "norm" else "stem.bn." + parts[-1]
    stage, block, layer = int(parts[0][3:]) - 1, int(parts[1]) + 1, parts[2]
    head = f"s{stage}.b{block}."
    if layer == "shortcut":
        return head + ("bn." if parts[3] == "norm" else "proj.") + parts[-1]
    letter = "abc"[int(layer[-1]) - 1]
    return head + f"f.{letter}" + ("_bn." if parts[3] == "norm" else ".") + parts[-1]


def test_pycls_names_get_a_working_rename(tmp_path):
    _, src = build(tiny_frcnn_cfg)
    prefix = "backbone.bottom_up."
    pycls = {
        _pycls_name(k[len(prefix) :]): v
        for k, v in src.state_dict().items()
        if k.startswith(prefix)
    }
    assert "s1.b1.f.a_bn.running_mean" in pycls and "s2.b1.proj.weight" in pycls
    _, model = build(tiny_frcnn_cfg)
    exp = by_kind(load(tmp_path, pycls, model).last_report)["pycls_naming"]
    fixed = load(tmp_path, pycls, model, rename=exp.config["CHECKPOINT.LOAD.RENAME"]).last_report
    assert not fixed.unexpected
    assert {k for k in fixed.loaded} == {k for k in src.state_dict() if k.startswith(prefix)}


def test_caffe2_names_in_a_torch_file(tmp_path):
    c2 = {
        "conv1_w": torch.zeros(3),
        "res_conv1_bn_s": torch.ones(3),
        "res2_0_branch2a_w": torch.zeros(2),
        "fc1000_b": torch.zeros(1),
    }
    _, model = build(tiny_frcnn_cfg)
    report = load(tmp_path, c2, model).last_report
    assert by_kind(report)["caffe2_naming"].covered == list(c2)


def retinanet_cfg(**overrides):
    """A tiny RetinaNet (R18 backbone, 32-channel FPN and head), built on the CPU."""
    cfg = tiny_frcnn_cfg()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    return apply_overrides(cfg, overrides)


def test_retinanet_num_classes_agrees_with_dataset(tmp_path, dataset):
    _, src = build(retinanet_cfg)
    name = dataset(["a", "b", "c", "d", "e"])
    cfg, model = build(retinanet_cfg, **{"MODEL.RETINANET.NUM_CLASSES": 5})
    cfg.DATASETS.TRAIN = (name,)
    report = load(tmp_path, src.state_dict(), model, cfg).last_report
    exp = by_kind(report)["num_classes"]
    assert exp.title == "Number of classes changed: 3 -> 5 classes (RetinaNet head)"
    assert exp.keys == ["head.cls_score.*"]
    assert exp.severity == "info"
    assert "(3 anchors per location x classes" in exp.detail
    assert len(report.explanations) == 1


def test_retinanet_num_classes_against_a_dataset_like_the_checkpoint(tmp_path, dataset):
    _, src = build(retinanet_cfg)
    cfg, model = build(retinanet_cfg, **{"MODEL.RETINANET.NUM_CLASSES": 5})
    cfg.DATASETS.TRAIN = (dataset(["a", "b", "c"]),)
    exp = by_kind(load(tmp_path, src.state_dict(), model, cfg).last_report)["num_classes"]
    assert exp.severity == "error"
    assert exp.config == {"MODEL.RETINANET.NUM_CLASSES": 3}


def test_retinanet_anchors_per_location(tmp_path):
    _, src = build(retinanet_cfg)
    ratios = [[0.25, 0.5, 1.0, 2.0]]
    cfg, model = build(retinanet_cfg, **{"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": ratios})
    report = load(tmp_path, src.state_dict(), model, cfg).last_report
    exp = by_kind(report)["anchors"]
    assert exp.title == "Anchors per location changed: 3 -> 4 (RetinaNet head)"
    assert sorted(exp.covered) == sorted(k for k, _, _ in report.shape_mismatch)
    assert len(exp.covered) == 4
    assert "4 x 1 = 4 anchors per location" in exp.detail
    assert len(report.explanations) == 1


@pytest.mark.parametrize("convs", [2, 6])
def test_retinanet_head_depth(tmp_path, convs):
    _, src = build(retinanet_cfg)
    cfg, model = build(retinanet_cfg, **{"MODEL.RETINANET.NUM_CONVS": convs})
    report = load(tmp_path, src.state_dict(), model, cfg).last_report
    exp = by_kind(report)["retinanet_num_convs"]
    assert exp.title == f"RetinaNet head depth changed: 4 -> {convs} convs per subnet"
    assert exp.config == {"MODEL.RETINANET.NUM_CONVS": 4}
    loose = report.missing + report.unexpected
    assert len(loose) == 8 and sorted(exp.covered) == sorted(loose)
    assert len(report.explanations) == 1


def test_backbone_width_per_group(tmp_path):
    narrow = {
        "MODEL.RESNETS.DEPTH": 50,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    }
    _, src = build(tiny_frcnn_cfg, **narrow)
    cfg, model = build(tiny_frcnn_cfg, **{**narrow, "MODEL.RESNETS.WIDTH_PER_GROUP": 16})
    report = load(tmp_path, src.state_dict(), model, cfg).last_report
    exp = by_kind(report)["backbone_width"]
    assert exp.title == "Backbone width changed: 1x8 -> 1x16 (groups x width per group)"
    assert exp.config == {"MODEL.RESNETS.WIDTH_PER_GROUP": 8}
    assert sorted(exp.covered) == sorted(k for k, _, _ in report.shape_mismatch)
    assert "MODEL.RESNETS.WIDTH_PER_GROUP = 16" in exp.detail
    assert all(any(fnmatch.fnmatch(k, pat) for pat in exp.keys) for k in exp.covered)
    assert len(exp.keys) == 3  # not one pattern per block
    assert len(report.explanations) == 1
