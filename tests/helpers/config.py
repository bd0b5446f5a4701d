"""The tests' tiny Faster R-CNN config, the toy dataset in a config, and the repository root."""

import os
import tempfile
import uuid
from typing import Optional

from detectron2.config import get_cfg

from d2_efficient_ckpt.config import add_efficient_ckpt_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY_CONFIG = os.path.join(REPO, "configs", "toy", "faster_rcnn_R18_FPN_toy.yaml")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")

# A folder under pytest's temporary root for this session (pytest keeps the last few
# sessions' roots and deletes older ones), set by the session fixture in tests/conftest.py.
OUTPUT_ROOT: Optional[str] = None


def tiny_frcnn_cfg(*, output_dir: Optional[str] = None, **overrides):
    """The toy R18-FPN Faster R-CNN from configs/, shrunk so that a step takes well under 1 s.

    Args:
        output_dir: ``OUTPUT_DIR``, where load reports and checkpoints go. By default a new
            folder under pytest's temporary root, so nothing lands in the working tree and
            nothing outlives pytest's clean-up; outside a test session (a worker process)
            it is left empty for the caller to set.
        **overrides: dotted keys and Python values, see :func:`apply_overrides`.
    """
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
    if output_dir is None and OUTPUT_ROOT is not None:
        output_dir = tempfile.mkdtemp(prefix="output_", dir=OUTPUT_ROOT)
    cfg.OUTPUT_DIR = output_dir or ""
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
