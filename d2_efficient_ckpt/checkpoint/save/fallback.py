"""Which checkpoint a resume continues from, when the newest one may be broken.

:func:`choose_resume` is the decision, a pure function of the directory listing; the
checkpointer gathers the facts with :func:`scan` (cheap checks only: file size against the
integrity record, or the zip directory of a file written without one) and logs the outcome.
"""

import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

from .atomic import is_temp_file
from .integrity import RECORD_SUFFIX, IntegrityError, check_cheap

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Candidate",
    "ResumeChoice",
    "iteration_from_name",
    "choose_resume",
    "read_tag",
    "scan",
    "plan_resume",
    "describe_skipped",
]

CHECKPOINT_SUFFIXES = (".pth", ".safetensors")
_ITER_RE = re.compile(r"(\d+)$")
_FINAL = "final"


@dataclass(frozen=True)
class Candidate:
    """One checkpoint file in the output directory.

    Attributes:
        name: base name.
        iteration: training iteration it holds (from its record or its name), -1 if unknown;
            ``model_final`` ranks above every number.
        mtime: modification time, to order files of equal iteration.
        problem: why it cannot be resumed from, or "" if it passed the cheap checks.
    """

    name: str
    iteration: float
    mtime: float = 0.0
    problem: str = ""


@dataclass
class ResumeChoice:
    """The outcome of :func:`choose_resume`.

    Attributes:
        used: base name of the file to resume from, or None to start from scratch.
        skipped: ``(name, reason)`` of every file newer than ``used`` that was passed over,
            newest first, including the one ``last_checkpoint`` names.
    """

    used: Optional[str]
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)


def iteration_from_name(name: str) -> float:
    """``model_0000099.pth`` -> 99; ``model_final.pth`` -> inf; anything else -> -1."""
    stem = name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    if stem.endswith(_FINAL):
        return float("inf")
    m = _ITER_RE.search(stem)
    return float(m.group(1)) if m else -1.0


def choose_resume(
    candidates: Sequence[Candidate], tagged: Optional[str], tag_problem: str = ""
) -> ResumeChoice:
    """Choose the checkpoint to resume from.

    The newest valid file wins (by iteration, then the one ``last_checkpoint`` names, then
    modification time). Normally that is the tagged file; it differs when the tagged file is
    broken or missing, or when a newer complete file exists because the job was killed
    between writing a checkpoint and tagging it.

    Args:
        candidates: every checkpoint file in the directory.
        tagged: the base name ``last_checkpoint`` holds, or None (absent or unreadable).
        tag_problem: why ``last_checkpoint`` could not be used, if it could not.

    Returns:
        The choice; ``used`` is None only when no valid file exists.
    """

    def rank(c: Candidate):
        return (c.iteration, c.name == tagged, c.mtime, c.name)

    ordered = sorted(candidates, key=rank, reverse=True)
    skipped: List[Tuple[str, str]] = []
    names = {c.name for c in candidates}
    if tagged is not None and tagged not in names:
        skipped.append((tagged, "named by last_checkpoint, but the file does not exist"))
    elif tagged is None and tag_problem:
        skipped.append(("last_checkpoint", tag_problem))
    for c in ordered:
        if not c.problem:
            return ResumeChoice(c.name, skipped)
        skipped.append((c.name, c.problem))
    return ResumeChoice(None, skipped)


def read_tag(directory: str) -> Tuple[Optional[str], str]:
    """The base name in ``directory/last_checkpoint`` and, if it is unusable, why.

    Returns:
        ``(name, "")``, ``(None, "")`` when there is no such file, or ``(None, reason)``.
    """
    path = os.path.join(directory, "last_checkpoint")
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        return None, ""
    except OSError as e:
        return None, f"last_checkpoint is unreadable ({e.strerror})"
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "last_checkpoint is corrupt (not text)"
    if not name or "/" in name or "\n" in name or "\x00" in name:
        return None, "last_checkpoint is corrupt (no single file name in it)"
    return name, ""


def _problem(path: str) -> Tuple[str, float]:
    """Cheap checks of one file: ``(problem or "", iteration from its record or -1)``."""
    try:
        record = check_cheap(path, require_record=False)
    except IntegrityError as e:
        return e.problem, -1.0
    if record is not None:
        return "", float(record.iteration)
    if path.endswith(".pth"):
        if os.path.getsize(path) == 0:
            return "the file is empty.", -1.0
        # A file without a record (written by stock detectron2, or killed before its record
        # was written): its zip directory sits at the end, so truncation shows there.
        try:
            with open(path, "rb") as f:
                is_zip = f.read(4) == b"PK\x03\x04"
            if is_zip and not zipfile.is_zipfile(path):
                return "it is truncated (its zip directory is missing).", -1.0
        except OSError as e:
            return f"it is unreadable ({e.strerror}).", -1.0
    return "", -1.0


def scan(directory: str, suffixes: Sequence[str] = (".pth",)) -> List[Candidate]:
    """Every checkpoint file in ``directory`` with the outcome of its cheap checks.

    Args:
        directory: the output directory.
        suffixes: file endings that count as training checkpoints.
    """
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out: List[Candidate] = []
    for name in names:
        if is_temp_file(name) or name.endswith(RECORD_SUFFIX):
            continue
        if not name.endswith(tuple(suffixes)):
            continue
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        problem, iteration = _problem(path)
        by_name = iteration_from_name(name)
        # The name wins for model_final (it ranks above its own iteration number).
        it = by_name if by_name == float("inf") or iteration < 0 else iteration
        out.append(Candidate(name, it, os.path.getmtime(path), problem))
    return out


def problems_by_name(candidates: Sequence[Candidate]) -> Dict[str, str]:
    """``name -> problem`` of the candidates that failed their checks."""
    return {c.name: c.problem for c in candidates if c.problem}


def plan_resume(
    directory: str,
    suffixes: Sequence[str] = (".pth",),
    known_problems: Optional[Dict[str, str]] = None,
) -> ResumeChoice:
    """:func:`choose_resume` over :func:`scan` and :func:`read_tag` of ``directory``.

    Args:
        directory: the output directory.
        suffixes: file endings that count as training checkpoints.
        known_problems: ``name -> reason`` of files found broken otherwise (a failed load).
    """
    known = known_problems or {}
    candidates = [
        replace(c, problem=known.get(c.name, c.problem)) for c in scan(directory, suffixes)
    ]
    tagged, tag_problem = read_tag(directory)
    return choose_resume(candidates, tagged, tag_problem)


def describe_skipped(choice: ResumeChoice) -> str:
    """One warning that names every skipped file, why, and what is used instead."""
    lines = [f"  - {name}: {why}" for name, why in choice.skipped]
    target = choice.used or "nothing (no valid checkpoint: training starts from scratch)"
    return (
        "Resume skipped broken checkpoint(s):\n" + "\n".join(lines) + f"\nResuming from {target}."
    )
