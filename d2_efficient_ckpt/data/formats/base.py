"""The format plug-in contract: :class:`DatasetFormat`, its registry and the lookup by name.

A format turns one ``DATASETS.CUSTOM.<name>`` entry into COCO-shaped records in memory;
checking them (:mod:`d2_efficient_ckpt.data.checks`), caching a COCO json for the evaluator
and registering the dataset (:mod:`d2_efficient_ckpt.data.registration`) are the same for
every format. New formats are added by registering another :class:`DatasetFormat`
subclass; the built-in ones are ``coco``, ``voc`` and ``yolo``, one module each.
"""

import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple, Type

from detectron2.utils.registry import Registry

from ..errors import DatasetConfigError
from ..report import ValidationReport

__all__ = [
    "DATASET_FORMAT_REGISTRY",
    "DatasetFormat",
    "RawDataset",
    "available_formats",
    "check_names",
    "get_dataset_format",
]

DATASET_FORMAT_REGISTRY = Registry("DATASET_FORMAT")
DATASET_FORMAT_REGISTRY.__doc__ = """
Registry of dataset formats, looked up by the ``FORMAT`` key of a ``DATASETS.CUSTOM`` entry.

Contract: a registered object is a class (normally a :class:`DatasetFormat` subclass) whose
``__name__`` is the format name, matched case-insensitively (``class COCO`` serves
``FORMAT: coco``). It provides these classmethods, each given the dataset name and the
entry's spec:

* ``normalize(name, spec: CfgNode) -> dict``: check the entry's keys and return a plain dict
  with ``FORMAT`` lower-cased and every path made absolute. Raise
  :class:`DatasetConfigError` for a missing, empty or unknown key.
* ``source_files(name, spec: dict) -> list | None``: every file the records are read from
  (annotations, labels, images), found without parsing anything, so that an unchanged
  dataset is recognised from ``os.stat`` alone; ``None`` when that needs parsing (COCO).
* ``read(name, spec: dict, report, workers=0) -> RawDataset``: read the files into
  COCO-shaped records (``images``, ``annotations``, ``categories``). Images may lack
  ``width``/``height`` and annotations may carry ``yolo_box`` instead of ``bbox`` (or come
  as a ``box_table``); the shared checks fill them in, from ``image_infos`` (``{image id:
  ImageInfo}``) for headers the reader read itself. ``workers`` is
  ``DATASETS.VALIDATION_WORKERS``, for formats that read many files in worker processes.
  Raise :class:`DatasetValidationError` when nothing can be read; add per-record problems
  to ``report``. Must not register anything.

A class attribute ``WRITES_JSON`` says whether the evaluator needs a COCO json written for
it (True for every format whose source is not a COCO json).

Register a new format with::

    @DATASET_FORMAT_REGISTRY.register()
    class MyFormat(DatasetFormat):
        ...
"""

# Keys every entry may carry besides the format's own ones.
_COMMON_KEYS = ("FORMAT",)

# Shown in "missing key" errors so the fix can be pasted into a yaml file.
_EXAMPLES = {
    "ANN_FILE": "datasets/my_data/annotations/train.json",
    "IMAGE_ROOT": "datasets/my_data/images/train",
    "ROOT": "datasets/VOC2012",
    "SPLIT": "train",
}


class RawDataset(NamedTuple):
    """COCO-shaped records of one dataset, before the shared checks."""

    data: Dict[str, Any]
    #: Folder that each image's ``file_name`` is relative to.
    image_root: str
    #: The annotation file or folder, named in the report.
    source: str
    #: The source COCO json, when the evaluator can read it as it is.
    json_file: Optional[str] = None


