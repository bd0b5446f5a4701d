"""Type tests for JSON values in annotation files, shared by the record checks.

``bool`` is an ``int`` subclass in Python, but ``true`` as an id, a size or a coordinate is
always a bug in an annotation file, so these tests reject it.
"""

import math
from typing import Any

__all__ = ["ID_TYPES", "NUMBER_TYPES", "is_box", "is_int", "is_number", "is_valid_segmentation"]


def is_number(value: Any) -> bool:
    # bool is an int subclass, but True in a bbox or as a category id is always a bug.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


NUMBER_TYPES = (int, float)  # exact types: bool (an int subclass) is excluded
ID_TYPES = (int, str)


def is_box(bbox: Any) -> bool:
    """A list of four finite numbers (the hot path: one call per annotation)."""
    if type(bbox) is not list or len(bbox) != 4:
        return False
    x, y, w, h = bbox
    if not (
        type(x) in NUMBER_TYPES
        and type(y) in NUMBER_TYPES
        and type(w) in NUMBER_TYPES
        and type(h) in NUMBER_TYPES
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


def is_int(value: Any) -> bool:
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
            and all(is_int(v) and v > 0 for v in size)
        )
    return False
