"""Register the datasets a config declares and check the config against them.

:func:`prepare_datasets` is the one call a training script needs, in every process that
builds models or data loaders (each launched worker included): detectron2's catalogs are
per-process, so a dataset registered in the parent is unknown to a spawned worker.

Datasets used by ``DATASETS.TRAIN``/``TEST`` are checked (``DATASETS.VALIDATION``), with
every problem of every dataset collected into one :class:`ValidationReport`: a table in
the log and ``dataset_report.json`` in ``OUTPUT_DIR``. Declared datasets that no split of
the run uses (e.g. inherited from a base config) are registered without reading anything;
they are checked, with the configured fixes, when first loaded. The catalog entries
themselves are :mod:`.catalog`'s.
"""

import logging
import os
from typing import Any, Dict, List, Optional, Set, Tuple

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from ..checks import check_cross_dataset, check_dataset_names, check_num_classes
from ..errors import DatasetConfigError, DatasetValidationError
from ..formats import get_dataset_format
from ..options import CheckOptions, check_options, validation_mode
from ..report import ERROR, ValidationReport
from .cache import default_cache_dir
from .catalog import Planned, already_registered, register_all
from .scan import ScannedDataset, scan_dataset

__all__ = [
    "REPORT_FILE",
    "prepare_datasets",
    "register_datasets_from_cfg",
    "register_and_report",
]

logger = logging.getLogger(__name__)

#: File name of the JSON report in OUTPUT_DIR.
REPORT_FILE = "dataset_report.json"


def _custom_entries(cfg: CfgNode) -> List[Tuple[str, Any]]:
    custom = cfg.DATASETS.get("CUSTOM")
    if custom is None:
        return []
    return list(custom.items())


def _normalize_all(cfg: CfgNode) -> List[Planned]:
    """Check every entry's keys and format; returns (name, format class, normalized spec)."""
    planned = []
    for name, spec in _custom_entries(cfg):
        if not isinstance(spec, dict):  # CfgNode is a dict subclass
            raise DatasetConfigError(
                f"DATASETS.CUSTOM.{name} must be a mapping with FORMAT and the format's keys, "
                f"got {spec!r}. Write it like:\n"
                f"  {name}: {{FORMAT: coco, ANN_FILE: path/to/annotations.json, "
                "IMAGE_ROOT: path/to/images}"
            )
        fmt = get_dataset_format(spec.get("FORMAT"), name)
        planned.append((name, fmt, fmt.normalize(name, spec)))
    return planned


def _names_in(cfg: CfgNode, key: str) -> List[str]:
    value = cfg.DATASETS.get(key, ())
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def _emit(cfg: CfgNode, report: ValidationReport, mode: str) -> Optional[str]:
    """Log the report as a table and write it to OUTPUT_DIR; returns the JSON path."""
    level = logging.WARNING if not report.clean else logging.INFO
    logger.log(level, f"Dataset validation report ({mode}):\n{report.table()}")
    out_dir = cfg.get("OUTPUT_DIR", "")
    if not out_dir:
        return None
    if not comm.is_main_process():
        return None
    path = os.path.join(out_dir, REPORT_FILE)
    try:
        report.write_json(path)
    except OSError as e:
        logger.warning(f"Could not write the dataset report to '{path}': {e.strerror}")
        return None
    return path


def _validate(
    cfg: CfgNode,
    todo: List[Planned],
    mode: str,
    options: CheckOptions,
    cache_dir: str,
    report: ValidationReport,
    raise_on_errors: bool,
) -> Dict[str, ScannedDataset]:
    """Check the datasets of ``todo`` that the run uses, and the checks across datasets.

    Returns:
        The checked datasets by name.

    Raises:
        DatasetValidationError: ``raise_on_errors`` and the report has errors that stop the
            run (any error under ``error``, one that no fix resolves under ``warn``).
    """
    used = set(_names_in(cfg, "TRAIN")) | set(_names_in(cfg, "TEST"))
    scanned: Dict[str, ScannedDataset] = {}
    for name, fmt, spec in todo:
        if name in used:
            scanned[name] = scan_dataset(name, fmt, spec, options, report, cache_dir)[0]
    if not scanned:
        return scanned
    check_cross_dataset(cfg, _known_classes(scanned, used), report.summaries, report)
    path = _emit(cfg, report, mode)
    if raise_on_errors:
        _raise_for_errors(report, mode, path)
    return scanned


