"""Config-driven datasets for detectron2: declare them in ``DATASETS.CUSTOM``, not in code.

Importing this package registers the built-in dataset formats (``coco``, ``voc``, ``yolo``)
in :data:`DATASET_FORMAT_REGISTRY`. Typical use, in every training process::

    from d2_efficient_ckpt.data import prepare_datasets
    prepare_datasets(cfg)  # register, validate, check DATASETS.TRAIN/TEST and NUM_CLASSES

Three rooms: :mod:`.formats` (the format plug-ins and their registry), :mod:`.checks` (the
record, image and cross-dataset checks) and :mod:`.registration` (the pipeline from the
config to detectron2's catalogs), over the shared errors, report, options, image headers
and worker processes at this level.
"""

from .checks import check_dataset_names, check_num_classes
from .errors import DatasetConfigError, DatasetValidationError
from .formats import (
    COCO,
    DATASET_FORMAT_REGISTRY,
    DatasetFormat,
    RawDataset,
    available_formats,
    get_dataset_format,
)
from .options import validation_mode
from .registration import prepare_datasets, register_and_report, register_datasets_from_cfg
from .report import Problem, ValidationReport

__all__ = [
    "COCO",
    "DATASET_FORMAT_REGISTRY",
    "DatasetConfigError",
    "DatasetFormat",
    "DatasetValidationError",
    "Problem",
    "RawDataset",
    "ValidationReport",
    "available_formats",
    "check_dataset_names",
    "check_num_classes",
    "get_dataset_format",
    "prepare_datasets",
    "register_and_report",
    "register_datasets_from_cfg",
    "validation_mode",
]
