"""Checks of a dataset's categories and image ids that no fix can resolve: they raise at once.

Part of :func:`~d2_efficient_ckpt.data.checks.check_records`. Duplicate class names or image
ids of mixed types make any repair a guess, so whatever the validation mode, these stop the
run with every offending record listed.
"""

from typing import Any, Dict, List

from ..errors import DatasetValidationError, format_offenders
from .json_types import is_int

__all__ = ["check_categories", "check_image_ids", "fatal"]


def fatal(name: str, source: str, title: str, records: List[str], fix: str) -> None:
    """Raise :class:`DatasetValidationError` listing the first offending ``records``."""
    raise DatasetValidationError(
        f"Dataset '{name}' (DATASETS.CUSTOM.{name}): {len(records)} {title} in '{source}':\n"
        f"{format_offenders(records)}\n  Fix: {fix}"
    )


def check_categories(name: str, source: str, data: Dict[str, Any]) -> Dict[int, str]:
    """The categories by id; raise for any without an integer id and a name, or repeated.

    Raises:
        DatasetValidationError: bad entries, duplicate ids or duplicate names, all of one
            kind listed in one message.
    """
    categories: Dict[int, str] = {}
    bad, dup_ids = [], []
    for i, cat in enumerate(data["categories"]):
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        cat_name = cat.get("name") if isinstance(cat, dict) else None
        if not is_int(cat_id) or not isinstance(cat_name, str) or not cat_name.strip():
            bad.append(f"categories[{i}]: {cat!r}"[:200])
        elif cat_id in categories:
            dup_ids.append(f"category id {cat_id} (categories[{i}])")
        else:
            categories[cat_id] = cat_name
    if bad:
        fatal(
            name,
            source,
            "categories without an integer id and a name",
            bad,
            'write every category as {"id": <integer>, "name": "<class name>"}.',
        )
    if dup_ids:
        fatal(
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
        fatal(
            name,
            source,
            "duplicate category names (they would become two classes with one name)",
            dup_names,
            "merge the categories (point their annotations at one id) or rename one of them.",
        )
    return categories


def check_image_ids(name: str, source: str, images: List[Any]) -> None:
    """Raise when image ids mix integers and strings: no mapping of them would be safe.

    Raises:
        DatasetValidationError: image ids of both types.
    """
    kinds = {type(img.get("id")).__name__ for img in images if isinstance(img, dict)}
    kinds.discard("NoneType")
    if len(kinds & {"int", "str"}) > 1:
        examples = [
            f"images[{i}]: id {img.get('id')!r}"
            for i, img in enumerate(images[:1000])
            if isinstance(img, dict) and isinstance(img.get("id"), str)
        ]
        fatal(
            name,
            source,
            "image ids of mixed types (integers and strings)",
            examples or ["..."],
            'make every image "id" (and every annotation "image_id") an integer.',
        )
