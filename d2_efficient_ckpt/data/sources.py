"""Reading files that datasets are declared with: paths, JSON annotation files, COCO layout.

Every failure here is fatal for the dataset (there is nothing to check without the file) and
raises :class:`DatasetValidationError` naming the dataset, the file and the fix. Nothing is
opened before ``os.stat`` says it is a regular file: opening a FIFO blocks forever.
"""

import codecs
import json
import os
import stat
from typing import Any, Dict, Tuple

from .errors import DatasetValidationError

__all__ = ["check_dir", "check_file", "header", "read_coco_json", "read_text"]

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")


def header(name: str) -> str:
    """How messages name a dataset: ``Dataset 'x' (DATASETS.CUSTOM.x)``."""
    return f"Dataset '{name}' (DATASETS.CUSTOM.{name})"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or other special file"


def check_file(name: str, key: str, path: str, what: str) -> None:
    """Raise unless ``path`` is an existing regular file.

    Args:
        name: the dataset name.
        key: the config key the path comes from (``ANN_FILE``, ``DATA_YAML``, ...).
        path: absolute path.
        what: what the file should be, for the fix (e.g. "the COCO json").
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DatasetValidationError(
            f"{header(name)}: {key} '{path}' does not exist (relative paths are resolved "
            f"against the current working directory '{os.getcwd()}'). Fix "
            f"DATASETS.CUSTOM.{name}.{key}, run from the directory the config assumes, or "
            "create the data (the toy dataset: python tools/make_toy_dataset.py --out "
            "datasets/toy)."
        ) from None
    except OSError as e:
        raise DatasetValidationError(
            f"{header(name)}: {key} '{path}' cannot be read ({e.strerror}). Check its permissions."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise DatasetValidationError(
            f"{header(name)}: {key} '{path}' is {_kind(st.st_mode)}, not a regular file. Point "
            f"DATASETS.CUSTOM.{name}.{key} at {what}."
        )


def check_dir(name: str, key: str, path: str, what: str) -> None:
    """Raise unless ``path`` is an existing directory."""
    if not os.path.exists(path):
        raise DatasetValidationError(
            f"{header(name)}: {key} '{path}' does not exist (relative paths are resolved "
            f"against the current working directory '{os.getcwd()}'). Fix "
            f"DATASETS.CUSTOM.{name}.{key}: it must be {what}."
        )
    if not os.path.isdir(path):
        raise DatasetValidationError(
            f"{header(name)}: {key} '{path}' is a file, not a directory. Set "
            f"DATASETS.CUSTOM.{name}.{key} to {what}."
        )


def read_text(name: str, key: str, path: str) -> Tuple[str, str]:
    """Read a text file as UTF-8, accepting a byte-order mark and UTF-16/32.

    Returns:
        The text and a note ("" for plain UTF-8, else e.g. "UTF-16") so callers can report
        that a re-encoded copy is used.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetValidationError(
            f"{header(name)}: {key} '{path}' cannot be read ({e.strerror}). Check its permissions."
        ) from None
    encoding, note = "utf-8", ""
    for bom, bom_encoding, bom_note in (
        (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with a byte-order mark"),
        (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
    ):
        if raw.startswith(bom):
            encoding, note = bom_encoding, bom_note
            break
    try:
        return raw.decode(encoding), note
    except UnicodeDecodeError as e:
        raise DatasetValidationError(
            f"{header(name)}: {key} '{path}' is not UTF-8 text ({e.reason} at byte "
            f"{e.start}). Re-save it as UTF-8, or point {key} at the right file."
        ) from None


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
