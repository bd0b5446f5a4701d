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
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .errors import DatasetValidationError, format_offenders
from .images import read_image_infos
from .report import ERROR, INFO, WARNING, ValidationReport

__all__ = ["CheckOptions", "CheckResult", "check_records", "is_valid_segmentation"]


@dataclass(frozen=True)
class CheckOptions:
    """How records are checked and repaired; built from the config by the registrar."""

    #: Read every image header to check its size (False: only images without a size).
    check_sizes: bool = True
    #: "clip" or "drop": what happens to a box that runs outside its image.
    box_outside: str = "clip"
    #: DATALOADER.FILTER_EMPTY_ANNOTATIONS, for the empty-image count.
    filter_empty: bool = True
    #: Header-reading processes; 0: automatic.
    workers: int = 0


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


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True in a bbox or as a category id is always a bug.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_NUMBER_TYPES = (int, float)  # exact types: bool (an int subclass) is excluded
_ID_TYPES = (int, str)


def _is_box(bbox: Any) -> bool:
    """A list of four finite numbers (the hot path: one call per annotation)."""
    if type(bbox) is not list or len(bbox) != 4:
        return False
    x, y, w, h = bbox
    if not (
        type(x) in _NUMBER_TYPES
        and type(y) in _NUMBER_TYPES
        and type(w) in _NUMBER_TYPES
        and type(h) in _NUMBER_TYPES
    ):
        return False
    # One non-finite value makes the sum non-finite; so does a sum that overflows, which
    # only absurd boxes reach.
    return math.isfinite(x + y + w + h)


def _is_polygon(poly: Any) -> bool:
    if type(poly) is not list or len(poly) < 6 or len(poly) % 2:
        return False
    try:
        return math.isfinite(sum(poly))  # TypeError for anything but numbers
    except TypeError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_valid_segmentation(segm: Any) -> bool:
    """True for polygons (a list of flat ``[x, y, ...]`` lists of >= 3 points) or an RLE dict.

    Anything else makes detectron2 raise (a flat list) or drop the whole annotation.
    """
    if isinstance(segm, list):
        return bool(segm) and all(_is_polygon(poly) for poly in segm)
    if isinstance(segm, dict):
        size = segm.get("size")
        return (
            isinstance(segm.get("counts"), (str, list))
            and isinstance(size, list)
            and len(size) == 2
            and all(_is_int(v) and v > 0 for v in size)
        )
    return False


def _fatal(name: str, source: str, title: str, records: List[str], fix: str) -> None:
    raise DatasetValidationError(
        f"Dataset '{name}' (DATASETS.CUSTOM.{name}): {len(records)} {title} in '{source}':\n"
        f"{format_offenders(records)}\n  Fix: {fix}"
    )


def _check_categories(name: str, source: str, data: Dict[str, Any]) -> Dict[int, str]:
    categories: Dict[int, str] = {}
    bad, dup_ids = [], []
    for i, cat in enumerate(data["categories"]):
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        cat_name = cat.get("name") if isinstance(cat, dict) else None
        if not _is_int(cat_id) or not isinstance(cat_name, str) or not cat_name.strip():
            bad.append(f"categories[{i}]: {cat!r}"[:200])
        elif cat_id in categories:
            dup_ids.append(f"category id {cat_id} (categories[{i}])")
        else:
            categories[cat_id] = cat_name
    if bad:
        _fatal(
            name,
            source,
            "categories without an integer id and a name",
            bad,
            'write every category as {"id": <integer>, "name": "<class name>"}.',
        )
    if dup_ids:
        _fatal(
            name,
            source,
            "duplicate category ids",
            dup_ids,
            'give every category a unique integer "id".',
        )
    seen: Dict[str, int] = {}
    dup_names = []
    for cat_id, cat_name in sorted(categories.items()):
        if cat_name in seen:
            dup_names.append(f"name '{cat_name}': category ids {seen[cat_name]} and {cat_id}")
        seen.setdefault(cat_name, cat_id)
    if dup_names:
        _fatal(
            name,
            source,
            "duplicate category names (they would become two classes with one name)",
            dup_names,
            "merge the categories (point their annotations at one id) or rename one of them.",
        )
    return categories


