"""Record checks shared by every format: one pass that reports every problem and repairs data.

Every format reader produces the same in-memory, COCO-shaped dict (``images``,
``annotations``, ``categories``); :func:`check_records` checks it, adds rows to a
:class:`ValidationReport` and returns the data with the configured fixes applied (bad
records dropped, boxes clipped, malformed segmentations stripped). The same function runs
at validation time and inside the dataset loader, so whatever validation lets through is
exactly what training loads.

Problems that no fix can resolve (duplicate class names, image ids of mixed types, ...)
raise :class:`DatasetValidationError` at once, whatever the validation mode.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List

from ..options import CheckOptions
from ..report import ERROR, INFO, WARNING, ValidationReport
from .categories import check_categories, check_image_ids
from .images import check_images
from .json_types import ID_TYPES, NUMBER_TYPES, is_box, is_int, is_valid_segmentation

__all__ = ["CheckResult", "check_records"]


@dataclass
class CheckResult:
    """The repaired data and what the checks found."""

    data: Dict[str, Any]
    #: True when ``data`` differs from the source file (so a cleaned copy must be written).
    changed: bool
    thing_classes: List[str]
    #: Category id in ``data`` -> contiguous id.
    id_map: Dict[int, int]
    summary: Dict[str, Any]


def check_records(
    name: str,
    data: Dict[str, Any],
    image_root: str,
    source: str,
    options: CheckOptions,
    report: ValidationReport,
) -> CheckResult:
    """Check and repair one dataset's records; see the module docstring.

    Args:
        name: the dataset name, quoted in the report.
        data: COCO-shaped dict from a format reader (modified in place). Images may lack
            ``width``/``height`` (read from the file), annotations may carry ``yolo_box``
            (normalized center, width, height) instead of ``bbox``, or come as a
            ``box_table`` (:class:`~d2_efficient_ckpt.data.formats.yolo.box_table.BoxTable`), which
            becomes the checked ``annotations``.
        image_root: folder that relative ``file_name`` values are relative to.
        source: the annotation file (or folder) the records came from, for messages.
        options: what to check and how to repair.
        report: where problems go.

    Returns:
        The repaired data, whether it differs from the source, classes and id mapping.

    Raises:
        DatasetValidationError: a problem that no fix can resolve.
    """
    changed = bool(data.pop("changed", False))
    categories = check_categories(name, source, data)
    check_image_ids(name, source, data["images"])

    def add(severity, title, fix, record, action):
        report.add(name, severity, title, fix, record, action=action, source=source)

    images, all_ids, images_changed = check_images(
        name, data, image_root, options.check_sizes, options.workers, add
    )
    changed = changed or images_changed
    table = data.pop("box_table", None)
    if table is not None:
        # Boxes held as arrays (YOLO): the rows every check below passes unchanged skip the
        # loop; the others join it as ordinary annotations.
        data["annotations"] = table.split(images, categories)
        n_source = len(table)
    else:
        n_source = len(data["annotations"])

    # -- annotations -------------------------------------------------------------------------
    outside_action = "clipped" if options.box_outside == "clip" else "dropped"
    kept_anns: List[Dict[str, Any]] = []
    ann_ids: set = set()
    renumber = False
    n_annotated: Dict[Any, int] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            add(
                ERROR,
                "annotations that are not JSON objects",
                "make every annotation an object with id, image_id, category_id and bbox.",
                f"annotations[{i}]: {ann!r}"[:200],
                "dropped",
            )
            continue
        ann_id = ann.get("id")
        if type(ann_id) not in ID_TYPES:
            add(
                ERROR,
                'annotations without an "id"',
                'give every annotation a unique "id".',
                _what(ann_id, i),
                "renumbered",
            )
            renumber = True
        elif ann_id in ann_ids:
            add(
                ERROR,
                "duplicate annotation ids",
                'give every annotation a unique "id" (the evaluator keeps only one of each).',
                f"{_what(ann_id, i)} (annotations[{i}])",
                "renumbered",
            )
            renumber = True
        else:
            ann_ids.add(ann_id)
        image_id = ann.get("image_id")
        img = images.get(image_id) if type(image_id) in ID_TYPES else None
        if img is None:
            if not (is_int(image_id) or isinstance(image_id, str)) or image_id not in all_ids:
                add(
                    ERROR,
                    'annotations whose image_id is not in "images"',
                    'point image_id at the "id" of an entry in "images", or delete those '
                    "annotations.",
                    f"{_what(ann_id, i)}: image_id {image_id!r}"[:200],
                    "dropped",
                )
            continue  # otherwise its image was dropped above, and reported there
        category_id = ann.get("category_id")
        if type(category_id) is not int or category_id not in categories:
            add(
                ERROR,
                'annotations whose category_id is not in "categories"',
                f"use one of the category ids {_short(sorted(categories))}, or add the "
                "missing categories.",
                f"{_what(ann_id, i)}: category_id {category_id!r}",
                "dropped",
            )
            continue
        W, H = img["width"], img["height"]
        if "yolo_box" in ann:
            cx, cy, bw, bh = ann.pop("yolo_box")
            ann["bbox"] = [(cx - bw / 2) * W, (cy - bh / 2) * H, bw * W, bh * H]
        bbox = ann.get("bbox")
        if not is_box(bbox):
            add(
                ERROR,
                "annotations with a bad bbox",
                "write bbox as [x, y, width, height] in pixels with width > 0 and height > 0.",
                f"{_what(ann_id, i)}: bbox {bbox!r}"[:200],
                "dropped",
            )
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            add(
                ERROR,
                "degenerate boxes (width or height <= 0)",
                "write bbox as [x, y, width, height] in pixels with width > 0 and height > 0, "
                "or delete degenerate boxes.",
                f"{_what(ann_id, i)}: bbox {bbox!r}",
                "dropped",
            )
            continue
        if x < 0 or y < 0 or x + w > W + 0.01 or y + h > H + 0.01:
            shown = [round(v, 2) for v in bbox]
            record = f"{_what(ann_id, i)} in image {img['id']!r} ({W:g}x{H:g}): bbox {shown}"
            fix = (
                "correct the box; DATASETS.BOX_OUTSIDE_IMAGE (clip or drop) chooses what "
                "happens to such boxes."
            )
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(W), x + w), min(float(H), y + h)
            if options.box_outside == "clip" and x1 - x0 >= 1 and y1 - y0 >= 1:
                add(WARNING, "boxes outside their image", fix, record, "clipped")
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
                changed = True
            else:
                action = "dropped" if outside_action == "dropped" else "dropped (nothing inside)"
                add(WARNING, "boxes outside their image", fix, record, action)
                changed = True
                continue
        area = ann.get("area")
        if type(area) not in NUMBER_TYPES or not 0 <= area < math.inf:
            # COCOeval needs an area for its small/medium/large ranges.
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            changed = True
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            add(
                ERROR,
                'annotations with a bad "iscrowd"',
                'set "iscrowd" to 0 or 1.',
                f"{_what(ann_id, i)}: iscrowd {iscrowd!r}",
                "set to 0",
            )
            ann["iscrowd"] = 0
            changed = True
        if ann.get("ignore", 0):
            # detectron2's load_coco_json asserts on it; COCO's own tools treat it as crowd.
            add(
                WARNING,
                'annotations with "ignore": 1',
                'replace "ignore": 1 by "iscrowd": 1 (crowd regions are ignored in training '
                "and evaluation).",
                _what(ann_id, i),
                "iscrowd set to 1",
            )
            ann["iscrowd"] = 1
            changed = True
        ann.pop("ignore", None)
        if "segmentation" in ann and not is_valid_segmentation(ann["segmentation"]):
            segm = ann.pop("segmentation")
            detail = "an RLE without counts/size" if isinstance(segm, dict) else repr(segm)[:60]
            add(
                WARNING,
                "malformed segmentations",
                "write polygons as [[x1, y1, x2, y2, x3, y3, ...], ...] or RLE as "
                '{"counts": ..., "size": [h, w]}, or remove "segmentation" (boxes are enough '
                "for this model).",
                f"{_what(ann_id, i)}: {detail}",
                "segmentation removed, box kept",
            )
            changed = True
        kept_anns.append(ann)
        if not ann.get("iscrowd", 0):
            n_annotated[img["id"]] = n_annotated.get(img["id"], 0) + 1

    if table is not None:
        kept_anns = table.merge(kept_anns, n_annotated)
    dropped = len(kept_anns) != n_source or len(images) != len(data["images"])
    changed = changed or renumber or dropped
    data["images"] = list(images.values())
    data["annotations"] = kept_anns
    data["categories"] = [{"id": k, "name": v} for k, v in sorted(categories.items())]

    empty = [img for img in data["images"] if img["id"] not in n_annotated]
    if empty:
        use = (
            "dropped from training (DATALOADER.FILTER_EMPTY_ANNOTATIONS True)"
            if options.filter_empty
            else "used as negatives (DATALOADER.FILTER_EMPTY_ANNOTATIONS False)"
        )
        p = report.add(
            name,
            INFO,
            "images without annotations",
            "nothing to fix if they are meant as background; otherwise annotate them.",
            action=use,
            source=source,
        )
        for img in empty[:20]:
            p.add(f"image id {img['id']!r}: '{img['file_name']}'")
        p.count = len(empty)
    if data.pop("renumber", False):
        # Readable ids (file names, "labels.txt:3") served the messages; the evaluator's
        # json gets integers.
        new_ids = {img_id: k for k, img_id in enumerate(images, 1)}
        for img in data["images"]:
            img["id"] = new_ids[img["id"]]
        if table is not None:
            kept_anns.renumber_images(new_ids)
        else:
            for ann in kept_anns:
                ann["image_id"] = new_ids[ann["image_id"]]
        renumber = True
    if table is None and len({type(ann.get("id")) for ann in kept_anns}) > 1:
        renumber = True  # integer and string ids together: keep the evaluator's json simple
    if renumber:
        changed = True
        if table is None:  # a table's boxes are numbered from 1 already
            for k, ann in enumerate(kept_anns, 1):
                ann["id"] = k
    thing_classes = [categories[k] for k in sorted(categories)]
    summary = {
        "images": len(data["images"]),
        "annotations": len(kept_anns),
        "images_with_annotations": len(n_annotated),
        "classes": len(thing_classes),
    }
    return CheckResult(
        data,
        changed,
        thing_classes,
        {k: i for i, k in enumerate(sorted(categories))},
        summary,
    )


def _what(ann_id: Any, index: int) -> str:
    """How messages name an annotation: by its id, or by its position when it has none."""
    return f"annotation id {ann_id!r}" if ann_id is not None else f"annotations[{index}]"


def _short(values: List[Any], limit: int = 20) -> str:
    if len(values) <= limit:
        return str(values)
    return f"{values[:limit]} ... ({len(values)} in all)"
