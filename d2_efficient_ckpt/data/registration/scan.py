"""Read, check and cache one dataset: what both validation and the dataset loader run.

:func:`scan_dataset` reads a dataset through its format, runs the shared checks, and makes
sure a COCO json the evaluator can read exists: the source json when nothing had to change,
otherwise a repaired copy in the cache. For formats that can list their source files
without parsing them (VOC, YOLO), an unchanged dataset is not read again at all: its cache
entry holds the findings.
"""

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Type

from tabulate import tabulate

from ..checks import check_records
from ..errors import DatasetConfigError
from ..formats import DatasetFormat
from ..options import CheckOptions
from ..report import Problem, ValidationReport
from .cache import CACHE_VERSION, entry_paths, read_entry, source_key, write_json
from .dataset_dicts import to_dataset_dicts

__all__ = ["ScannedDataset", "category_table", "load_dataset_dicts", "scan_dataset"]

logger = logging.getLogger(__name__)

# Rows of the category-mapping table shown in the log; the rest are counted.
_MAPPING_ROWS = 40


@dataclass
class ScannedDataset:
    """A checked dataset: where its evaluator json is and how its classes map."""

    name: str
    #: COCO json of exactly the records training loads (for the loader and COCOEvaluator).
    json_file: str
    image_root: str
    thing_classes: List[str]
    #: Category id in ``json_file`` -> contiguous id.
    id_map: Dict[int, int]
    #: Category id in ``json_file`` -> the id or name the source uses for it.
    source_ids: Dict[int, Any]
    summary: Dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False


def category_table(scanned: ScannedDataset) -> str:
    """Source id, contiguous id and name of each class, as a text table."""
    rows = [
        [scanned.source_ids.get(cat_id, cat_id), contiguous, scanned.thing_classes[contiguous]]
        for cat_id, contiguous in sorted(scanned.id_map.items(), key=lambda kv: kv[1])
    ]
    extra = len(rows) - _MAPPING_ROWS
    text = tabulate(rows[:_MAPPING_ROWS], headers=["source id", "contiguous id", "name"])
    return text + (f"\n... and {extra} more classes" if extra > 0 else "")


def _scanned_from_meta(name: str, meta: Dict[str, Any]) -> ScannedDataset:
    return ScannedDataset(
        name=name,
        json_file=meta["json_file"],
        image_root=meta["image_root"],
        thing_classes=meta["thing_classes"],
        id_map={int(k): v for k, v in meta["id_map"]},
        source_ids={int(k): v for k, v in meta["source_ids"]},
        summary=meta["summary"],
        from_cache=True,
    )


def scan_dataset(
    name: str,
    fmt: Type[DatasetFormat],
    spec: Dict[str, Any],
    options: CheckOptions,
    report: ValidationReport,
    cache_dir: str,
    keep_data: bool = False,
) -> Tuple[ScannedDataset, Optional[Dict[str, Any]]]:
    """Check one dataset and make its evaluator json available.

    Args:
        name: the dataset name.
        fmt: its format class.
        spec: the normalized spec.
        options: check options.
        report: problems are added here (also those remembered by a cache entry).
        cache_dir: where repaired/converted COCO jsons and findings are kept.
        keep_data: also return the checked records (the loader uses them directly).

    Returns:
        The scanned dataset, and its checked COCO-shaped data when ``keep_data`` (None on a
        cache hit).

    Raises:
        DatasetValidationError: a problem that no fix can resolve.
        DatasetConfigError: the cache folder cannot be written.
    """
    try:
        return _scan(name, fmt, spec, options, report, cache_dir, keep_data)
    except OSError as e:
        if not os.path.abspath(getattr(e, "filename", "") or "").startswith(cache_dir):
            raise
        raise DatasetConfigError(
            f"Dataset '{name}': the cache folder '{cache_dir}' cannot be written ({e.strerror}). "
            "Set DATASETS.CACHE_DIR to a writable folder."
        ) from None


def _scan(
    name: str,
    fmt: Type[DatasetFormat],
    spec: Dict[str, Any],
    options: CheckOptions,
    report: ValidationReport,
    cache_dir: str,
    keep_data: bool,
) -> Tuple[ScannedDataset, Optional[Dict[str, Any]]]:
    start = time.perf_counter()
    files = fmt.source_files(name, spec)
    key = source_key(spec, options, files) if files is not None else None
    if key is not None:
        meta = read_entry(cache_dir, name, key)
        if meta is not None:
            report.extend([Problem(**p) for p in meta["problems"]])
            report.summaries[name] = meta["summary"]
            return _scanned_from_meta(name, meta), None

    own = ValidationReport()
    raw = fmt.read(name, spec, own, workers=options.workers)
    source_ids = raw.data.pop("source_ids", None)
    result = check_records(name, raw.data, raw.image_root, raw.source, options, own)
    source_ids = source_ids or {k: k for k in result.id_map}
    json_file = raw.json_file
    if result.changed or fmt.WRITES_JSON or json_file is None:
        if key is None:
            key = source_key(spec, options, [raw.source])
        json_file = entry_paths(cache_dir, name, key)["json"]
        write_json(json_file, result.data)
    summary = dict(result.summary, seconds=round(time.perf_counter() - start, 3))
    scanned = ScannedDataset(
        name, json_file, raw.image_root, result.thing_classes, result.id_map, source_ids, summary
    )
    if files is not None:
        write_json(
            entry_paths(cache_dir, name, key)["meta"],
            {
                "version": CACHE_VERSION,
                "json_file": json_file,
                "image_root": raw.image_root,
                "thing_classes": result.thing_classes,
                "id_map": sorted(result.id_map.items()),
                "source_ids": sorted(source_ids.items()),
                "summary": summary,
                "problems": [p.__dict__ for p in own.problems()],
            },
        )
    report.extend(own.problems())
    report.summaries[name] = summary
    return scanned, (result.data if keep_data else None)


def load_dataset_dicts(scanned: ScannedDataset) -> List[Dict[str, Any]]:
    """detectron2 records of a scanned dataset, read from its checked json."""
    with open(scanned.json_file, "rb") as f:
        data = json.loads(f.read())
    return to_dataset_dicts(data, scanned.image_root, scanned.id_map)
