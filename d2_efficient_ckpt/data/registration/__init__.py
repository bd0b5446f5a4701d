"""The registration pipeline: from ``DATASETS.CUSTOM`` to detectron2's catalogs.

* :mod:`.registrar`: :func:`prepare_datasets` and :func:`register_and_report`, the entry
  points: every entry normalized by its format, the used datasets scanned, the report
  emitted, then every dataset registered;
* :mod:`.catalog`: detectron2's catalogs: name conflicts, metadata, loaders, registration
  of all datasets or none;
* :mod:`.scan`: one dataset read through its format, checked, its evaluator json made;
* :mod:`.cache`: checked datasets kept on disk, keyed by what they were made from;
* :mod:`.dataset_dicts`: checked records to detectron2's dataset dicts.

This is the only room of :mod:`d2_efficient_ckpt.data` that registers anything in
detectron2's ``DatasetCatalog`` and ``MetadataCatalog``.
"""

from .registrar import (
    REPORT_FILE,
    prepare_datasets,
    register_and_report,
    register_datasets_from_cfg,
)

__all__ = ["REPORT_FILE", "prepare_datasets", "register_and_report", "register_datasets_from_cfg"]
