"""A small synthetic detection dataset: bright shapes on dark, noisy images, in COCO, Pascal
VOC and YOLO layouts.

It exists so the whole pipeline (registration, training, checkpointing, evaluation) can be
exercised on a CPU in minutes without downloading anything. Output layout under ``out_dir``::

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
(with the same Pillow and NumPy versions). Each image has its own random stream keyed by
(seed, split, index), so changing ``num_val`` does not change any training image.

Boxes follow COCO's pixel convention: a shape covering pixel columns ``x0..x1`` (inclusive)
gets ``x = x0`` and ``w = x1 - x0 + 1``. A triangle's box is its vertices' box; shapes may
overlap a little, but never enough to hide any part of an earlier shape's box, so every box
is tight around visible pixels.
"""

import colorsys
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .toy_layouts import write_voc, write_yolo

__all__ = [
    "TOY_CATEGORIES",
    "ToyDataset",
    "ToySplit",
    "generate_toy_dataset",
    "render_toy_image",
]

logger = logging.getLogger(__name__)

TOY_CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
_KINDS = [c["name"] for c in TOY_CATEGORIES]
_CATEGORY_ID = {c["name"]: c["id"] for c in TOY_CATEGORIES}

MANIFEST_NAME = "manifest.json"
# Bump when the rendering changes, so old outputs are regenerated instead of reused.
GENERATOR_VERSION = 2
FORMATS = ("coco", "voc", "yolo")
_SPLIT_CODES = {"train": 0, "val": 1}

_MAX_IOU = 0.3
_PLACEMENT_TRIES = 40
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


def _side_range(size: int) -> Tuple[int, int]:
    hi = min(90, size // 2)
    return min(30, hi), hi


def _bright_color(rng: np.random.Generator) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(0, 50, size=3)
    # A random linear gradient and per-pixel noise, so no two backgrounds look alike.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.arange(size)[None, :] + np.sin(angle) * np.arange(size)[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    gradient = ramp[..., None] * rng.uniform(0, 35, size=3)
    noise = rng.normal(0.0, rng.uniform(3, 12), size=(size, size, 3))
    return np.clip(base + gradient + noise, 0, 110).astype(np.uint8)


def _random_shape(rng: np.random.Generator, size: int) -> Dict[str, Any]:
    lo, hi = _side_range(size)
    kind = _KINDS[int(rng.integers(len(_KINDS)))]
    side = int(rng.integers(lo, hi + 1))
    if kind == "triangle":
        # Vertices on a circle with jittered angles: rotated, mostly near-equilateral.
        radius = side / np.sqrt(3.0)
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        angles += rng.uniform(-0.25, 0.25, size=3)
        pts = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
        pts = np.round(pts - pts.min(axis=0)).astype(int)
        w, h = pts.max(axis=0) + 1
        x0 = int(rng.integers(0, size - w + 1))
        y0 = int(rng.integers(0, size - h + 1))
        points = [(int(x) + x0, int(y) + y0) for x, y in pts]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = (min(xs), min(ys), max(xs), max(ys))
    else:
        x0 = int(rng.integers(0, size - side + 1))
        y0 = int(rng.integers(0, size - side + 1))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        points = []
    return {"kind": kind, "box": box, "points": points, "color": _bright_color(rng)}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Dict[str, Any], fill: Any) -> None:
    if shape["kind"] == "square":
        draw.rectangle(shape["box"], fill=fill)
    elif shape["kind"] == "circle":
        draw.ellipse(shape["box"], fill=fill)
    else:
        # The outline guarantees the vertex pixels are drawn, so the box stays tight.
        draw.polygon(shape["points"], fill=fill, outline=fill)


def _mask(shape: Dict[str, Any], size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(canvas), shape, 255)
    return np.asarray(canvas) > 0


def _mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _iou(a: Tuple[int, ...], b: Tuple[int, ...]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area - inter)


def _fits(shape: Dict[str, Any], mask: np.ndarray, placed: List[Tuple[dict, np.ndarray]]) -> bool:
    if any(_iou(shape["box"], other["box"]) > _MAX_IOU for other, _ in placed):
        return False
    # The new shape is drawn on top: reject it if it would hide any extreme pixel of an
    # earlier shape, since that shape's box would then no longer be tight.
    for i, (other, other_mask) in enumerate(placed):
        visible = other_mask & ~mask
        for _, later_mask in placed[i + 1 :]:
            visible &= ~later_mask
        if not visible.any() or _mask_box(visible) != other["box"]:
            return False
    return True


def render_toy_image(
    seed: int, split: str, index: int, size: int = 256
) -> Tuple[Image.Image, List[Dict[str, Any]]]:
    """Render one image and its annotations, a pure function of the arguments.

    Args:
        seed: dataset seed (non-negative).
        split: ``"train"`` or ``"val"``; each split has its own random streams.
        index: image index within the split.
        size: width and height in pixels (at least 64).

    Returns:
        The RGB image and one dict per shape with ``category_id``, ``bbox`` (COCO
        ``[x, y, w, h]``), ``area`` (visible pixels) and, for reference, ``kind`` and
        ``points`` (triangle vertices).
    """
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    image = Image.fromarray(_background(rng, size), "RGB")
    placed: List[Tuple[dict, np.ndarray]] = []
    for _ in range(int(rng.integers(1, 4))):
        for _ in range(_PLACEMENT_TRIES):
            shape = _random_shape(rng, size)
            mask = _mask(shape, size)
            if _fits(shape, mask, placed):
                placed.append((shape, mask))
                break
    draw = ImageDraw.Draw(image)
    covered = np.zeros((size, size), dtype=bool)
    annotations = []
    # Visible area is counted from the top shape down, as later shapes cover earlier ones.
    for shape, mask in reversed(placed):
        area = int((mask & ~covered).sum())
        covered |= mask
        x0, y0, x1, y1 = shape["box"]
        annotations.append(
            {
                "kind": shape["kind"],
                "category_id": _CATEGORY_ID[shape["kind"]],
                "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                "area": float(area),
                "points": [list(p) for p in shape["points"]],
            }
        )
    annotations.reverse()
    for shape, _ in placed:
        _draw_shape(draw, shape, shape["color"])
    return image, annotations


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
