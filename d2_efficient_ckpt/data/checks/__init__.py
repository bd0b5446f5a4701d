"""Checks of datasets: the records of one dataset, and datasets against each other.

* :mod:`.records`: :func:`check_records`, the one pass over a dataset's COCO-shaped records
  that every format shares, built from :mod:`.categories` (problems no fix resolves),
  :mod:`.images` (image records and files) and :mod:`.annotations` (one annotation at a
  time), with the JSON type tests of :mod:`.json_types`;
* :mod:`.cross_dataset`: class lists across datasets, ``DATASETS.TRAIN``/``TEST`` names and
  ``MODEL.ROI_HEADS.NUM_CLASSES``.

Checks add rows to a :class:`~d2_efficient_ckpt.data.report.ValidationReport` or raise; they
read no format's files but the images, and register nothing.
"""

from .cross_dataset import check_cross_dataset, check_dataset_names, check_num_classes
from .records import CheckResult, check_records

__all__ = [
    "CheckResult",
    "check_cross_dataset",
    "check_dataset_names",
    "check_num_classes",
    "check_records",
]