def _known_classes(scanned: Dict[str, ScannedDataset], used: Set[str]) -> Dict[str, List[str]]:
    """``thing_classes`` of the checked datasets and of the used ones registered before."""
    classes = {n: s.thing_classes for n, s in scanned.items()}
    for name in used - set(classes):
        known = (
            MetadataCatalog.get(name).get("thing_classes", None)
            if (name in MetadataCatalog.list())
            else None
        )
        if known is not None:
            classes[name] = list(known)
    return classes


def _raise_for_errors(report: ValidationReport, mode: str, path: Optional[str]) -> None:
    """Raise when the report's errors stop the run; nothing is registered then."""
    where = f" The full report is in '{path}'." if path else ""
    if mode == "error" and report.has(ERROR):
        raise DatasetValidationError(
            "Dataset validation found problems (DATASETS.VALIDATION error); nothing "
            f"was registered.{where} Fix them, or set DATASETS.VALIDATION warn to apply "
            f"the listed actions and train anyway:\n{report.describe(ERROR)}"
        )
    unfixable = [p for p in report.problems(severity=ERROR) if p.action == "none"]
    if unfixable:
        raise DatasetValidationError(
            "Dataset validation found problems that no configured fix resolves, so "
            f"training cannot start; nothing was registered.{where}\n"
            + "\n".join(p.describe() for p in unfixable)
        )


def register_and_report(
    cfg: CfgNode, raise_on_errors: bool = True
) -> Tuple[List[str], ValidationReport, Dict[str, ScannedDataset]]:
    """Register every dataset of ``DATASETS.CUSTOM``; check those the run uses.

    In order: every entry's keys and format; name conflicts; then, unless
    ``DATASETS.VALIDATION`` is off, the files and records of each dataset named in
    ``DATASETS.TRAIN``/``TEST`` and the checks across them, all collected into one report
    (logged as a table, written to ``OUTPUT_DIR/dataset_report.json``). Only then does
    registration start, so an error leaves the catalogs untouched. Registering the same
    name with the same spec again is a no-op, and not validated again.

    Args:
        cfg: a config extended by ``add_efficient_ckpt_config`` and merged.
        raise_on_errors: raise when the report has errors and the mode is ``error``; False
            registers with the fixes applied (``tools/check_dataset.py``).

    Returns:
        The declared names, the report, and the checked datasets by name.

    Raises:
        DatasetConfigError: a bad entry or config value, or a name clash.
        DatasetValidationError: the report has errors under ``DATASETS.VALIDATION error``,
            or a dataset cannot be read at all.
    """
    planned = _normalize_all(cfg)
    mode = validation_mode(cfg)
    options = check_options(cfg, mode)
    cache_dir = default_cache_dir(cfg.DATASETS.get("CACHE_DIR", ""))
    # Name conflicts are cheap to find, so they are reported before any file is read.
    todo = [(n, f, s) for n, f, s in planned if not already_registered(n, s)]
    report = ValidationReport()
    scanned: Dict[str, ScannedDataset] = {}
    if mode != "off":
        scanned = _validate(cfg, todo, mode, options, cache_dir, report, raise_on_errors)
    register_all(todo, scanned, options, cache_dir)
    return [name for name, _, _ in planned], report, scanned


def register_datasets_from_cfg(cfg: CfgNode) -> List[str]:
    """Register every dataset of ``DATASETS.CUSTOM``; see :func:`register_and_report`.

    Args:
        cfg: a config extended by ``add_efficient_ckpt_config`` and merged.

    Returns:
        The names declared under ``DATASETS.CUSTOM``, newly registered or already present.
    """
    return register_and_report(cfg)[0]


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
