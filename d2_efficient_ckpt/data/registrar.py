"""Register the datasets a config declares and check the config against them.

:func:`prepare_datasets` is the one call a training script needs, in every process that
builds models or data loaders (each launched worker included): detectron2's catalogs are
per-process, so a dataset registered in the parent is unknown to a spawned worker.
"""

import logging
from typing import Any, Dict, List, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from .errors import DatasetConfigError
from .formats import get_dataset_format
from .validation import check_dataset_names

__all__ = ["check_num_classes", "prepare_datasets", "register_datasets_from_cfg"]

logger = logging.getLogger(__name__)

# Metadata key recording the normalized spec a dataset was registered with; it is what makes
# a repeated registration recognisable as the same one (a no-op) rather than a conflict.
SPEC_METADATA_KEY = "custom_dataset_spec"


def _custom_entries(cfg: CfgNode) -> List[Tuple[str, Any]]:
    custom = cfg.DATASETS.get("CUSTOM")
    if custom is None:
        return []
    return list(custom.items())


def _normalize_all(cfg: CfgNode) -> List[Tuple[str, Any, Dict[str, Any]]]:
    """Check every entry's keys and format; returns (name, format class, normalized spec)."""
    planned = []
    for name, spec in _custom_entries(cfg):
        if not isinstance(spec, dict):  # CfgNode is a dict subclass
            raise DatasetConfigError(
                f"DATASETS.CUSTOM.{name} must be a mapping with FORMAT, ANN_FILE and "
                f"IMAGE_ROOT, got {spec!r}. Write it like:\n"
                f"  {name}: {{FORMAT: coco, ANN_FILE: path/to/annotations.json, "
                "IMAGE_ROOT: path/to/images}"
            )
        fmt = get_dataset_format(spec.get("FORMAT"), name)
        planned.append((name, fmt, fmt.normalize(name, spec)))
    return planned


def _already_registered(name: str, spec: Dict[str, Any]) -> bool:
    """True when ``name`` is registered with exactly ``spec``; raise if with anything else."""
    if name not in DatasetCatalog:
        if name in MetadataCatalog and MetadataCatalog.get(name).get(SPEC_METADATA_KEY):
            # Left behind by an earlier registration whose DatasetCatalog entry was removed;
            # stale json_file/image_root would otherwise clash with the new values.
            MetadataCatalog.remove(name)
        return False
    previous = MetadataCatalog.get(name).get(SPEC_METADATA_KEY)
    if previous is None:
        raise DatasetConfigError(
            f"DATASETS.CUSTOM declares '{name}', but a dataset of that name is already "
            "registered outside DATASETS.CUSTOM (a detectron2 built-in, or by code). Rename "
            f"the entry, e.g. '{name}_custom'. To use the existing dataset, drop the entry "
            "and list the name in DATASETS.TRAIN/TEST only."
        )
    if previous != spec:
        changed = sorted(k for k in set(previous) | set(spec) if previous.get(k) != spec.get(k))
        details = "; ".join(f"{k}: {previous.get(k)!r} -> {spec.get(k)!r}" for k in changed)
        raise DatasetConfigError(
            f"Dataset '{name}' is already registered in this process with a different spec "
            f"({details}). Give the new entry another name in DATASETS.CUSTOM, or call "
            f"DatasetCatalog.remove('{name}') and MetadataCatalog.remove('{name}') first."
        )
    return True


