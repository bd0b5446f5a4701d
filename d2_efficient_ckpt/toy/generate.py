"""Writing the toy dataset to disk: the COCO layout, the VOC and YOLO layouts, a manifest.

Output layout under ``out_dir``::

    annotations/train.json  annotations/val.json   COCO instances, category ids 1..3
    images/train/000001.jpg ...                    one JPEG per image
    images/val/000001.jpg ...
    voc/Annotations/train_000001.xml ...           Pascal VOC (formats: voc)
    voc/ImageSets/Main/train.txt, val.txt
    voc/JPEGImages/train_000001.jpg ...            hard links to the same JPEGs
    yolo/data.yaml                                 Ultralytics layout (formats: yolo)
    yolo/images/train/000001.jpg ...               hard links to the same JPEGs
    yolo/labels/train/000001.txt ...               "class cx cy w h", normalized
    manifest.json                                  parameters, written last

Everything is a pure function of the parameters: the same seed gives byte-identical files
(with the same Pillow and NumPy versions). A run with the parameters of the manifest found
in ``out_dir`` writes nothing.
"""

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence, Tuple

from .layouts import write_voc, write_yolo
from .shapes import TOY_CATEGORIES, render_toy_image

__all__ = ["FORMATS", "ToyDataset", "ToySplit", "generate_toy_dataset"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# Bump when the rendering changes, so old outputs are regenerated instead of reused.
GENERATOR_VERSION = 2
FORMATS = ("coco", "voc", "yolo")

_JPEG_QUALITY = 90


@dataclass
class ToySplit:
    """Where one split was written and how much it holds."""

    ann_file: str
    image_root: str
    num_images: int
    num_annotations: int
    #: The same split in the other layouts: ``{"voc": {"ROOT", "SPLIT"}, "yolo": {...}}``.
    layouts: Dict[str, Dict[str, str]] = field(default_factory=dict)


@dataclass
class ToyDataset:
    """Result of :func:`generate_toy_dataset`."""

    out_dir: str
    params: Dict[str, Any]
    #: True when a manifest with the same parameters was found and nothing was written.
    skipped: bool
    splits: Dict[str, ToySplit] = field(default_factory=dict)


def _write_json(path: str, obj: Any) -> None:
    # Write-then-rename, so an interrupted run never leaves a truncated json behind.
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _split_paths(out_dir: str, split: str) -> Tuple[str, str]:
    return (
        os.path.join(out_dir, "annotations", f"{split}.json"),
        os.path.join(out_dir, "images", split),
    )


def _file_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _write_split(
    out_dir: str, split: str, num: int, size: int, seed: int, formats: Sequence[str]
) -> ToySplit:
    ann_file, image_root = _split_paths(out_dir, split)
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for index in range(num):
        image, shapes = render_toy_image(seed, split, index, size)
        file_name = _file_name(index)
        image.save(os.path.join(image_root, file_name), format="JPEG", quality=_JPEG_QUALITY)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for shape in shapes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": shape["category_id"],
                    "bbox": shape["bbox"],
                    "area": shape["area"],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"d2_efficient_ckpt toy shapes, {split} split, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": TOY_CATEGORIES,
    }
    _write_json(ann_file, coco)
    layouts = _layouts(out_dir, split, formats)
    if "voc" in formats:
        write_voc(out_dir, split, coco, size, image_root)
    if "yolo" in formats:
        write_yolo(out_dir, split, coco, size, image_root)
    return ToySplit(ann_file, image_root, len(images), len(annotations), layouts)


def _layouts(out_dir: str, split: str, formats: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """DATASETS.CUSTOM keys (besides FORMAT) of one split in the VOC and YOLO layouts."""
    out = {}
    if "voc" in formats:
        out["voc"] = {"ROOT": os.path.join(out_dir, "voc"), "SPLIT": split}
    if "yolo" in formats:
        out["yolo"] = {"DATA_YAML": os.path.join(out_dir, "yolo", "data.yaml"), "SPLIT": split}
    return out


def _existing(out_dir: str, params: Dict[str, Any]) -> Dict[str, ToySplit]:
    """The splits of a previous run with the same parameters, or {} if it must be redone."""
    try:
        with open(os.path.join(out_dir, MANIFEST_NAME)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return {}
    if manifest.get("version") != GENERATOR_VERSION or manifest.get("params") != params:
        return {}
    splits = {}
    for split, info in manifest.get("splits", {}).items():
        ann_file, image_root = _split_paths(out_dir, split)
        names = [_file_name(i) for i in range(info["num_images"])]
        if not os.path.isfile(ann_file) or not all(
            os.path.exists(os.path.join(image_root, n)) for n in names
        ):
            return {}
        splits[split] = ToySplit(
            ann_file,
            image_root,
            info["num_images"],
            info["num_annotations"],
            _layouts(out_dir, split, params["formats"]),
        )
    return splits


def generate_toy_dataset(
    out_dir: str,
    num_train: int = 400,
    num_val: int = 60,
    size: int = 256,
    seed: int = 0,
    force: bool = False,
    formats: Sequence[str] = FORMATS,
) -> ToyDataset:
    """Write the toy dataset, unless ``out_dir`` already holds one with the same parameters.

    Args:
        out_dir: output folder; relative paths are resolved against the current working
            directory. Created if missing.
        num_train: number of training images.
        num_val: number of validation images.
        size: width and height of every image, in pixels (at least 64).
        seed: non-negative seed; the output is a pure function of the parameters.
        force: regenerate even when a matching ``manifest.json`` is present.
        formats: layouts to write besides COCO (always written): any of ``voc``, ``yolo``;
            their images are hard links to the COCO layout's JPEGs.

    Returns:
        Paths and counts per split, and whether generation was skipped.

    Raises:
        ValueError: a parameter is out of range.
    """
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels to fit the shapes, got {size}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be non-negative, got {num_train} and {num_val}.")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown formats {unknown}; choose from {list(FORMATS)}.")
    formats = [f for f in FORMATS if f in formats or f == "coco"]
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "seed": seed,
        "formats": formats,
    }
    if not force:
        splits = _existing(out_dir, params)
        if splits:
            return ToyDataset(out_dir, params, skipped=True, splits=splits)

    start = time.perf_counter()
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    # Drop the old manifest first: a run interrupted from here on must not look complete.
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    splits = {
        "train": _write_split(out_dir, "train", num_train, size, seed, formats),
        "val": _write_split(out_dir, "val", num_val, size, seed, formats),
    }
    manifest = {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "params": params,
        "categories": [c["name"] for c in TOY_CATEGORIES],
        "splits": {
            name: {"num_images": s.num_images, "num_annotations": s.num_annotations}
            for name, s in splits.items()
        },
    }
    _write_json(manifest_path, manifest)
    logger.info(
        f"Wrote toy dataset to {out_dir} ({num_train}+{num_val} images) in "
        f"{time.perf_counter() - start:.1f}s"
    )
    return ToyDataset(out_dir, params, skipped=False, splits=splits)
