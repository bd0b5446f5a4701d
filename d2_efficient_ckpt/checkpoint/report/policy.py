"""CHECKPOINT.LOAD.ON_MISMATCH: what an incompatible key does to a load.

Mismatches are missing keys, unexpected keys and shape mismatches; keys skipped by
INCLUDE/EXCLUDE and dtype casts are not. ``warn`` reports them, ``ignore`` reports them
without warnings, and ``error`` raises :class:`CheckpointPolicyError` unless every mismatched
key matches a CHECKPOINT.LOAD.ALLOW_MISMATCH glob.
"""

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from ..errors import CheckpointPolicyError
from ..keys.grouping import coarsen_patterns, group_keys
from ..options import normalise_on_mismatch
from .load_report import STATUS_LABELS, LoadReport

__all__ = ["PolicyOutcome", "check_policy", "enforce_policy", "raise_if_broken"]


@dataclass
class PolicyOutcome:
    """The policy applied to one report.

    Attributes:
        on_mismatch: ``warn``, ``error`` or ``ignore``.
        allow: the ALLOW_MISMATCH globs.
        violations: ``(kind, key)`` of mismatches no glob allows.
        tolerated: ``(kind, key)`` of mismatches some glob allows.
        suggested_allow: globs that would allow every violation.
    """

    on_mismatch: str
    allow: List[str] = field(default_factory=list)
    violations: List[Tuple[str, str]] = field(default_factory=list)
    tolerated: List[Tuple[str, str]] = field(default_factory=list)
    suggested_allow: List[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        """Whether the load must stop: ``error`` with violations."""
        return self.on_mismatch == "error" and bool(self.violations)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PolicyOutcome":
        """The outcome recorded in ``LoadReport.policy`` (see :meth:`to_dict`)."""
        return cls(
            on_mismatch=data.get("on_mismatch", "warn"),
            allow=list(data.get("allow", [])),
            violations=[tuple(v) for v in data.get("violations", [])],
            tolerated=[tuple(t) for t in data.get("tolerated", [])],
            suggested_allow=list(data.get("suggested_allow", [])),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "on_mismatch": self.on_mismatch,
            "allow": list(self.allow),
            "violations": [list(v) for v in self.violations],
            "tolerated": [list(t) for t in self.tolerated],
            "suggested_allow": list(self.suggested_allow),
            "broken": self.broken,
        }


def check_policy(
    report: LoadReport, on_mismatch: str = "warn", allow: Sequence[str] = ()
) -> PolicyOutcome:
    """Sort the report's mismatches into allowed and not, and record it in ``report.policy``.

    Raises:
        CheckpointConfigError: ``on_mismatch`` is not warn, error or ignore.
    """
    allow = [allow] if isinstance(allow, str) else list(allow)
    outcome = PolicyOutcome(normalise_on_mismatch(on_mismatch), allow)
    for kind, key in report.mismatches():
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in allow):
            outcome.tolerated.append((kind, key))
        else:
            outcome.violations.append((kind, key))
    if outcome.violations:
        outcome.suggested_allow = _suggest(report, outcome.violations)
    report.policy = outcome.to_dict()
    return outcome


def _suggest(report: LoadReport, violations: Sequence[Tuple[str, str]]) -> List[str]:
    status = {k: "ok" for k in report.key_status()}
    status.update({key: "bad" for _, key in violations})
    groups = [g for g in group_keys(status, braces=False) if g.status == "bad"]
    return coarsen_patterns([g.pattern for g in groups])


def enforce_policy(
    report: LoadReport, on_mismatch: str = "warn", allow: Sequence[str] = ()
) -> PolicyOutcome:
    """:func:`check_policy`, then raise when the policy is ``error`` and a key breaks it.

    Raises:
        CheckpointPolicyError: naming the keys, why they differ (from ``report.explanations``)
            and the ALLOW_MISMATCH / ON_MISMATCH settings that would accept them.
        CheckpointConfigError: ``on_mismatch`` is not warn, error or ignore.
    """
    outcome = check_policy(report, on_mismatch, allow)
    raise_if_broken(report, outcome)
    return outcome


def raise_if_broken(report: LoadReport, outcome: PolicyOutcome) -> None:
    """Raise :class:`CheckpointPolicyError` when ``outcome`` (of :func:`check_policy` on
    ``report``) stops the load."""
    if outcome.broken:
        raise CheckpointPolicyError(
            policy_message(report, outcome),
            path=report.path,
            violations=outcome.violations,
            suggested_allow=outcome.suggested_allow,
        )


def policy_message(report: LoadReport, outcome: PolicyOutcome) -> str:
    """The text of a :class:`CheckpointPolicyError`."""
    n = len(outcome.violations)
    lines = [
        f"Checkpoint '{report.path}' does not fit the model and CHECKPOINT.LOAD.ON_MISMATCH is "
        f"'error': {n} key(s) are not allowed by CHECKPOINT.LOAD.ALLOW_MISMATCH "
        f"{json.dumps(outcome.allow)}:"
    ]
    status = {k: "ok" for k in report.key_status()}
    status.update({key: kind for kind, key in outcome.violations})
    for group in group_keys(status):
        if group.status != "ok":
            label = STATUS_LABELS.get(group.status, group.status)
            lines.append(f"  {label}: {group.pattern} ({group.count} key(s))")
    bad = {key for _, key in outcome.violations}
    causes = [e for e in report.explanations if set(getattr(e, "covered", ())) & bad]
    for exp in causes[:4]:
        lines.append(f"  why: {exp.title}" + (f". Fix: {exp.fix}" if exp.fix else ""))
    allow = list(dict.fromkeys(outcome.allow + outcome.suggested_allow))
    yaml_list = json.dumps(allow)
    cli_list = "[" + ", ".join(f"'{p}'" for p in allow) + "]"
    lines += [
        "To accept these differences, allow them in the config:",
        f"  CHECKPOINT.LOAD.ALLOW_MISMATCH {yaml_list}",
        f'  (on the command line: CHECKPOINT.LOAD.ALLOW_MISMATCH "{cli_list}")',
        "or only warn about them: CHECKPOINT.LOAD.ON_MISMATCH warn.",
    ]
    return "\n".join(lines)
