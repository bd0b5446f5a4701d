"""What a load did, key by key: the data behind incompatibility reports."""

import copy
import json
import os
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

from tabulate import tabulate

from ..keys.grouping import KeyGroup, group_keys

__all__ = ["LoadReport", "STATUS_LABELS", "MISMATCH_KINDS"]

# Status of a key in a report, in the order rows are shown, with its label in tables.
STATUS_LABELS = {
    "shape_mismatch": "shape mismatch",
    "missing": "missing",
    "unexpected": "unexpected",
    "cast": "loaded, dtype cast",
    "tied": "loaded via a tied key",
    "excluded": "skipped: EXCLUDE",
    "not_included": "skipped: not in INCLUDE",
    "loaded": "loaded",
}
# Statuses that qualify "loaded": their groups may take in plain loaded keys.
_LOADED_KIN = {"cast": "loaded", "tied": "loaded"}
# The statuses that count as incompatibilities for CHECKPOINT.LOAD.ON_MISMATCH.
MISMATCH_KINDS = ("missing", "unexpected", "shape_mismatch")


@dataclass
class LoadReport:
    """The outcome of one ``load()``.

    Attributes:
        path: the checkpoint file.
        format: how it was read (see ``formats.open_checkpoint``).
        loaded: model keys written from the checkpoint.
        missing: model keys (selected) that the checkpoint lacks.
        unexpected: checkpoint keys (after renaming) that the model lacks.
        shape_mismatch: ``(key, checkpoint shape, model shape)``, not loaded.
        dtype_changed: ``(key, checkpoint dtype, model dtype)``, loaded with a cast.
        skipped: model keys left out, each with ``"exclude"`` or ``"include"``.
        tied: model keys the checkpoint lacks whose tensor was loaded under another name
            (a module reused under two names), each with that name.
        filled: model keys the checkpoint lacks that the module set itself because the
            checkpoint predates them (old BatchNorm versions), each with why.
        renamed: ``(checkpoint key, model key, rule patterns)``.
        checkpointables: per entry or trainer part: restored, skipped or absent.
        num_params_loaded / num_params_model: element counts.
        num_keys_model: keys in the model's state dict (0 when not known).
        explanations: :class:`~.explain.Explanation` objects for the differences.
        policy: the outcome of ``CHECKPOINT.LOAD.ON_MISMATCH`` (see ``policy.check_policy``).
        skipped_files: ``(file, reason)`` of broken checkpoints a resume passed over before
            it used ``path`` (see ``resume.choice``).
    """

    path: str = ""
    format: str = ""
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    dtype_changed: List[Tuple[str, str, str]] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    tied: Dict[str, str] = field(default_factory=dict)
    filled: Dict[str, str] = field(default_factory=dict)
    renamed: List[Tuple[str, str, List[str]]] = field(default_factory=list)
    checkpointables: Dict[str, str] = field(default_factory=dict)
    num_params_loaded: int = 0
    num_params_model: int = 0
    num_keys_model: int = 0
    map_location: Optional[str] = None
    explanations: List[Any] = field(default_factory=list)
    policy: Dict[str, Any] = field(default_factory=dict)
    skipped_files: List[Tuple[str, str]] = field(default_factory=list)

    # ----------------------------------------------------------------- key views
    def key_status(self) -> Dict[str, str]:
        """Every key the load saw, model and checkpoint side, mapped to its status."""
        status = {k: "loaded" for k in self.loaded}
        status.update({k: "cast" for k, _, _ in self.dtype_changed})
        status.update({k: "tied" for k in self.tied})
        status.update({k: "filled" for k in self.filled})
        for key, why in self.skipped.items():
            status[key] = "excluded" if why == "exclude" else "not_included"
        status.update({k: "missing" for k in self.missing})
        status.update({k: "unexpected" for k in self.unexpected})
        status.update({k: "shape_mismatch" for k, _, _ in self.shape_mismatch})
        return status

    def mismatches(self) -> List[Tuple[str, str]]:
        """``(kind, key)`` for every missing, unexpected and shape-mismatched key."""
        out = [("shape_mismatch", k) for k, _, _ in self.shape_mismatch]
        out += [("missing", k) for k in self.missing]
        out += [("unexpected", k) for k in self.unexpected]
        return out

    @property
    def has_mismatch(self) -> bool:
        return bool(self.shape_mismatch or self.missing or self.unexpected)

    def groups(self, *, braces: bool = True) -> List[KeyGroup]:
        """Keys grouped by module prefix and status (see ``grouping.group_keys``)."""
        # Keys a module set itself are shown with the loaded keys around them (their number is
        # in the detail column): Caffe2 files would otherwise split every BatchNorm in two.
        status = {k: "loaded" if s == "filled" else s for k, s in self.key_status().items()}
        return group_keys(status, braces=braces, kin=_LOADED_KIN)

    # ----------------------------------------------------------------- output
    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of every field, plus ``groups`` and ``summary``."""
        out = {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self)
            if f.name != "explanations"
        }
        out["explanations"] = [
            e.to_dict() if hasattr(e, "to_dict") else dict(e) for e in self.explanations
        ]
        out["groups"] = [
            {"status": g.status, "pattern": g.pattern, "count": g.count} for g in self.groups()
        ]
        out["summary"] = {
            "loaded": len(self.loaded),
            "missing": len(self.missing),
            "unexpected": len(self.unexpected),
            "shape_mismatch": len(self.shape_mismatch),
            "dtype_changed": len(self.dtype_changed),
            "skipped": len(self.skipped),
            "tied": len(self.tied),
            "filled": len(self.filled),
            "renamed": len(self.renamed),
        }
        return out

    def to_json(self, path: str, opener=open) -> str:
        """Write :meth:`to_dict` as indented JSON to ``path`` and return the path."""
        with opener(path, "w") as f:
            f.write(self.to_json_bytes().decode("utf-8"))
        return path

    def to_json_bytes(self) -> bytes:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str).encode("utf-8")

    def format_table(self, max_rows_per_status: int = 12) -> str:
        """A readable report: a summary line, the key groups, renames, checkpointables and
        explanations."""
        lines = [self._headline()]
        rows = self._rows(max_rows_per_status)
        if rows:
            headers = ["status", "keys", "count", "checkpoint -> model"]
            lines.append(tabulate(rows, headers=headers))
        if self.renamed:
            by_rule = Counter(tuple(rules) for _, _, rules in self.renamed)
            lines.append(
                "Renamed by CHECKPOINT.LOAD.RENAME: "
                + "; ".join(f"{' then '.join(r)} ({n} keys)" for r, n in by_rule.items())
            )
        if self.checkpointables:
            parts = [f"{k} {v}" for k, v in self.checkpointables.items()]
            lines.append("Checkpointables: " + ", ".join(parts))
        if self.skipped_files:
            skipped = "; ".join(f"{f} ({r})" for f, r in self.skipped_files)
            lines.append(f"Resume skipped: {skipped}")
        if self.policy.get("on_mismatch") == "error":
            bad, ok = len(self.policy.get("violations", [])), len(self.policy.get("tolerated", []))
            lines.append(
                f"Policy: ON_MISMATCH error; {ok} mismatched key(s) allowed by ALLOW_MISMATCH, "
                f"{bad} not allowed."
            )
        if self.explanations:
            lines.append("Explanations:")
            lines.extend(
                e.format(indent="  ") if hasattr(e, "format") else f"  {e}"
                for e in self.explanations
            )
        return "\n".join(lines)

    def _headline(self) -> str:
        of = f" of {self.num_keys_model}" if self.num_keys_model else ""
        pct = 100.0 * self.num_params_loaded / self.num_params_model if self.num_params_model else 0
        name = os.path.basename(self.path) or "(no file)"
        fmt = f" ({self.format})" if self.format else ""
        return (
            f"Loaded {len(self.loaded) + len(self.tied)}{of} model keys from {name}{fmt}: "
            f"{self.num_params_loaded:,} of {self.num_params_model:,} parameters ({pct:.1f}%)."
        )

    def _rows(self, max_rows: int) -> List[List[Any]]:
        shapes = {k: (a, b) for k, a, b in self.shape_mismatch}
        dtypes = {k: (a, b) for k, a, b in self.dtype_changed}
        by_status: Dict[str, List[KeyGroup]] = {}
        for g in self.groups():
            by_status.setdefault(g.status, []).append(g)
        rows = []
        for status, label in STATUS_LABELS.items():
            groups = by_status.get(status, [])
            for g in groups[:max_rows]:
                detail = _detail(status, g, shapes, dtypes, self.tied, self.filled)
                rows.append([label, g.pattern, g.count, detail])
            if len(groups) > max_rows:
                rest = groups[max_rows:]
                rows.append([label, f"... {len(rest)} more groups", sum(g.count for g in rest), ""])
        return rows


def _shape(s) -> str:
    return "(" + ", ".join(map(str, s)) + ")"


def _detail(status: str, group: KeyGroup, shapes, dtypes, tied, filled) -> str:
    if status == "shape_mismatch":
        if group.count == 1:
            a, b = shapes[group.keys[0]]
            return f"{_shape(a)} -> {_shape(b)}"
        # Weights say more than biases; show at most two keys.
        keys = sorted(group.keys, key=lambda k: not k.endswith("weight"))[:2]
        prefix = os.path.commonprefix(group.keys)
        prefix = prefix[: prefix.rfind(".") + 1]
        parts = [
            f"{k[len(prefix) :]} {_shape(shapes[k][0])} -> {_shape(shapes[k][1])}" for k in keys
        ]
        more = f"; +{group.count - len(keys)} more" if group.count > len(keys) else ""
        return "; ".join(parts) + more
    if status == "cast":
        pairs = Counter(dtypes[k] for k in group.keys if k in dtypes)
        text = ", ".join(f"{a} -> {b}" for (a, b), _ in pairs.most_common(2))
        return text + _of(sum(pairs.values()), group.count)
    if status == "tied":
        sources = [tied[k] for k in group.keys if k in tied]
        return "same tensors as " + _pattern_of(sources) + _of(len(sources), group.count)
    whys = Counter(filled[k] for k in group.keys if k in filled)
    if status == "loaded" and whys:
        why = "; ".join(w for w, _ in whys.most_common(2))
        return f"incl. {sum(whys.values())} set by the module: {why}"
    return ""


def _of(n: int, total: int) -> str:
    # A group of a qualified status may hold plain loaded keys too (see grouping's kin).
    return f" ({n} of {total} keys)" if n != total else ""


def _pattern_of(keys) -> str:
    if len(keys) == 1:
        return keys[0]
    prefix = os.path.commonprefix(list(keys))
    return prefix[: prefix.rfind(".") + 1] + "*"