def register_datasets_from_cfg(cfg: CfgNode) -> List[str]:
    """Register every dataset declared under ``cfg.DATASETS.CUSTOM``.

    All entries are checked before any is registered, so a bad entry leaves the catalogs
    untouched: first keys and formats, then name conflicts, then (when
    ``cfg.DATASETS.VALIDATE``) the files and records; only then does registration start.
    Registering the same name with the same spec again in one process is a no-op, and is
    not validated again.

    Relative ``ANN_FILE``/``IMAGE_ROOT`` paths are resolved against the current working
    directory at the time of this call.

    Args:
        cfg: a config extended by ``add_efficient_ckpt_config`` and merged.

    Returns:
        The names declared under ``DATASETS.CUSTOM``, newly registered or already present.

    Raises:
        DatasetConfigError: an entry has a missing/unknown key or an unknown ``FORMAT``, or
            its name is taken by a built-in dataset or by a registration with another spec.
        DatasetValidationError: validation is on and a dataset's files or records are bad.
    """
    planned = _normalize_all(cfg)
    # Name conflicts are cheap to find, so they are reported before any file is read.
    todo = [(name, fmt, spec) for name, fmt, spec in planned if not _already_registered(name, spec)]
    if cfg.DATASETS.get("VALIDATE", True):
        for name, fmt, spec in todo:
            logger.info(f"Validated dataset '{name}': {fmt.validate(name, spec)}")

    started: List[str] = []
    try:
        for name, fmt, spec in todo:
            # Recorded before register(): a failure inside it may leave a partial entry.
            started.append(name)
            fmt.register(name, spec)
            MetadataCatalog.get(name).set(**{SPEC_METADATA_KEY: spec})
    except Exception:
        # Roll back, so one failing register() leaves no half-registered set behind.
        for name in started:
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)
        raise
    if todo:
        logger.info(
            "Registered datasets from DATASETS.CUSTOM: "
            + ", ".join(f"{n} ({s['FORMAT']}: {s['ANN_FILE']})" for n, _, s in todo)
        )
    return [name for name, _, _ in planned]


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

    Every dataset in ``DATASETS.TRAIN`` must have the same ``thing_classes``; datasets whose
    metadata lacks them are loaded once through ``DatasetCatalog.get`` to fill them. With
    ``DATASETS.NUM_CLASSES_FROM_DATA`` the count is written into the config (a frozen config
    is unfrozen for that write and frozen again); otherwise a different value is an error.
    Does nothing when ``DATASETS.TRAIN`` is empty.

    Args:
        cfg: the merged config, with the datasets of ``DATASETS.TRAIN`` registered.

    Raises:
        DatasetConfigError: the training datasets disagree on their classes, or
            ``NUM_CLASSES`` differs from their number and is not taken from the data.
    """
    names = list(dict.fromkeys(cfg.DATASETS.TRAIN))
    if not names:
        return
    reference = _thing_classes(names[0])
    for other in names[1:]:
        classes = _thing_classes(other)
        if classes != reference:
            raise DatasetConfigError(
                f"The datasets in DATASETS.TRAIN disagree on their classes: '{names[0]}' has "
                f"{reference} but '{other}' has {classes}. One model head needs one class "
                "list: make the categories (names and id order) identical in all of them."
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
                f"classes of {sources}: {', '.join(reference)}."
            )
        return
    if configured != num:
        raise DatasetConfigError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {configured}, but the training dataset(s) {sources} "
            f"have {num} classes ({', '.join(reference)}). Set MODEL.ROI_HEADS.NUM_CLASSES "
            f"{num} or DATASETS.NUM_CLASSES_FROM_DATA True."
        )


def prepare_datasets(cfg: CfgNode) -> None:
    """Register the config's datasets and check the config against them.

    Runs :func:`register_datasets_from_cfg`, then checks that ``DATASETS.TRAIN`` and
    ``DATASETS.TEST`` name registered datasets, then :func:`check_num_classes`. Call it in
    every process, before building models or data loaders; repeating it is cheap apart
    from validation, and a no-op for the catalogs.

    Args:
        cfg: the merged config; ``MODEL.ROI_HEADS.NUM_CLASSES`` may be updated in place.

    Raises:
        DatasetConfigError: see the three steps.
        DatasetValidationError: validation is on and a dataset's files or records are bad.
    """
    register_datasets_from_cfg(cfg)
    check_dataset_names(cfg)
    check_num_classes(cfg)
