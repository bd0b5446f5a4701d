"""Checks that run before training, so broken data fails in seconds with a clear message.

Detectron2 itself only notices a bad annotation file deep inside a data-loader worker, often
as a bare ``KeyError`` or ``AssertionError``; these checks name the dataset, the file, the
offending records and the fix instead.
"""

import difflib
import json
import math
import os
from typing import Any, Dict, List, NamedTuple, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

from .errors import DatasetConfigError, DatasetValidationError, format_offenders

__all__ = [
    "CocoSummary",
    "DatasetConfigError",
    "DatasetValidationError",
    "check_dataset_names",
    "validate_coco_dataset",
]


_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")


class CocoSummary(NamedTuple):
    """What a valid COCO file holds, for the log line after validation."""

    num_images: int
    num_annotations: int
    #: Category names ordered by category id, as ``load_coco_json`` orders ``thing_classes``.
    thing_classes: List[str]


class _Problems:
    """Collects offending records per kind, so one error reports every kind at once."""

    def __init__(self) -> None:
        # title -> (offending record descriptions, fix)
        self._groups: Dict[str, List[Any]] = {}

    def add(self, title: str, fix: str, record: str) -> None:
        self._groups.setdefault(title, [[], fix])[0].append(record)

    def __bool__(self) -> bool:
        return bool(self._groups)

    def render(self) -> str:
        blocks = []
        for title, (records, fix) in self._groups.items():
            blocks.append(
                f"- {len(records)} {title}:\n{format_offenders(records, indent='    ')}\n"
                f"  Fix: {fix}"
            )
        return "\n".join(blocks)


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True/False in a bbox is always a bug.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _header(name: str) -> str:
    return f"Dataset '{name}' (DATASETS.CUSTOM.{name})"


def _load_json(name: str, ann_file: str) -> Any:
    try:
        with open(ann_file, "rb") as f:
            return json.loads(f.read())
    except json.JSONDecodeError as e:
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' is not valid JSON: {e.msg} at line "
            f"{e.lineno}, column {e.colno}. Fix the file (a truncated download or an "
            "interrupted write are common causes) or regenerate it."
        ) from e
    except UnicodeDecodeError as e:
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' is not UTF-8 text ({e.reason}), so it "
            "cannot be a JSON annotation file. Point ANN_FILE at the COCO json."
        ) from e
    except OSError as e:
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' cannot be read ({e.strerror}). "
            "Check its permissions."
        ) from e


def _check_paths(name: str, ann_file: str, image_root: str) -> None:
    cwd = os.getcwd()
    if not os.path.exists(ann_file):
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' does not exist (relative paths are "
            f"resolved against the current working directory '{cwd}'). Fix "
            f"DATASETS.CUSTOM.{name}.ANN_FILE, run from the directory the config assumes, or "
            "create the data (the toy dataset: python tools/make_toy_dataset.py --out "
            "datasets/toy)."
        )
    if not os.path.isfile(ann_file):
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' is a directory, not a file. Point "
            f"DATASETS.CUSTOM.{name}.ANN_FILE at the COCO json inside it."
        )
    if not os.path.exists(image_root):
        raise DatasetValidationError(
            f"{_header(name)}: IMAGE_ROOT '{image_root}' does not exist (relative paths are "
            f"resolved against the current working directory '{cwd}'). Fix "
            f"DATASETS.CUSTOM.{name}.IMAGE_ROOT to the folder that the images' file_name "
            "entries are relative to."
        )
    if not os.path.isdir(image_root):
        raise DatasetValidationError(
            f"{_header(name)}: IMAGE_ROOT '{image_root}' is a file, not a directory. Set "
            f"DATASETS.CUSTOM.{name}.IMAGE_ROOT to the folder holding the images."
        )


def _check_top_level(name: str, ann_file: str, data: Any) -> None:
    if isinstance(data, list):
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' holds a JSON list, not a COCO instances "
            "object; this looks like a detection results file. Point ANN_FILE at the "
            'ground-truth file with "images", "annotations" and "categories".'
        )
    if not isinstance(data, dict):
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' holds a JSON {type(data).__name__}, not a "
            'COCO instances object with "images", "annotations" and "categories".'
        )
    missing = [k for k in _REQUIRED_TOP_LEVEL if k not in data]
    if missing:
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' lacks the top-level key(s) {missing}. A "
            'COCO instances file needs "images", "annotations" and "categories" lists; '
            'add the missing ones (an empty "annotations" list is allowed).'
        )
    not_lists = [k for k in _REQUIRED_TOP_LEVEL if not isinstance(data[k], list)]
    if not_lists:
        raise DatasetValidationError(
            f"{_header(name)}: in ANN_FILE '{ann_file}', {not_lists} must be JSON lists, got "
            f"{[type(data[k]).__name__ for k in not_lists]}. Fix the file's structure."
        )
    if not data["categories"]:
        raise DatasetValidationError(
            f"{_header(name)}: ANN_FILE '{ann_file}' has an empty \"categories\" list, so there "
            'is nothing to detect. Add one {"id": ..., "name": ...} entry per class.'
        )


