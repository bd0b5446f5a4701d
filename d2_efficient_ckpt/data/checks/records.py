"""Record checks shared by every format: one pass that reports every problem and repairs data.

Every format reader produces the same in-memory, COCO-shaped dict (``images``,
``annotations``, ``categories``); :func:`check_records` checks it, adds rows to a
:class:`ValidationReport` and returns the data with the configured fixes applied (bad
records dropped, boxes clipped, malformed segmentations stripped). The same function runs
at validation time and inside the dataset loader, so whatever validation lets through is
exactly what training loads.

The pass runs in this order, each concern in its own module: categories and image ids
(:mod:`.categories`; problems that no fix can resolve, such as duplicate class names or image
ids of mixed types, raise :class:`DatasetValidationError` at once, whatever the validation
mode), image records and files (:mod:`.images`), annotations (:mod:`.annotations`), then
the images left without annotations and the renumbering of ids, here.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..options import CheckOptions
from ..report import INFO, ValidationReport
from .annotations import check_annotations
from .categories import check_categories, check_image_ids
from .images import check_images

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
            ``box_table`` (:class:`~d2_efficient_ckpt.data.formats.yolo.box_table.BoxTable`),
            which becomes the checked ``annotations``.
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
    table = data.pop("box_table", None)
    if table is not None:
        # Boxes held as arrays (YOLO): the rows every annotation check passes unchanged skip
        # them; the others go through them as ordinary annotations.
        data["annotations"] = table.split(images, categories)
        n_source = len(table)
    else:
        n_source = len(data["annotations"])
    checked = check_annotations(
        data["annotations"], images, all_ids, categories, options.box_outside, add
    )
    kept = checked.kept
    if table is not None:
        kept = table.merge(kept, checked.n_annotated)
    dropped = len(kept) != n_source or len(images) != len(data["images"])
    data["images"] = list(images.values())
    data["annotations"] = kept
    data["categories"] = [{"id": k, "name": v} for k, v in sorted(categories.items())]
    _report_empty_images(name, source, data["images"], checked.n_annotated, options, report)
    renumber = _renumber(data, list(images), kept, table, checked.renumber)
    changed = changed or images_changed or checked.changed or dropped or renumber
    thing_classes = [categories[k] for k in sorted(categories)]
    summary = {
        "images": len(data["images"]),
        "annotations": len(kept),
        "images_with_annotations": len(checked.n_annotated),
        "classes": len(thing_classes),
    }
    return CheckResult(
        data,
        changed,
        thing_classes,
        {k: i for i, k in enumerate(sorted(categories))},
        summary,
    )


def _report_empty_images(
    name: str,
    source: str,
    images: List[Dict[str, Any]],
    n_annotated: Dict[Any, int],
    options: CheckOptions,
    report: ValidationReport,
) -> None:
    """An info row for the kept images without a (non-crowd) box, and what training does."""
    empty = [img for img in images if img["id"] not in n_annotated]
    if not empty:
        return
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


def _renumber(
    data: Dict[str, Any], image_ids: List[Any], kept: Any, table: Optional[Any], renumber: bool
) -> bool:
    """Give images and annotations integer ids where they need them; True when any changed.

    Args:
        data: the checked data; its images are renumbered when it asks for it (``renumber``).
        image_ids: the kept images' ids, in order.
        kept: the kept annotations (a ``CheckedBoxes`` when ``table`` is set).
        table: the ``BoxTable`` the annotations came from, or None.
        renumber: an annotation id was missing or repeated.
    """
    if data.pop("renumber", False):
        # Readable ids (file names, "labels.txt:3") served the messages; the evaluator's
        # json gets integers.
        new_ids = {img_id: k for k, img_id in enumerate(image_ids, 1)}
        for img in data["images"]:
            img["id"] = new_ids[img["id"]]
        if table is not None:
            kept.renumber_images(new_ids)
        else:
            for ann in kept:
                ann["image_id"] = new_ids[ann["image_id"]]
        renumber = True
    if table is not None:
        return renumber  # a table's boxes are numbered from 1 already
    if len({type(ann.get("id")) for ann in kept}) > 1:
        renumber = True  # integer and string ids together: keep the evaluator's json simple
    if renumber:
        for k, ann in enumerate(kept, 1):
            ann["id"] = k
    return renumber
