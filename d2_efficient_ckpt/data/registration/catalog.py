"""detectron2's catalogs: what is registered already, and registering checked datasets.

A dataset of ``DATASETS.CUSTOM`` is registered with its normalized spec in its metadata, so
that declaring it again with the same spec is recognised as a no-op and a different spec as
a conflict. Registration is all or nothing: one failure removes what the call registered.
"""

import logging
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetConfigError
from ..formats import DatasetFormat
from ..options import CheckOptions
from ..report import ERROR, WARNING, ValidationReport
from .dataset_dicts import to_dataset_dicts
from .scan import ScannedDataset, category_table, load_dataset_dicts, scan_dataset

__all__ = ["SPEC_METADATA_KEY", "Planned", "already_registered", "register_all"]

logger = logging.getLogger(__name__)

# Metadata key recording the normalized spec a dataset was registered with; it is what makes
# a repeated registration recognisable as the same one (a no-op) rather than a conflict.
SPEC_METADATA_KEY = "custom_dataset_spec"

#: One declared dataset: its name, format class and normalized spec.
Planned = Tuple[str, Type[DatasetFormat], Dict[str, Any]]


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


def already_registered(name: str, spec: Dict[str, Any]) -> bool:
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
    """Set the metadata of a checked dataset; ``spec`` marks it as declared in the config."""
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
    name: str,
    fmt: Type[DatasetFormat],
    spec: Dict[str, Any],
    options: CheckOptions,
    cache_dir: str,
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


def register_all(
    todo: List[Planned],
    scanned: Dict[str, ScannedDataset],
    options: CheckOptions,
    cache_dir: str,
) -> None:
    """Register every dataset of ``todo``, or none: a failure removes those registered.

    Args:
        todo: the datasets to register, in order.
        scanned: those checked already, by name; their loaders read the checked json. The
            others get a loader that checks them (with the fixes) when first loaded.
        options: check options of the loaders that check.
        cache_dir: where those loaders keep what they check.
    """
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