class DatasetFormat:
    """Base class of dataset formats: key checking and path resolution shared by all formats.

    Subclasses set :attr:`REQUIRED_KEYS`, :attr:`OPTIONAL_KEYS` and :attr:`PATH_KEYS`, and
    implement :meth:`read` (and :meth:`source_files` when they can).
    """

    #: Keys that must be present with a non-empty value.
    REQUIRED_KEYS: Tuple[str, ...] = ("ANN_FILE", "IMAGE_ROOT")
    #: Keys that may be present; any other key is treated as a typo.
    OPTIONAL_KEYS: Tuple[str, ...] = ()
    #: Keys holding filesystem paths, resolved against the current working directory.
    PATH_KEYS: Tuple[str, ...] = ("ANN_FILE", "IMAGE_ROOT")
    #: True when the evaluator's COCO json must be written (the source is not one).
    WRITES_JSON: bool = True

    @classmethod
    def format_name(cls) -> str:
        """Returns the name ``FORMAT`` values are matched against (lower case)."""
        return cls.__name__.lower()

    @classmethod
    def normalize(cls, name: str, spec: Mapping[str, Any]) -> Dict[str, Any]:
        """Check an entry's keys and resolve its paths.

        Relative paths are resolved against the current working directory of the process
        that calls this, so run training from the directory the config's paths assume
        (usually the repository root) or use absolute paths.

        Args:
            name: the dataset name (the key under ``DATASETS.CUSTOM``).
            spec: the entry, e.g. ``{"FORMAT": "coco", "ANN_FILE": ..., "IMAGE_ROOT": ...}``.

        Returns:
            A plain dict with ``FORMAT`` lower-cased and absolute paths, suitable for
            :meth:`read` and for comparing two registrations.

        Raises:
            DatasetConfigError: a required key is missing or empty, or an unknown key is set.
        """
        where = f"DATASETS.CUSTOM.{name}"
        allowed = _COMMON_KEYS + cls.REQUIRED_KEYS + cls.OPTIONAL_KEYS
        unknown = sorted(k for k in spec if k not in allowed)
        if unknown:
            raise DatasetConfigError(
                f"{where} has unknown key(s) {unknown} for format '{cls.format_name()}'. "
                f"Allowed keys are {list(allowed)}; check the spelling (keys are upper case)."
            )
        for key in cls.REQUIRED_KEYS:
            value = spec.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DatasetConfigError(
                    f"{where} is missing {key}. Add it, e.g. {where}.{key}: "
                    f'"{_EXAMPLES.get(key, "...")}" (relative paths are resolved against the '
                    "current working directory)."
                )
        out: Dict[str, Any] = {"FORMAT": cls.format_name()}
        for key in cls.REQUIRED_KEYS + cls.OPTIONAL_KEYS:
            if key not in spec:
                continue
            value = spec[key]
            if key in cls.PATH_KEYS:
                if not isinstance(value, str):
                    raise DatasetConfigError(
                        f"{where}.{key} must be a path string, got {value!r} "
                        f"({type(value).__name__}). Quote it in the yaml file."
                    )
                value = os.path.abspath(os.path.expanduser(value))
            out[key] = value
        return out

    @classmethod
    def source_files(cls, name: str, spec: Dict[str, Any]) -> Optional[List[str]]:
        """Every file the records come from, or None; see ``DATASET_FORMAT_REGISTRY``."""
        return None

    @classmethod
    def read(
        cls, name: str, spec: Dict[str, Any], report: ValidationReport, workers: int = 0
    ) -> RawDataset:
        """Read the records; see ``DATASET_FORMAT_REGISTRY``.

        Args:
            name: the dataset name.
            spec: the output of :meth:`normalize`.
            report: where per-record problems go.
            workers: worker processes for reading many files (0: automatic).

        Returns:
            COCO-shaped records.

        Raises:
            DatasetValidationError: the files cannot be read at all.
        """
        raise NotImplementedError


def check_names(name: str, names: Any) -> List[str]:
    """Check a ``NAMES`` value: a list of unique, non-empty strings.

    Shared by the formats whose classes can be listed in the config (``voc``, ``yolo``).

    Args:
        name: the dataset name.
        names: the value of ``NAMES`` (or of a data.yaml's ``names``).

    Returns:
        The names, as a list of strings.

    Raises:
        DatasetConfigError: not a non-empty list of unique, non-empty strings.
    """
    where = f"DATASETS.CUSTOM.{name}.NAMES"
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetConfigError(
            f"{where} must be a non-empty list of class names, got {names!r}. Write it like "
            f"{where}: [cat, dog]."
        )
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise DatasetConfigError(f"{where} holds non-names {bad!r}; every entry must be text.")
    dups = sorted({n for n in names if list(names).count(n) > 1})
    if dups:
        raise DatasetConfigError(
            f"{where} lists {dups} more than once; one model class needs one name. Remove the "
            "repeats."
        )
    return [str(n) for n in names]


def available_formats() -> List[str]:
    """Returns the registered format names, lower case and sorted."""
    return sorted(key.lower() for key, _ in DATASET_FORMAT_REGISTRY)


def get_dataset_format(fmt: str, dataset_name: str = "") -> Type[DatasetFormat]:
    """Look up a format by name, ignoring case.

    Args:
        fmt: the ``FORMAT`` value of a ``DATASETS.CUSTOM`` entry, e.g. ``"coco"`` or ``"COCO"``.
        dataset_name: the entry's name, only used to make the error message point at it.

    Returns:
        The registered format class.

    Raises:
        DatasetConfigError: no format of that name is registered.
    """
    where = f"DATASETS.CUSTOM.{dataset_name}.FORMAT" if dataset_name else "FORMAT"
    if not isinstance(fmt, str) or not fmt.strip():
        raise DatasetConfigError(
            f"{where} is missing or empty. Set it to one of the known formats: "
            f"{available_formats()}."
        )
    matches = [obj for key, obj in DATASET_FORMAT_REGISTRY if key.lower() == fmt.strip().lower()]
    if not matches:
        raise DatasetConfigError(
            f"{where} is '{fmt}', which is not a known dataset format. Known formats are "
            f"{available_formats()}; new ones are added to DATASET_FORMAT_REGISTRY."
        )
    if len(matches) > 1:
        # Two classes differing only in case would make the lookup depend on dict order.
        raise DatasetConfigError(
            f"Format name '{fmt}' is registered more than once in DATASET_FORMAT_REGISTRY "
            f"(differing only in case): {[m.__name__ for m in matches]}. Rename one of them."
        )
    return matches[0]
