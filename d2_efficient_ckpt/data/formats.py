"""Pluggable on-disk dataset formats that ``DATASETS.CUSTOM`` entries can name.

A format turns one ``DATASETS.CUSTOM.<name>`` entry into a dataset in detectron2's
``DatasetCatalog`` and ``MetadataCatalog``. New formats (VOC, YOLO, ...) are added by
registering another :class:`DatasetFormat` subclass; nothing else needs to change.
"""

import logging
import os
from typing import Any, Dict, List, Mapping, Tuple, Type

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.utils.registry import Registry

from .errors import DatasetConfigError
from .validation import validate_coco_dataset

__all__ = [
    "COCO",
    "DATASET_FORMAT_REGISTRY",
    "DatasetFormat",
    "available_formats",
    "get_dataset_format",
]

logger = logging.getLogger(__name__)

DATASET_FORMAT_REGISTRY = Registry("DATASET_FORMAT")
DATASET_FORMAT_REGISTRY.__doc__ = """
Registry of dataset formats, looked up by the ``FORMAT`` key of a ``DATASETS.CUSTOM`` entry.

Contract: a registered object is a class (normally a :class:`DatasetFormat` subclass) whose
``__name__`` is the format name, matched case-insensitively (``class COCO`` serves
``FORMAT: coco``). It provides three classmethods, each given the dataset name and the
entry's spec:

* ``normalize(name, spec: CfgNode) -> dict``: check the entry's keys and return a plain dict
  with ``FORMAT`` lower-cased and every path made absolute. Raise
  :class:`DatasetConfigError` for a missing, empty or unknown key.
* ``validate(name, spec: dict) -> str``: check the files and records on disk, return a
  one-line summary for the log, and raise :class:`DatasetValidationError` naming the file,
  the offending records and the fix when anything is wrong. Must not register anything.
* ``register(name, spec: dict) -> None``: put the dataset into ``DatasetCatalog`` (a lazy
  loader returning detectron2's standard dataset dicts) and into ``MetadataCatalog`` with
  at least ``evaluator_type``, ``json_file`` (a COCO json for ``COCOEvaluator``) and
  ``image_root``. ``thing_classes`` must be set, at the latest, when the loader runs.

Register a new format with::

    @DATASET_FORMAT_REGISTRY.register()
    class VOC(DatasetFormat):
        ...
"""

# Keys every entry may carry besides the format's own ones.
_COMMON_KEYS = ("FORMAT",)

# Shown in "missing key" errors so the fix can be pasted into a yaml file.
_EXAMPLES = {
    "ANN_FILE": "datasets/my_data/annotations/train.json",
    "IMAGE_ROOT": "datasets/my_data/images/train",
}


class DatasetFormat:
    """Base class of dataset formats: key checking and path resolution shared by all formats.

    Subclasses set :attr:`REQUIRED_KEYS`, :attr:`OPTIONAL_KEYS` and :attr:`PATH_KEYS`, and
    implement :meth:`validate` and :meth:`register`.
    """

    #: Keys that must be present with a non-empty value.
    REQUIRED_KEYS: Tuple[str, ...] = ("ANN_FILE", "IMAGE_ROOT")
    #: Keys that may be present; any other key is treated as a typo.
    OPTIONAL_KEYS: Tuple[str, ...] = ()
    #: Keys holding filesystem paths, resolved against the current working directory.
    PATH_KEYS: Tuple[str, ...] = ("ANN_FILE", "IMAGE_ROOT")

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
            :meth:`validate`, :meth:`register` and for comparing two registrations.

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
    def validate(cls, name: str, spec: Dict[str, Any]) -> str:
        """Check the dataset's files and records; see ``DATASET_FORMAT_REGISTRY``.

        Args:
            name: the dataset name.
            spec: the output of :meth:`normalize`.

        Returns:
            A one-line summary for the log.

        Raises:
            DatasetValidationError: the files or records are unusable.
        """
        raise NotImplementedError

    @classmethod
    def register(cls, name: str, spec: Dict[str, Any]) -> None:
        """Register the dataset in detectron2's catalogs; see ``DATASET_FORMAT_REGISTRY``.

        Args:
            name: the dataset name.
            spec: the output of :meth:`normalize`.
        """
        raise NotImplementedError


@DATASET_FORMAT_REGISTRY.register()
class COCO(DatasetFormat):
    """COCO instances json (``images``, ``annotations``, ``categories``) plus an image folder.

    Keys: ``ANN_FILE`` (the json) and ``IMAGE_ROOT`` (the folder that ``file_name`` of each
    image is relative to). Loading uses detectron2's ``load_coco_json``, so category ids are
    mapped to contiguous ids and ``thing_classes`` is filled on first load, exactly as for
    detectron2's built-in COCO datasets, and ``COCOEvaluator`` reads ``json_file`` directly.
    """

    @classmethod
    def validate(cls, name: str, spec: Dict[str, Any]) -> str:
        """See :meth:`DatasetFormat.validate`."""
        summary = validate_coco_dataset(name, spec["ANN_FILE"], spec["IMAGE_ROOT"])
        return (
            f"{summary.num_images} images, {summary.num_annotations} annotations, "
            f"{len(summary.thing_classes)} categories ({', '.join(summary.thing_classes)})"
        )

    @classmethod
    def register(cls, name: str, spec: Dict[str, Any]) -> None:
        """See :meth:`DatasetFormat.register`."""
        ann_file, image_root = spec["ANN_FILE"], spec["IMAGE_ROOT"]
        # Bind the paths now: the loader runs later, possibly after the cfg has changed.
        DatasetCatalog.register(name, lambda: load_coco_json(ann_file, image_root, name))
        MetadataCatalog.get(name).set(
            json_file=ann_file, image_root=image_root, evaluator_type="coco"
        )


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
