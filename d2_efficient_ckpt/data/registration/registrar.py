"""Register the datasets a config declares and check the config against them.

:func:`prepare_datasets` is the one call a training script needs, in every process that
builds models or data loaders (each launched worker included): detectron2's catalogs are
per-process, so a dataset registered in the parent is unknown to a spawned worker.

Datasets used by ``DATASETS.TRAIN``/``TEST`` are checked (``DATASETS.VALIDATION``), with
every problem of every dataset collected into one :class:`ValidationReport`: a table in
the log and ``dataset_report.json`` in ``OUTPUT_DIR``. Declared datasets that no split of
the run uses (e.g. inherited from a base config) are registered without reading anything;
they are checked, with the configured fixes, when first loaded.
"""

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..checks import check_cross_dataset, check_dataset_names, check_num_classes
from ..errors import DatasetConfigError, DatasetValidationError
from ..formats import DatasetFormat, get_dataset_format
from ..options import CheckOptions, check_options, validation_mode
from ..report import ERROR, WARNING, ValidationReport
from .cache import default_cache_dir
from .dataset_dicts import to_dataset_dicts
from .scan import ScannedDataset, category_table, load_dataset_dicts, scan_dataset

__all__ = [
    "REPORT_FILE",
    "prepare_datasets",
    "register_datasets_from_cfg",
    "register_and_report",
]

logger = logging.getLogger(__name__)

# Metadata key recording the normalized spec a dataset was registered with; it is what makes
# a repeated registration recognisable as the same one (a no-op) rather than a conflict.
SPEC_METADATA_KEY = "custom_dataset_spec"
#: File name of the JSON report in OUTPUT_DIR.
REPORT_FILE = "dataset_report.json"

Planned = Tuple[str, Any, Dict[str, Any]]


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


def _describe_existing(name: str) -> str:
    meta = MetadataCatalog.get(name) if name in MetadataCatalog.list() else None
    if meta is None:
        return "registered by code, no metadata"
    shown = {
        k: meta.get(k)
        for k in ("evaluator_type", "json_file", "image_root", "dirname", "split")
        if meta.get(k, None) is not None
    }
    return ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "no metadata"


def _already_registered(name: str, spec: Dict[str, Any]) -> bool:
    """True when ``name`` is registered with exactly ``spec``; raise if with anything else."""
    if name not in DatasetCatalog:
        if name in MetadataCatalog.list() and MetadataCatalog.get(name).get(SPEC_METADATA_KEY):
            # Left behind by an earlier registration whose DatasetCatalog entry was removed;
            # stale json_file/image_root would otherwise clash with the new values.
            MetadataCatalog.remove(name)
        return False
    previous = MetadataCatalog.get(name).get(SPEC_METADATA_KEY)
    if previous is None:
        raise DatasetConfigError(
            f"DATASETS.CUSTOM declares '{name}', but a dataset of that name is already "
            "registered outside DATASETS.CUSTOM (a detectron2 built-in, or by code).\n"
            f"  existing: {_describe_existing(name)}\n"
            f"  declared: {spec}\n"
            f"Rename the entry, e.g. '{name}_custom'. To use the existing dataset, drop the "
            "entry and list the name in DATASETS.TRAIN/TEST only."
        )
    if previous != spec:
        changed = sorted(k for k in set(previous) | set(spec) if previous.get(k) != spec.get(k))
        details = "; ".join(f"{k}: {previous.get(k)!r} -> {spec.get(k)!r}" for k in changed)
        raise DatasetConfigError(
            f"Dataset '{name}' is already registered in this process with a different spec "
            f"({details}).\n  registered: {previous}\n  declared:   {spec}\nGive the new "
            f"entry another name in DATASETS.CUSTOM, or call DatasetCatalog.remove('{name}') "
            f"and MetadataCatalog.remove('{name}') first."
        )
    return True


def _set_metadata(name: str, scanned: ScannedDataset, spec: Optional[Dict[str, Any]]) -> None:
    meta = MetadataCatalog.get(name)
    values = {
        "json_file": scanned.json_file,
        "image_root": scanned.image_root,
        "evaluator_type": "coco",
        "thing_classes": list(scanned.thing_classes),
        "thing_dataset_id_to_contiguous_id": dict(scanned.id_map),
    }
    if spec is not None:
        values[SPEC_METADATA_KEY] = spec
    for key, value in values.items():
        if meta.get(key, None) is not None and meta.get(key) != value:
            # A reload after the files changed: Metadata refuses to overwrite a value.
            vars(meta).pop(key)
    meta.set(**values)


