"""Fixtures shared by all test folders: tiny real detectron2 Faster R-CNN configs."""

import os
import tempfile
import uuid
from typing import Optional

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from hypothesis import settings

from d2_efficient_ckpt.config import add_efficient_ckpt_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "configs", "toy", "faster_rcnn_R18_FPN_toy.yaml")

torch.set_num_threads(min(2, torch.get_num_threads()))

# Property tests: the same examples on every run (a failure reproduces), no example database
# on disk, and no deadline (the machines are shared, and some examples write real files).
settings.register_profile("project", derandomize=True, database=None, deadline=None)
settings.load_profile("project")

# A folder under pytest's temporary root for this session (pytest keeps the last few
# sessions' roots and deletes older ones), set by the _output_root fixture.
_OUTPUT_ROOT: Optional[str] = None


@pytest.fixture(scope="session", autouse=True)
def _output_root(tmp_path_factory):
    global _OUTPUT_ROOT
    _OUTPUT_ROOT = str(tmp_path_factory.mktemp("outputs"))
    yield
    _OUTPUT_ROOT = None


@pytest.fixture(autouse=True)
def _forget_datasets_registered_by_the_test():
    """detectron2's catalogs are process-global: datasets and metadata a test registers are
    removed after it, so that no test sees another's. Module- and session-scoped fixtures are
    set up before this snapshot, so what they register stays for their scope."""
    datasets, metadata = set(DatasetCatalog.list()), set(MetadataCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - datasets:
        DatasetCatalog.remove(name)
    for name in set(MetadataCatalog.list()) - metadata:
        MetadataCatalog.remove(name)


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
    if output_dir is None and _OUTPUT_ROOT is not None:
        output_dir = tempfile.mkdtemp(prefix="output_", dir=_OUTPUT_ROOT)
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


@pytest.fixture
def tiny_cfg(tmp_path):
    """Factory: ``tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})``, each with its own
    ``OUTPUT_DIR`` inside the test's ``tmp_path``."""

    def make(**overrides):
        return tiny_frcnn_cfg(
            output_dir=tempfile.mkdtemp(prefix="output_", dir=tmp_path), **overrides
        )

    return make


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
