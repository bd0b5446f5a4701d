"""The small toy dataset the data and toy tests share, and DATASETS.CUSTOM entries for it."""

import pathlib
from typing import Any, Dict

from d2_efficient_ckpt.toy import generate_toy_dataset

#: Width and height of the shared toy dataset's images.
TOY_SIZE = 64
#: Its classes, in category id order.
TOY_NAMES = ["square", "circle", "triangle"]


def make_small_toy(out: pathlib.Path) -> pathlib.Path:
    """Write a 6 + 3 image toy dataset (seed 0, 64 px) into ``out``; returns ``out``."""
    generate_toy_dataset(str(out), num_train=6, num_val=3, size=TOY_SIZE, seed=0)
    return out


def toy_spec(fmt: str, root: pathlib.Path) -> Dict[str, Any]:
    """The DATASETS.CUSTOM entry of the toy dataset's train split in layout ``fmt``."""
    if fmt == "coco":
        return {
            "FORMAT": "coco",
            "ANN_FILE": str(root / "annotations" / "train.json"),
            "IMAGE_ROOT": str(root / "images" / "train"),
        }
    if fmt == "voc":
        return {"FORMAT": "voc", "ROOT": str(root / "voc"), "SPLIT": "train", "NAMES": TOY_NAMES}
    return {
        "FORMAT": "yolo",
        "IMAGE_ROOT": str(root / "yolo" / "images" / "train"),
        "NAMES": TOY_NAMES,
    }
