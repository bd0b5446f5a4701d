"""Checks of a dataset's annotations, one at a time: id, references, box, flags, segmentation.

Part of :func:`~d2_efficient_ckpt.data.checks.check_records`. Each annotation is dropped
(bad reference, bad or degenerate box, a box outside its image under ``drop``) or kept,
possibly repaired (box clipped, area filled in, ``iscrowd`` fixed, ``ignore`` made a crowd
region, a malformed segmentation stripped); every problem is a report row. This loop runs
once per annotation of sets with millions of them, so a clean annotation costs two calls:
the references are tested in the loop (only their reports are calls), then the box and the
other fields are checked one call each.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Sequence, Set

from ..report import ERROR, WARNING
from .json_types import ID_TYPES, NUMBER_TYPES, is_box, is_int, is_valid_segmentation

__all__ = ["AnnotationChecks", "check_annotations"]

# The slack, in pixels, of the test that a box lies inside its image.
_SLACK = 0.01


@dataclass
class AnnotationChecks:
    """What the annotation checks kept and found."""

    #: The kept annotations, repaired, in source order.
    kept: List[Dict[str, Any]] = field(default_factory=list)
    #: Kept non-crowd boxes per image id.
    n_annotated: Dict[Any, int] = field(default_factory=dict)
    #: An id was missing or repeated: every annotation gets a new one.
    renumber: bool = False
    #: A kept annotation was repaired, or a box outside its image was dropped.
    changed: bool = False


def check_annotations(
    annotations: Sequence[Any],
    images: Mapping[Any, Dict[str, Any]],
    all_ids: Set[Any],
    categories: Mapping[int, str],
    box_outside: str,
    add: Callable[..., None],
) -> AnnotationChecks:
    """Check and repair every annotation; see the module docstring.

    Args:
        annotations: the records to check (kept ones are modified in place). An annotation
            may carry ``yolo_box`` (normalized center, width, height) instead of ``bbox``.
        images: the kept images by id, with their sizes.
        all_ids: every valid image id, dropped images included: an annotation of a dropped
            image is dropped silently (its image was reported).
        categories: the known category ids and their names.
        box_outside: ``"clip"`` or ``"drop"``, for boxes that run outside their image.
        add: ``add(severity, title, fix, record, action)`` adds a report row.

    Returns:
        The kept annotations and what the checks found.
    """
    return _AnnotationChecker(images, all_ids, categories, box_outside, add).run(annotations)


class _AnnotationChecker:
    """One pass over the annotations: the references, then the box, then the other fields."""

    def __init__(
        self,
        images: Mapping[Any, Dict[str, Any]],
        all_ids: Set[Any],
        categories: Mapping[int, str],
        box_outside: str,
        add: Callable[..., None],
    ) -> None:
        self.images = images
        self.all_ids = all_ids
        self.categories = categories
        self.clip = box_outside == "clip"
        self.add = add
        self.result = AnnotationChecks()

    def run(self, annotations: Sequence[Any]) -> AnnotationChecks:
        """Check every annotation in order; keep those no check drops."""
        images, categories, result = self.images, self.categories, self.result
        kept, n_annotated = result.kept, result.n_annotated
        box_kept, repair_fields = self._box_kept, self._repair_fields  # bound once, not per box
        ann_ids: Set[Any] = set()
        for i, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                self._report_not_an_object(ann, i)
                continue
            ann_id = ann.get("id")
            if type(ann_id) not in ID_TYPES or ann_id in ann_ids:
                # A missing or repeated id is no reason to drop a box: all are renumbered.
                self._report_bad_id(ann_id, i)
                result.renumber = True
            else:
                ann_ids.add(ann_id)
            image_id = ann.get("image_id")
            img = images.get(image_id) if type(image_id) in ID_TYPES else None
            if img is None:
                self._report_unknown_image(ann_id, i, image_id)
                continue
            category_id = ann.get("category_id")
            if type(category_id) is not int or category_id not in categories:
                self._report_unknown_category(ann_id, i, category_id)
                continue
            if not box_kept(ann, ann_id, i, img):
                continue
            repair_fields(ann, ann_id, i)
            kept.append(ann)
            if not ann.get("iscrowd", 0):
                n_annotated[img["id"]] = n_annotated.get(img["id"], 0) + 1
        return result

    def _report_not_an_object(self, ann: Any, i: int) -> None:
        self.add(
            ERROR,
            "annotations that are not JSON objects",
            "make every annotation an object with id, image_id, category_id and bbox.",
            f"annotations[{i}]: {ann!r}"[:200],
            "dropped",
        )

    def _report_bad_id(self, ann_id: Any, i: int) -> None:
        if type(ann_id) not in ID_TYPES:
            self.add(
                ERROR,
                'annotations without an "id"',
                'give every annotation a unique "id".',
                _what(ann_id, i),
                "renumbered",
            )
        else:
            self.add(
                ERROR,
                "duplicate annotation ids",
                'give every annotation a unique "id" (the evaluator keeps only one of each).',
                f"{_what(ann_id, i)} (annotations[{i}])",
                "renumbered",
            )

    def _report_unknown_image(self, ann_id: Any, i: int, image_id: Any) -> None:
        if is_int(image_id) or isinstance(image_id, str):
            if image_id in self.all_ids:
                return  # its image was dropped, and reported then
        self.add(
            ERROR,
            'annotations whose image_id is not in "images"',
            'point image_id at the "id" of an entry in "images", or delete those annotations.',
            f"{_what(ann_id, i)}: image_id {image_id!r}"[:200],
            "dropped",
        )

    def _report_unknown_category(self, ann_id: Any, i: int, category_id: Any) -> None:
        self.add(
            ERROR,
            'annotations whose category_id is not in "categories"',
            f"use one of the category ids {_short(sorted(self.categories))}, or add the "
            "missing categories.",
            f"{_what(ann_id, i)}: category_id {category_id!r}",
            "dropped",
        )

    def _box_kept(self, ann: Dict[str, Any], ann_id: Any, i: int, img: Dict[str, Any]) -> bool:
        """Convert a ``yolo_box`` to pixels, then check the box; False drops the annotation."""
        W, H = img["width"], img["height"]
        if "yolo_box" in ann:
            cx, cy, bw, bh = ann.pop("yolo_box")
            ann["bbox"] = [(cx - bw / 2) * W, (cy - bh / 2) * H, bw * W, bh * H]
        bbox = ann.get("bbox")
        if not is_box(bbox):
            self.add(
                ERROR,
                "annotations with a bad bbox",
                "write bbox as [x, y, width, height] in pixels with width > 0 and height > 0.",
                f"{_what(ann_id, i)}: bbox {bbox!r}"[:200],
                "dropped",
            )
            return False
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            self.add(
                ERROR,
                "degenerate boxes (width or height <= 0)",
                "write bbox as [x, y, width, height] in pixels with width > 0 and height > 0, "
                "or delete degenerate boxes.",
                f"{_what(ann_id, i)}: bbox {bbox!r}",
                "dropped",
            )
            return False
        if x < 0 or y < 0 or x + w > W + _SLACK or y + h > H + _SLACK:
            return self._clipped(ann, ann_id, i, img)
        return True

    def _clipped(self, ann: Dict[str, Any], ann_id: Any, i: int, img: Dict[str, Any]) -> bool:
        """A box outside its image: clip it (True) or drop the annotation (False)."""
        W, H = img["width"], img["height"]
        x, y, w, h = bbox = ann["bbox"]
        shown = [round(v, 2) for v in bbox]
        record = f"{_what(ann_id, i)} in image {img['id']!r} ({W:g}x{H:g}): bbox {shown}"
        fix = (
            "correct the box; DATASETS.BOX_OUTSIDE_IMAGE (clip or drop) chooses what "
            "happens to such boxes."
        )
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(W), x + w), min(float(H), y + h)
        self.result.changed = True
        if self.clip and x1 - x0 >= 1 and y1 - y0 >= 1:
            self.add(WARNING, "boxes outside their image", fix, record, "clipped")
            ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            return True
        action = "dropped (nothing inside)" if self.clip else "dropped"
        self.add(WARNING, "boxes outside their image", fix, record, action)
        return False

    def _repair_fields(self, ann: Dict[str, Any], ann_id: Any, i: int) -> None:
        """``area``, ``iscrowd``, ``ignore`` and ``segmentation`` of a kept annotation."""
        area = ann.get("area")
        if type(area) not in NUMBER_TYPES or not 0 <= area < math.inf:
            # COCOeval needs an area for its small/medium/large ranges.
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            self.result.changed = True
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
            self.add(
                ERROR,
                'annotations with a bad "iscrowd"',
                'set "iscrowd" to 0 or 1.',
                f"{_what(ann_id, i)}: iscrowd {iscrowd!r}",
                "set to 0",
            )
            ann["iscrowd"] = 0
            self.result.changed = True
        if ann.get("ignore", 0):
            # detectron2's load_coco_json asserts on it; COCO's own tools treat it as crowd.
            self.add(
                WARNING,
                'annotations with "ignore": 1',
                'replace "ignore": 1 by "iscrowd": 1 (crowd regions are ignored in training '
                "and evaluation).",
                _what(ann_id, i),
                "iscrowd set to 1",
            )
            ann["iscrowd"] = 1
            self.result.changed = True
        ann.pop("ignore", None)
        if "segmentation" in ann and not is_valid_segmentation(ann["segmentation"]):
            self._strip_segmentation(ann, ann_id, i)

    def _strip_segmentation(self, ann: Dict[str, Any], ann_id: Any, i: int) -> None:
        segm = ann.pop("segmentation")
        detail = "an RLE without counts/size" if isinstance(segm, dict) else repr(segm)[:60]
        self.add(
            WARNING,
            "malformed segmentations",
            "write polygons as [[x1, y1, x2, y2, x3, y3, ...], ...] or RLE as "
            '{"counts": ..., "size": [h, w]}, or remove "segmentation" (boxes are enough '
            "for this model).",
            f"{_what(ann_id, i)}: {detail}",
            "segmentation removed, box kept",
        )
        self.result.changed = True


def _what(ann_id: Any, index: int) -> str:
    """How messages name an annotation: by its id, or by its position when it has none."""
    return f"annotation id {ann_id!r}" if ann_id is not None else f"annotations[{index}]"


def _short(values: List[Any], limit: int = 20) -> str:
    if len(values) <= limit:
        return str(values)
    return f"{values[:limit]} ... ({len(values)} in all)"
