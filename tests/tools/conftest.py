"""The tools' tests share one toy config."""

import pytest

from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import tiny_frcnn_cfg


@pytest.fixture(scope="module")
def toy_config(tmp_path_factory):
    """A yaml config for the tiny model on a 6 + 2 image toy dataset."""
    root = tmp_path_factory.mktemp("tn")
    generate_toy_dataset(str(root / "toy"), num_train=6, num_val=2, size=64, seed=3)
    cfg = tiny_frcnn_cfg()
    for split in ("train", "val"):
        node = cfg.DATASETS.CUSTOM[f"toy_{split}"]
        node.ANN_FILE = str(root / "toy" / "annotations" / f"{split}.json")
        node.IMAGE_ROOT = str(root / "toy" / "images" / split)
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.STEPS = ()
    cfg.OUTPUT_DIR = str(root / "out")
    path = root / "tiny.yaml"
    path.write_text(cfg.dump())
    return path
