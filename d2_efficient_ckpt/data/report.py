"""The dataset validation report: every problem of every dataset, one table, one JSON file.

Checks add :class:`Problem` rows instead of raising at the first one, so a user sees all that
is wrong with a dataset in one run. Each row says which dataset and which records, what is
wrong, what was done about it (``action``) and how to fix the source.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from tabulate import tabulate

__all__ = ["ERROR", "INFO", "WARNING", "Problem", "ValidationReport"]

logger = logging.getLogger(__name__)

#: Stops training under ``DATASETS.VALIDATION error``; under ``warn`` the action is applied.
ERROR = "error"
#: A configured fix was applied (a box clipped, a segmentation stripped); never stops.
WARNING = "warning"
#: Worth knowing, nothing wrong (e.g. images without annotations used as negatives).
INFO = "info"

_SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}
# Records listed per problem in the table; the JSON keeps up to _JSON_RECORDS of them.
_TABLE_RECORDS = 3
_JSON_RECORDS = 100


@dataclass
class Problem:
    """One kind of problem in one dataset, with the records it concerns."""

    dataset: str
    severity: str
    title: str
    fix: str
    #: What was done about it: "dropped", "clipped", "stripped", "none", ...
    action: str = "none"
    #: The file the records come from, when there is one.
    source: str = ""
    records: List[str] = field(default_factory=list)
    count: int = 0

    def add(self, record: str) -> None:
        self.count += 1
        if len(self.records) < _JSON_RECORDS:
            self.records.append(record)

    def describe(self, limit: int = 5) -> str:
        """Multi-line text: title, the first ``limit`` records, the fix."""
        where = "" if self.dataset.startswith("(") else f"Dataset '{self.dataset}': "
        lines = [f"- [{self.severity}] {where}{self.count} {self.title}"]
        if self.source:
            lines[0] += f" in '{self.source}'"
        lines[0] += f" (action: {self.action})"
        lines += [f"    {r}" for r in self.records[:limit]]
        if self.count > limit:
            lines.append(f"    ... and {self.count - limit} more")
        lines.append(f"  Fix: {self.fix}")
        return "\n".join(lines)


class ValidationReport:
    """Problems of all datasets of a run, keyed by (dataset, title)."""

    def __init__(self) -> None:
        self._problems: Dict[Any, Problem] = {}
        #: Per-dataset counts for the summary (images, annotations, classes, ...).
        self.summaries: Dict[str, Dict[str, Any]] = {}

    def add(
        self,
        dataset: str,
        severity: str,
        title: str,
        fix: str,
        record: Optional[str] = None,
        action: str = "none",
        source: str = "",
    ) -> Problem:
        """Record one occurrence of a problem (``record`` None: the problem has no records).

        Returns:
            The problem row, so callers can add more records to it cheaply.
        """
        key = (dataset, title)
        problem = self._problems.get(key)
        if problem is None:
            problem = self._problems[key] = Problem(dataset, severity, title, fix, action, source)
        if record is None:
            problem.count = max(problem.count, 1)
        else:
            problem.add(record)
        return problem

    def extend(self, problems: List[Problem]) -> None:
        """Add rows computed elsewhere (e.g. read back from a cache)."""
        for p in problems:
            self._problems[(p.dataset, p.title)] = p

    def problems(self, dataset: Optional[str] = None, severity: Optional[str] = None):
        """Rows, errors first, optionally only of one dataset and/or severity."""
        rows = [
            p
            for p in self._problems.values()
            if (dataset is None or p.dataset == dataset)
            and (severity is None or p.severity == severity)
        ]
        return sorted(rows, key=lambda p: _SEVERITY_ORDER.get(p.severity, 3))

    def has(self, severity: str, dataset: Optional[str] = None) -> bool:
        return bool(self.problems(dataset, severity))

    @property
    def clean(self) -> bool:
        """True when there is nothing but info rows."""
        return not self.has(ERROR) and not self.has(WARNING)

    def table(self) -> str:
        """The report as a text table for the log, one row per problem."""
        if not self._problems:
            return "no problems found"
        rows = []
        for p in self.problems():
            shown = "; ".join(p.records[:_TABLE_RECORDS])
            if p.count > _TABLE_RECORDS and p.records:
                shown += f"; ... (+{p.count - _TABLE_RECORDS})"
            rows.append([p.dataset, p.severity, p.count, p.title, p.action, shown[:160]])
        return tabulate(
            rows, headers=["dataset", "severity", "count", "problem", "action", "records"]
        )

    def describe(self, severity: Optional[str] = None) -> str:
        """Every problem with its records and fix, for error messages."""
        return "\n".join(p.describe() for p in self.problems(severity=severity))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "clean": self.clean,
            "errors": sum(p.count for p in self.problems(severity=ERROR)),
            "warnings": sum(p.count for p in self.problems(severity=WARNING)),
            "datasets": self.summaries,
            "problems": [asdict(p) for p in self.problems()],
        }

    def write_json(self, path: str) -> str:
        """Write :meth:`to_dict` to ``path`` atomically; returns the path."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)
        return path