def _lazy_loader(
    name: str, fmt: DatasetFormat, spec: Dict[str, Any], options: CheckOptions, cache_dir: str
) -> Callable[[], List[Dict[str, Any]]]:
    """A loader that checks the dataset (applying the fixes) when it is first loaded."""

    def load() -> List[Dict[str, Any]]:
        report = ValidationReport()
        scanned, data = scan_dataset(name, fmt, spec, options, report, cache_dir, keep_data=True)
        if report.has(ERROR) or report.has(WARNING):
            logger.warning(
                f"Dataset '{name}' was not validated before this run; loading it applied these "
                f"fixes:\n{report.table()}"
            )
        _set_metadata(name, scanned, None)
        if data is None:
            return load_dataset_dicts(scanned)
        return to_dataset_dicts(data, scanned.image_root, scanned.id_map)

    return load


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
    todo = [(n, f, s) for n, f, s in planned if not _already_registered(n, s)]
    used = set(_names_in(cfg, "TRAIN")) | set(_names_in(cfg, "TEST"))
    report = ValidationReport()
    scanned: Dict[str, ScannedDataset] = {}
    if mode != "off":
        for name, fmt, spec in todo:
            if name in used:
                scanned[name] = scan_dataset(name, fmt, spec, options, report, cache_dir)[0]
        if scanned:
            classes = {n: s.thing_classes for n, s in scanned.items()}
            for name in used - set(classes):
                known = (
                    MetadataCatalog.get(name).get("thing_classes", None)
                    if (name in MetadataCatalog.list())
                    else None
                )
                if known is not None:
                    classes[name] = list(known)
            check_cross_dataset(cfg, classes, report.summaries, report)
            path = _emit(cfg, report, mode)
            where = f" The full report is in '{path}'." if path else ""
            if raise_on_errors and mode == "error" and report.has(ERROR):
                raise DatasetValidationError(
                    "Dataset validation found problems (DATASETS.VALIDATION error); nothing "
                    f"was registered.{where} Fix them, or set DATASETS.VALIDATION warn to apply "
                    f"the listed actions and train anyway:\n{report.describe(ERROR)}"
                )
            unfixable = [p for p in report.problems(severity=ERROR) if p.action == "none"]
            if raise_on_errors and unfixable:
                raise DatasetValidationError(
                    "Dataset validation found problems that no configured fix resolves, so "
                    f"training cannot start; nothing was registered.{where}\n"
                    + "\n".join(p.describe() for p in unfixable)
                )

    started: List[str] = []
    try:
        for name, fmt, spec in todo:
            # Recorded before registering: a failure inside may leave a partial entry.
            started.append(name)
            if name in scanned:
                scan = scanned[name]
                DatasetCatalog.register(name, lambda scan=scan: load_dataset_dicts(scan))
                _set_metadata(name, scan, spec)
                logger.info(f"Category mapping of '{name}':\n{category_table(scan)}")
            else:
                DatasetCatalog.register(name, _lazy_loader(name, fmt, spec, options, cache_dir))
                meta = {"evaluator_type": "coco", SPEC_METADATA_KEY: spec}
                if not fmt.WRITES_JSON:
                    # Lets tools read the classes without loading; replaced by a repaired copy
                    # if loading has to change records.
                    meta.update(json_file=spec["ANN_FILE"], image_root=spec["IMAGE_ROOT"])
                MetadataCatalog.get(name).set(**meta)
    except Exception:
        # Roll back, so one failing registration leaves no half-registered set behind.
        for name in started:
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)
        raise
    if todo:
        lazy = [n for n, _, _ in todo if n not in scanned]
        logger.info(
            f"Registered datasets from DATASETS.CUSTOM: {', '.join(n for n, _, _ in todo)}"
            + (
                f" ({', '.join(lazy)} without validation: checked when first loaded)"
                if lazy
                else ""
            )
        )
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
