"""The toy dataset's images: bright squares, circles and triangles on dark, noisy backgrounds.

:func:`render_toy_image` is a pure function of its arguments: each image has its own random
stream keyed by (seed, split, index), so changing the number of validation images does not
change any training image.

Boxes follow COCO's pixel convention: a shape covering pixel columns ``x0..x1`` (inclusive)
gets ``x = x0`` and ``w = x1 - x0 + 1``. A triangle's box is its vertices' box; shapes may
overlap a little, but never enough to hide any part of an earlier shape's box, so every box
is tight around visible pixels.
"""

import colorsys
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["TOY_CATEGORIES", "render_toy_image"]

TOY_CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
]
_KINDS = [c["name"] for c in TOY_CATEGORIES]
_CATEGORY_ID = {c["name"]: c["id"] for c in TOY_CATEGORIES}
_SPLIT_CODES = {"train": 0, "val": 1}

_MAX_IOU = 0.3
_PLACEMENT_TRIES = 40


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
