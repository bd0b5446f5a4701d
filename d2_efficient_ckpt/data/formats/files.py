"""Reading the files that datasets are declared with: paths checked, text decoded.

Shared by the format readers. Every failure here is fatal for the dataset (there is nothing
to check without the file) and raises :class:`DatasetValidationError` naming the dataset,
the file and the fix. Nothing is opened before ``os.stat`` says it is a regular file:
opening a FIFO blocks forever.
"""

import codecs
import os
import stat
from typing import Tuple

from ..errors import DatasetValidationError

__all__ = ["check_dir", "check_file", "header", "read_text"]


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
