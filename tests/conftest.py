"""Fixtures shared by all test folders: tiny real detectron2 Faster R-CNN configs."""

import os
import tempfile
import uuid

import pytest
import torch
from detectron2.config import get_cfg

from d2_efficient_ckpt.config import add_efficient_ckpt_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "configs", "toy", "faster_rcnn_R18_FPN_toy.yaml")

torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_frcnn_cfg(**overrides):
    """The toy R18-FPN Faster R-CNN from configs/, shrunk so that a step takes well under 1 s."""
    cfg = add_efficient_ckpt_config(get_cfg())
    cfg.merge_from_file(TOY_CONFIG)
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    # Load reports are written to OUTPUT_DIR; keep them out of the working tree.
    cfg.OUTPUT_DIR = tempfile.mkdtemp(prefix="d2ec_test_")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg, overrides):
    """Set dotted keys, e.g. ``{"MODEL.ROI_HEADS.NUM_CLASSES": 5}``, with Python values."""
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


@pytest.fixture
def tiny_cfg():
    """Factory: ``tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})``."""
    return tiny_frcnn_cfg


def train_on_toy(cfg, toy_root, prefix="toy"):
    """Make ``cfg`` train on the train split of a generated toy dataset, and test on nothing.

    The dataset gets a process-unique name, since detectron2's catalogs are process-global.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    cfg.DATASETS.CUSTOM.clear()
    cfg.DATASETS.CUSTOM[name] = type(cfg)(
        {
            "FORMAT": "coco",
            "ANN_FILE": str(toy_root / "annotations" / "train.json"),
            "IMAGE_ROOT": str(toy_root / "images" / "train"),
        }
    )
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
    return cfg
