"""Dataset formats that ``DATASETS.CUSTOM`` entries name in ``FORMAT``, and their registry.

Importing this package registers the built-in formats in :data:`DATASET_FORMAT_REGISTRY`,
as detectron2's ``data/datasets/__init__.py`` registers its built-in datasets:

* :mod:`.base`: the :class:`DatasetFormat` contract, the registry and the lookup by name;
* :mod:`.files`: checks and reads of declared files, shared by the readers;
* :mod:`.coco`, :mod:`.voc` and :mod:`.yolo`: one format each.

Formats read files into COCO-shaped records and nothing else: they know nothing of the
record checks or of registration.
"""

from . import coco as _coco  # noqa: F401  (registers FORMAT: coco)
from . import voc as _voc  # noqa: F401  (registers FORMAT: voc)
from . import yolo as _yolo  # noqa: F401  (registers FORMAT: yolo)
from .base import (
    DATASET_FORMAT_REGISTRY,
    DatasetFormat,
    RawDataset,
    available_formats,
    get_dataset_format,
)
from .coco import COCO

__all__ = [
    "COCO",
    "DATASET_FORMAT_REGISTRY",
    "DatasetFormat",
    "RawDataset",
    "available_formats",
    "get_dataset_format",
]