def _check_categories(data: Dict[str, Any], problems: _Problems) -> Dict[Any, str]:
    categories: Dict[Any, str] = {}
    for i, cat in enumerate(data["categories"]):
        # load_coco_json sorts category ids, so they must be of one comparable type.
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        if not isinstance(cat_id, int) or isinstance(cat_id, bool):
            problems.add(
                'categories without an integer "id"',
                'give every category a unique integer "id".',
                f"categories[{i}]: {cat!r}"[:200],
            )
            continue
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            problems.add(
                'categories without a "name"',
                'give every category a non-empty "name"; it becomes the class name.',
                f"category id {cat['id']}",
            )
        if cat["id"] in categories:
            problems.add(
                "duplicate category ids",
                'give every category a unique "id".',
                f"category id {cat['id']} (categories[{i}])",
            )
        categories[cat["id"]] = cat.get("name") or ""
    return categories


def _check_images(data: Dict[str, Any], image_root: str, problems: _Problems) -> set:
    image_ids = set()
    missing_files = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            problems.add(
                'images without an "id"',
                'give every image a unique integer "id".',
                f"images[{i}]: {img!r}"[:200],
            )
            continue
        img_id = img["id"]
        if img_id in image_ids:
            problems.add(
                "duplicate image ids",
                'give every image a unique "id".',
                f"image id {img_id} (images[{i}])",
            )
        image_ids.add(img_id)
        bad_size = [k for k in ("width", "height") if not _is_number(img.get(k)) or img[k] <= 0]
        if bad_size:
            problems.add(
                'images without a positive "width"/"height"',
                'store each image\'s pixel size as "width" and "height" (detectron2 '
                "reads them from the json).",
                f"image id {img_id}: " + ", ".join(f"{k}={img.get(k)!r}" for k in bad_size),
            )
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            problems.add(
                'images without a "file_name"',
                'set "file_name" to the image path relative to IMAGE_ROOT.',
                f"image id {img_id}",
            )
            continue
        # Existence only: opening every image would make validation as slow as an epoch.
        if not os.path.exists(os.path.join(image_root, file_name)):
            missing_files.append(f"image id {img_id}: '{file_name}'")
    if missing_files:
        if len(missing_files) == len(data["images"]):
            fix = (
                f"none of the images exist under IMAGE_ROOT '{image_root}'; IMAGE_ROOT is "
                'probably wrong: set it to the folder that "file_name" is relative to.'
            )
        else:
            fix = (
                f"restore the missing files under '{image_root}', or remove those images "
                "and their annotations from the json."
            )
        for record in missing_files:
            problems.add("image files not found on disk", fix, record)
    return image_ids


def _check_annotations(
    data: Dict[str, Any], image_ids: set, categories: Dict[Any, str], problems: _Problems
) -> None:
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            problems.add(
                "annotations that are not JSON objects",
                "make every annotation an object with id, image_id, category_id and bbox.",
                f"annotations[{i}]: {ann!r}"[:200],
            )
            continue
        ann_id = ann.get("id")
        what = f"annotation id {ann_id}" if _is_id(ann_id) else f"annotations[{i}]"
        if not _is_id(ann_id):
            problems.add(
                'annotations without an "id"',
                'give every annotation a unique integer "id" (detectron2 requires it).',
                what,
            )
        elif ann_id in ann_ids:
            problems.add(
                "duplicate annotation ids",
                'give every annotation a unique "id" (detectron2 refuses duplicates).',
                f"{what} (annotations[{i}])",
            )
        else:
            ann_ids.add(ann_id)
        image_id = ann.get("image_id")
        if not _is_id(image_id) or image_id not in image_ids:
            problems.add(
                'annotations whose image_id is not in "images"',
                'point image_id at the "id" of an entry in "images", or delete those annotations.',
                f"{what}: image_id {image_id!r}",
            )
        category_id = ann.get("category_id")
        if not isinstance(category_id, int) or category_id not in categories:
            problems.add(
                'annotations whose category_id is not in "categories"',
                f"use one of the category ids {sorted(categories)}, or add the missing categories.",
                f"{what}: category_id {category_id!r}",
            )
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(_is_number(v) for v in bbox)
            or bbox[2] <= 0
            or bbox[3] <= 0
        ):
            problems.add(
                "annotations with a bad bbox",
                "write bbox as [x, y, width, height] in pixels with width > 0 and height > 0, "
                "or delete degenerate boxes.",
                f"{what}: bbox {bbox!r}",
            )


