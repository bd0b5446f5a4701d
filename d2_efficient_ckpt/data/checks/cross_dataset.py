"""Checks across datasets and against the config: names in DATASETS.TRAIN/TEST, class lists
of train and test datasets, ``MODEL.ROI_HEADS.NUM_CLASSES``, and a training set with nothing
to train on.

Per-record checks live in :mod:`.records`; these need several datasets or the config.
"""

import difflib
import logging
from typing import Any, Dict, List, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetConfigError
from ..report import ERROR, ValidationReport

__all__ = ["check_cross_dataset", "check_dataset_names", "check_num_classes", "short_names"]

logger = logging.getLogger(__name__)

# Where cross-dataset rows go in the report.
CONFIG_ROW = "(config)"


def short_names(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c`` for a few names; the first ``limit`` and a count for many."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, ... ({len(names)} in all)"


def _diff(a: List[str], b: List[str]) -> str:
    only_a = [n for n in a if n not in b]
    only_b = [n for n in b if n not in a]
    if not only_a and not only_b:
        return "same names in another order"
    return (
        f"only in the first: [{short_names(only_a)}]; only in the second: [{short_names(only_b)}]"
    )


def check_cross_dataset(
    cfg: CfgNode,
    classes: Dict[str, List[str]],
    summaries: Dict[str, Dict[str, Any]],
    report: ValidationReport,
) -> None:
    """Add rows for problems between datasets and with the config.

    Args:
        cfg: the merged config.
        classes: ``thing_classes`` of each dataset of DATASETS.TRAIN/TEST that is known.
        summaries: per-dataset counts (``images_with_annotations``) of the checked ones.
        report: where the rows go, under the dataset name ``(config)``.
    """
    train = [n for n in dict.fromkeys(cfg.DATASETS.TRAIN) if n in classes]
    test = [n for n in dict.fromkeys(cfg.DATASETS.TEST) if n in classes]
    if train:
        ref_name, ref = train[0], classes[train[0]]
        for other in train[1:] + [t for t in test if t not in train]:
            if classes[other] != ref:
                kind = "train" if other in train else "test"
                report.add(
                    CONFIG_ROW,
                    ERROR,
                    f"{kind} datasets whose classes differ from the training set's",
                    "make the categories (names and id order) identical in all datasets of a run; "
                    "one model head has one class list.",
                    f"'{other}' vs '{ref_name}': {_diff(classes[other], ref)}",
                )
        num = len(ref)
        configured = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        if not cfg.DATASETS.get("NUM_CLASSES_FROM_DATA", False) and configured != num:
            report.add(
                CONFIG_ROW,
                ERROR,
                "MODEL.ROI_HEADS.NUM_CLASSES that disagrees with the data",
                f"set MODEL.ROI_HEADS.NUM_CLASSES {num} or DATASETS.NUM_CLASSES_FROM_DATA True.",
                f"NUM_CLASSES is {configured}, '{ref_name}' has {num} classes ({short_names(ref)})",
            )
    checked = [n for n in dict.fromkeys(cfg.DATASETS.TRAIN) if n in summaries]
    if (
        checked
        and len(checked) == len(set(cfg.DATASETS.TRAIN))
        and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        and sum(summaries[n].get("images_with_annotations", 0) for n in checked) == 0
    ):
        report.add(
            CONFIG_ROW,
            ERROR,
            "training sets with no annotated image",
            "annotate the images (or check that the labels point at them); with "
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS True every image without a box is skipped, "
            "leaving nothing to train on.",
            f"DATASETS.TRAIN {tuple(checked)}",
        )


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


def _thing_classes(name: str) -> List[str]:
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes")
    if classes is None:
        # Formats fill thing_classes when their loader runs (load_coco_json does).
        DatasetCatalog.get(name)
        classes = meta.get("thing_classes")
    if classes is None:
        raise DatasetConfigError(
            f"Dataset '{name}' has no thing_classes in its metadata even after loading it, so "
            "MODEL.ROI_HEADS.NUM_CLASSES cannot be checked. Set them with "
            f"MetadataCatalog.get('{name}').thing_classes = [...] when registering it."
        )
    return list(classes)


def check_num_classes(cfg: CfgNode) -> None:
    """Check, or set, ``MODEL.ROI_HEADS.NUM_CLASSES`` from the training datasets' classes.

    Every dataset in ``DATASETS.TRAIN`` must have the same ``thing_classes``, and so must
    every dataset of ``DATASETS.TEST`` whose classes are known; training datasets whose
    metadata lacks them are loaded once through ``DatasetCatalog.get`` to fill them. With
    ``DATASETS.NUM_CLASSES_FROM_DATA`` the count is written into the config (a frozen config
    is unfrozen for that write and frozen again); otherwise a different value is an error.
    Does nothing when ``DATASETS.TRAIN`` is empty.

    Args:
        cfg: the merged config, with the datasets of ``DATASETS.TRAIN`` registered.

    Raises:
        DatasetConfigError: the datasets disagree on their classes, or
            ``NUM_CLASSES`` differs from their number and is not taken from the data.
    """
    names = list(dict.fromkeys(cfg.DATASETS.TRAIN))
    if not names:
        return
    reference = _thing_classes(names[0])
    tests = [
        n
        for n in dict.fromkeys(cfg.DATASETS.TEST)
        if n not in names
        and n in MetadataCatalog.list()
        and MetadataCatalog.get(n).get("thing_classes", None) is not None
    ]
    for other in names[1:] + tests:
        classes = _thing_classes(other)
        if classes != reference:
            key = "TRAIN" if other in names else "TEST"
            raise DatasetConfigError(
                f"'{other}' in DATASETS.{key} has other classes than '{names[0]}' in "
                f"DATASETS.TRAIN: [{short_names(classes)}] vs [{short_names(reference)}]. One "
                "model head needs one class list: make the categories (names and id order) "
                "identical in all datasets of the run."
            )
    num = len(reference)
    configured = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    sources = ", ".join(f"'{n}'" for n in names)
    if cfg.DATASETS.get("NUM_CLASSES_FROM_DATA", False):
        if configured != num:
            was_frozen = cfg.is_frozen()
            cfg.defrost()
            try:
                cfg.MODEL.ROI_HEADS.NUM_CLASSES = num
            finally:
                if was_frozen:
                    cfg.freeze()
            logger.info(
                f"Set MODEL.ROI_HEADS.NUM_CLASSES to {num} (was {configured}) from the "
                f"classes of {sources}: {short_names(reference)}."
            )
        return
    if configured != num:
        raise DatasetConfigError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {configured}, but the training dataset(s) {sources} "
            f"have {num} classes ({short_names(reference)}). Set MODEL.ROI_HEADS.NUM_CLASSES "
            f"{num} or DATASETS.NUM_CLASSES_FROM_DATA True."
        )
