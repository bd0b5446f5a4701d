"""The load report as a JSON file in the output directory: ``load_report_<file>.json``."""

import logging
import os
from typing import Optional

from ..report.load_report import LoadReport
from ..storage.registry import store_for

__all__ = ["report_json_path", "write_report_json"]

logger = logging.getLogger(__name__)


def report_json_path(report: LoadReport, out_dir: str) -> Optional[str]:
    """Where the report of a load of ``report.path`` goes in ``out_dir``; None if nowhere."""
    if not out_dir or not report.path:
        return None
    stem = os.path.splitext(os.path.basename(report.path))[0] or "checkpoint"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    return os.path.join(out_dir, f"load_report_{stem}.json")


def write_report_json(report: LoadReport, out_dir: str) -> None:
    """Write the report atomically; a failure is a warning (the load itself succeeded)."""
    path = report_json_path(report, out_dir)
    if path is None:
        return
    try:
        store = store_for(path)
        store.makedirs(os.path.dirname(path))
        # Atomic: a symlink planted under the report's name is replaced, not followed.
        store.write_bytes(path, report.to_json_bytes(), durable=False)
    except OSError as e:
        logger.warning(f"Could not write the load report {path}: {e}")