def validate_coco_dataset(name: str, ann_file: str, image_root: str) -> CocoSummary:
    """Check a COCO instances dataset on disk before any training starts.

    Checks that ``ann_file`` is valid JSON with ``images``, ``annotations`` and a non-empty
    ``categories`` list; that ``image_root`` is a directory; that every image has an id, a
    size and a ``file_name`` that exists under ``image_root`` (existence only, no decoding);
    and that every annotation has a unique id, an existing ``image_id`` and ``category_id``
    and a ``[x, y, w, h]`` bbox with ``w > 0`` and ``h > 0``. Record problems of every kind
    are gathered and reported together, a few examples per kind.

    Args:
        name: the dataset name, quoted in error messages.
        ann_file: path of the COCO json; relative paths are resolved against the current
            working directory.
        image_root: folder that each image's ``file_name`` is relative to; relative paths
            are resolved against the current working directory.

    Returns:
        Counts and class names of the valid dataset.

    Raises:
        DatasetValidationError: any check fails; the message names the dataset, the file,
            the offending records and the fix.
    """
    ann_file = os.path.abspath(os.path.expanduser(ann_file))
    image_root = os.path.abspath(os.path.expanduser(image_root))
    _check_paths(name, ann_file, image_root)
    data = _load_json(name, ann_file)
    _check_top_level(name, ann_file, data)

    problems = _Problems()
    categories = _check_categories(data, problems)
    image_ids = _check_images(data, image_root, problems)
    _check_annotations(data, image_ids, categories, problems)
    if problems:
        raise DatasetValidationError(
            f"{_header(name)} failed validation of ANN_FILE '{ann_file}' "
            f"(IMAGE_ROOT '{image_root}'):\n{problems.render()}"
        )
    # Same order as load_coco_json's thing_classes: by category id.
    thing_classes = [categories[k] for k in sorted(categories)]
    return CocoSummary(len(data["images"]), len(data["annotations"]), thing_classes)


def _known_names_hint(cfg: CfgNode, missing: str) -> str:
    registered = DatasetCatalog.list()
    custom = [n for n in cfg.DATASETS.get("CUSTOM", {}) if n in registered]
    others = sorted(n for n in registered if n not in custom)
    close = difflib.get_close_matches(missing, registered, n=3)
    hint = f"Datasets declared in DATASETS.CUSTOM: {sorted(custom)}"
    hint += f"; {len(others)} other registered datasets (detectron2 built-ins and any "
    hint += f"registered by code), e.g. {others[:5]}."
    if close:
        hint += f" Did you mean {' or '.join(repr(c) for c in close)}?"
    return hint


def check_dataset_names(cfg: CfgNode) -> None:
    """Check ``DATASETS.TRAIN`` and ``DATASETS.TEST``: tuples of registered dataset names.

    Run it after the datasets of ``DATASETS.CUSTOM`` are registered.

    Args:
        cfg: the merged config.

    Raises:
        DatasetConfigError: a value is a bare string or not a list/tuple of strings, or a
            name is not registered in ``DatasetCatalog``; the message lists the known names.
    """
    for key in ("TRAIN", "TEST"):
        value = cfg.DATASETS[key]
        if isinstance(value, str):
            raise DatasetConfigError(
                f"DATASETS.{key} must be a tuple of dataset names, got the bare string "
                f'{value!r}. Write DATASETS.{key}: ("{value}",) in the yaml file (note the '
                f"trailing comma), or DATASETS.{key} \"('{value}',)\" on the command line."
            )
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise DatasetConfigError(
                f"DATASETS.{key} must be a tuple of dataset names (strings), got {value!r}. "
                f'Write it like DATASETS.{key}: ("my_dataset_train",).'
            )
        for dataset_name in _unique(value):
            if dataset_name not in DatasetCatalog:
                raise DatasetConfigError(
                    f"Dataset '{dataset_name}' in DATASETS.{key} is not registered! "
                    f"{_known_names_hint(cfg, dataset_name)} Declare it under DATASETS.CUSTOM "
                    "(FORMAT, ANN_FILE, IMAGE_ROOT) or fix the name."
                )


def _unique(names: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(names))
