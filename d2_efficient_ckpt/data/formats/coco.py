"""COCO instances json: ``images``, ``annotations`` and ``categories``, plus an image folder.

Declared as::

    my_coco: {FORMAT: coco, ANN_FILE: datasets/my/annotations/train.json,
              IMAGE_ROOT: datasets/my/images/train}

The json is parsed and checked for its top-level structure here; the records inside are
checked by :func:`~d2_efficient_ckpt.data.checks.check_records`, as for every format.
"""

import json
from typing import Any, Dict, Tuple

from ..errors import DatasetValidationError
from ..report import WARNING, ValidationReport
from .base import DATASET_FORMAT_REGISTRY, DatasetFormat, RawDataset
from .files import check_dir, check_file, header, read_text

__all__ = ["COCO", "read_coco_json"]

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")


@DATASET_FORMAT_REGISTRY.register()
class COCO(DatasetFormat):
    """COCO instances json (``images``, ``annotations``, ``categories``) plus an image folder.

    Keys: ``ANN_FILE`` (the json) and ``IMAGE_ROOT`` (the folder that ``file_name`` of each
    image is relative to). Category ids may be any integers; they map to contiguous ids in
    id order, as in detectron2's ``load_coco_json``. ``COCOEvaluator`` reads ``ANN_FILE``
    itself unless a record had to be repaired; then it reads a repaired copy in the cache.
    """

    WRITES_JSON = False

    @classmethod
    def read(
        cls, name: str, spec: Dict[str, Any], report: ValidationReport, workers: int = 0
    ) -> RawDataset:
        """See :meth:`DatasetFormat.read`."""
        ann_file, image_root = spec["ANN_FILE"], spec["IMAGE_ROOT"]
        data, note = read_coco_json(name, ann_file)
        check_dir(name, "IMAGE_ROOT", image_root, "the folder that file_name is relative to")
        if note:
            # pycocotools opens json files as UTF-8 text and fails on anything else.
            report.add(
                name,
                WARNING,
                f"annotation files in {note}",
                "re-save the file as UTF-8 without a byte-order mark.",
                record=ann_file,
                action="UTF-8 copy used for evaluation",
                source=ann_file,
            )
            data["changed"] = True
        return RawDataset(data, image_root, ann_file, json_file=ann_file)


def read_coco_json(name: str, ann_file: str) -> Tuple[Dict[str, Any], str]:
    """Read and structurally check a COCO instances file.

    Args:
        name: the dataset name.
        ann_file: absolute path of the json.

    Returns:
        The parsed dict and the encoding note of :func:`read_text`.

    Raises:
        DatasetValidationError: not a regular file, not text, not JSON, nested too deeply,
            or not a COCO instances object.
    """
    check_file(name, "ANN_FILE", ann_file, "the COCO json")
    text, note = read_text(name, "ANN_FILE", ann_file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetValidationError(
            f"{header(name)}: ANN_FILE '{ann_file}' is not valid JSON: {e.msg} at line "
            f"{e.lineno}, column {e.colno}. Fix the file (a truncated download or an "
            "interrupted write are common causes) or regenerate it."
        ) from None
    except RecursionError:
        raise DatasetValidationError(
            f"{header(name)}: ANN_FILE '{ann_file}' is nested too deeply to be a COCO file "
            "(thousands of nested lists or objects). Regenerate it; a COCO file is only a "
            "few levels deep."
        ) from None
    _check_top_level(name, ann_file, data)
    return data, note


def _check_top_level(name: str, ann_file: str, data: Any) -> None:
    if isinstance(data, list):
        raise DatasetValidationError(
            f"{header(name)}: ANN_FILE '{ann_file}' holds a JSON list, not a COCO instances "
            "object; this looks like a detection results file. Point ANN_FILE at the "
            'ground-truth file with "images", "annotations" and "categories".'
        )
    if not isinstance(data, dict):
        raise DatasetValidationError(
            f"{header(name)}: ANN_FILE '{ann_file}' holds a JSON {type(data).__name__}, not a "
            'COCO instances object with "images", "annotations" and "categories".'
        )
    missing = [k for k in _REQUIRED_TOP_LEVEL if k not in data]
    if missing:
        raise DatasetValidationError(
            f"{header(name)}: ANN_FILE '{ann_file}' lacks the top-level key(s) {missing}. A "
            'COCO instances file needs "images", "annotations" and "categories" lists; '
            'add the missing ones (an empty "annotations" list is allowed).'
        )
    not_lists = [k for k in _REQUIRED_TOP_LEVEL if not isinstance(data[k], list)]
    if not_lists:
        raise DatasetValidationError(
            f"{header(name)}: in ANN_FILE '{ann_file}', {not_lists} must be JSON lists, got "
            f"{[type(data[k]).__name__ for k in not_lists]}. Fix the file's structure."
        )
    if not data["categories"]:
        raise DatasetValidationError(
            f"{header(name)}: ANN_FILE '{ann_file}' has an empty \"categories\" list, so there "
            'is nothing to detect. Add one {"id": ..., "name": ...} entry per class.'
        )