def _check_image_ids(name: str, source: str, images: List[Any]) -> None:
    kinds = {type(img.get("id")).__name__ for img in images if isinstance(img, dict)}
    kinds.discard("NoneType")
    if len(kinds & {"int", "str"}) > 1:
        examples = [
            f"images[{i}]: id {img.get('id')!r}"
            for i, img in enumerate(images[:1000])
            if isinstance(img, dict) and isinstance(img.get("id"), str)
        ]
        _fatal(
            name,
            source,
            "image ids of mixed types (integers and strings)",
            examples or ["..."],
            'make every image "id" (and every annotation "image_id") an integer.',
        )


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
            (normalized center, width, height) instead of ``bbox``.
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
    categories = _check_categories(name, source, data)
    _check_image_ids(name, source, data["images"])

    def add(severity, title, fix, record, action):
        report.add(name, severity, title, fix, record, action=action, source=source)

    # -- images: ids, file names, sizes -----------------------------------------------------
    images: Dict[Any, Dict[str, Any]] = {}
    all_ids = {
        img.get("id")
        for img in data["images"]
        if isinstance(img, dict) and (_is_int(img.get("id")) or isinstance(img.get("id"), str))
    }
    for i, img in enumerate(data["images"]):
        img_id = img.get("id") if isinstance(img, dict) else None
        if not (_is_int(img_id) or isinstance(img_id, str)):
            add(
                ERROR,
                'images without an integer "id"',
                'give every image a unique "id".',
                f"images[{i}]: {img!r}"[:200],
                "dropped",
            )
            continue
        if img_id in images:
            add(
                ERROR,
                "duplicate image ids",
                'give every image a unique "id".',
                f"image id {img_id!r} (images[{i}])",
                "later ones dropped",
            )
            continue
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            add(
                ERROR,
                'images without a "file_name"',
                'set "file_name" to the image path relative to IMAGE_ROOT.',
                f"image id {img_id!r}",
                "dropped",
            )
            continue
        for key in ("width", "height"):
            value = img.get(key)
            if value is not None and (not _is_number(value) or value <= 0):
                add(
                    ERROR,
                    'images with a bad "width"/"height"',
                    "store each image's pixel size as positive numbers (or remove them: they "
                    "are then read from the file).",
                    f"image id {img_id!r}: {key}={value!r}",
                    "size read from the file",
                )
                img[key] = None
        images[img_id] = img

    kept = list(images.values())
    need = [img for img in kept if options.check_sizes or not img.get("width")]
    infos = read_image_infos(
        [os.path.join(image_root, img["file_name"]) for img in need],
        workers=options.workers,
        desc=f"checking images of {name}",
    )
    missing_fix = (
        f"restore the files under IMAGE_ROOT '{image_root}', or remove those images from the "
        "annotations."
    )
    unchecked = [img for img in kept if not (options.check_sizes or not img.get("width"))]
    for img in unchecked:
        # Without header reads, still refuse anything that is not a regular file: a FIFO
        # would block a data-loader worker forever.
        path = os.path.join(image_root, img["file_name"])
        if not os.path.isfile(path):
            add(
                ERROR,
                "image files missing or not regular files",
                missing_fix,
                f"image id {img['id']!r}: '{img['file_name']}'",
                "dropped",
            )
            images.pop(img["id"])
    for img, info in zip(need, infos):
        record = f"image id {img['id']!r}: '{img['file_name']}'"
        if info.error == "file not found":
            add(ERROR, "image files not found", missing_fix, record, "dropped")
            images.pop(img["id"])
        elif info.error:
            add(
                ERROR,
                "unreadable image files",
                "replace each file with a complete image (JPEG/PNG), or remove it from the "
                "annotations.",
                f"{record} {info.error}",
                "dropped",
            )
            images.pop(img["id"])
        elif img.get("width") is None or img.get("height") is None:
            img["width"], img["height"] = info.width, info.height
            changed = True
        elif (round(img["width"]), round(img["height"])) != (info.width, info.height):
            add(
                ERROR,
                "image sizes that disagree with the file",
                "correct width/height in the annotations (the file's size is what detectron2 "
                "reads, after applying the EXIF orientation).",
                f"{record}: annotation {img['width']:g}x{img['height']:g}, file "
                f"{info.width}x{info.height}",
                "file's size used",
            )
            img["width"], img["height"] = info.width, info.height
            changed = True
    if kept and not images:
        report.add(
            name,
            ERROR,
            "datasets whose images are all missing or unreadable",
            f"IMAGE_ROOT '{image_root}' is probably wrong: set it to the folder that "
            '"file_name" is relative to.',
            action="none",
            source=source,
        )

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
        if type(ann_id) not in _ID_TYPES:
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
        img = images.get(image_id) if type(image_id) in _ID_TYPES else None
        if img is None:
            if not (_is_int(image_id) or isinstance(image_id, str)) or image_id not in all_ids:
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
        if not _is_box(bbox):
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
        if type(area) not in _NUMBER_TYPES or not 0 <= area < math.inf:
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

    dropped = len(kept_anns) != len(data["annotations"]) or len(images) != len(data["images"])
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
        for ann in kept_anns:
            ann["image_id"] = new_ids[ann["image_id"]]
        renumber = True
    if len({type(ann.get("id")) for ann in kept_anns}) > 1:
        renumber = True  # integer and string ids together: keep the evaluator's json simple
    if renumber:
        changed = True
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


def optional_int(value: Any) -> Optional[int]:
    """``value`` as an int when it is one (not a bool), else None."""
    return value if _is_int(value) else None
