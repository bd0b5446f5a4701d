"""Which checkpoint a resume continues from: one rule, for every caller.

:func:`choose_resume` is the rule, a pure function (its docstring states it; ``docs/resume.md``
explains it with the workflows it covers). :func:`plan_resume` gathers the facts cheaply
(file size against the integrity record, or the zip directory of a file written without
one). It looks at the tagged file alone first: the directory is listed only when a fallback
is needed, so a folder that cannot be listed (no read permission, ``EIO`` or ``ESTALE`` on
network storage) still resumes from its tag. The checkpointer's ``resume_or_load``,
``has_checkpoint`` and ``get_checkpoint_file`` all go through :func:`plan_resume`.
"""

import os
import zipfile
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import CheckpointFormatError
from ..formats.registry import checkpoint_format, is_checkpoint_name, iteration_from_name
from ..save.integrity import RECORD_SUFFIX, IntegrityError, check_cheap
from ..save.tag import Tag, read_tag
from ..storage.atomic import is_temp_file
from ..storage.registry import open_bytes, store_for

__all__ = [
    "Candidate",
    "ResumeChoice",
    "choose_resume",
    "inspect",
    "scan",
    "plan_resume",
    "describe_skipped",
]

_MISSING = "named by last_checkpoint, but the file does not exist"


@dataclass(frozen=True)
class Candidate:
    """One checkpoint file in the output directory.

    Attributes:
        name: base name.
        iteration: training iteration it holds (from its record, else its name), -1 if
            unknown.
        created: when its write finished (its record's time, else its modification time).
        run: run identity from its integrity record, "" if it has none.
        problem: why it cannot be resumed from, or "" if it passed the cheap checks.
    """

    name: str
    iteration: int = -1
    created: float = 0.0
    run: str = ""
    problem: str = ""


@dataclass
class ResumeChoice:
    """The outcome of :func:`choose_resume`.

    Attributes:
        used: base name of the file to resume from, or None to start from scratch.
        run: the run the resume continues ("" when none is known: a new run starts).
        skipped: ``(name, reason)`` of the tagged file and of every newer file of the run
            that was passed over because it is broken, newest first.
        passed_over: ``(name, reason)`` of valid files that the rule never picks (another
            run's, or without a run identity), named so that nothing is chosen or ignored
            silently; empty when the tagged file is used.
        list_error: why the directory could not be listed for a fallback, "" if it could.
    """

    used: Optional[str]
    run: str = ""
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    passed_over: List[Tuple[str, str]] = field(default_factory=list)
    list_error: str = ""

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)


def choose_resume(candidates: Sequence[Candidate], tag: Tag, list_error: str = "") -> ResumeChoice:
    """Choose the checkpoint to resume from.

    The rule:

    1. The file ``last_checkpoint`` names, when it passes the cheap checks. Every save tags
       the file it wrote once it is durable and verified, so this is the newest *finished*
       save, whatever its name (a periodic file, ``model_final``, ``model_best``, a manual
       ``save()``) and whatever its iteration: a stale ``model_0000099`` of an older run, an
       old ``model_final`` after ``SOLVER.MAX_ITER`` was extended, or a file whose save was
       killed before its tag never outranks it.
    2. Only when that file is missing or broken (or a load of it failed, or it is of another
       architecture), the newest valid checkpoint **of the same run**: the same run identity
       in its integrity record, newest by the time its write finished, then by iteration.
       The run is the tagged file's, else the one ``last_checkpoint.run.json`` names.
    3. Otherwise nothing: training starts from scratch, as a new run.

    Files of other runs and files without a run identity (stock detectron2's, a user's) are
    never taken by the fallback; they are listed in ``passed_over`` so that the warning
    names them. Both suffixes are candidates whatever ``CHECKPOINT.SAVE.FORMAT`` says.

    Args:
        candidates: the checkpoint files known (all of the directory, or only the tagged one
            when it passed its checks).
        tag: what ``last_checkpoint`` and its run file say.
        list_error: why the directory could not be listed, if it could not.

    Returns:
        The choice; ``used`` is None when neither the tagged file nor a file of its run is
        valid.
    """
    by_name = {c.name: c for c in candidates}
    tagged = by_name.get(tag.name) if tag.name else None
    if tagged is not None and not tagged.problem:
        run = tagged.run or (tag.run if tag.names_tagged else "")
        return ResumeChoice(tagged.name, run)
    skipped: List[Tuple[str, str]] = []
    if tag.name:
        skipped.append((tag.name, tagged.problem if tagged is not None else _MISSING))
    elif tag.problem:
        skipped.append(("last_checkpoint", tag.problem))
    run = (tagged.run if tagged is not None else "") or tag.run
    if list_error:
        return ResumeChoice(None, run, skipped, list_error=list_error)
    rest = sorted(
        (c for c in candidates if c.name != tag.name),
        key=lambda c: (c.created, c.iteration, c.name),
        reverse=True,
    )
    used: Optional[Candidate] = None
    for c in rest:
        if not run or c.run != run:
            continue
        if c.problem:
            skipped.append((c.name, c.problem))
            continue
        used = c
        break
    passed_over = [
        (c.name, _foreign(c)) for c in rest if not c.problem and (not run or c.run != run)
    ]
    return ResumeChoice(used.name if used else None, run, skipped, passed_over)


def _foreign(c: Candidate) -> str:
    it = f"iteration {c.iteration}" if c.iteration >= 0 else "iteration unknown"
    if not c.run:
        return f"no run identity: not written by this plugin's saver, or by an older one ({it})"
    return f"another run's checkpoint (run {c.run[:12]}, {it})"


def _problem(path: str) -> Tuple[str, int, float, str]:
    """Cheap checks of one file: ``(problem or "", iteration, created, run)`` from its record."""
    try:
        record = check_cheap(path, require_record=False)
    except IntegrityError as e:
        return e.problem, -1, 0.0, ""
    if record is not None:
        return "", record.iteration, record.created, record.run
    if checkpoint_format(path) == "pth":
        try:
            if store_for(path).info(path).size == 0:
                return "the file is empty.", -1, 0.0, ""
            # A file without a record (written by stock detectron2, or killed before its
            # record was written): its zip directory sits at the end, so truncation shows.
            with open_bytes(path) as source:
                is_zip = source.read(0, min(4, source.size)) == b"PK\x03\x04"
                complete = is_zip and zipfile.is_zipfile(source.fileobj())
            if is_zip and not complete:
                return "it is truncated (its zip directory is missing).", -1, 0.0, ""
        except (OSError, CheckpointFormatError) as e:
            return f"it is unreadable ({getattr(e, 'strerror', None) or e}).", -1, 0.0, ""
    return "", -1, 0.0, ""


def inspect(directory: str, name: str) -> Optional[Candidate]:
    """The :class:`Candidate` of one file, or None when there is nothing under the name."""
    path = os.path.join(directory, name)
    try:
        mtime = store_for(path).info(path).mtime
    except FileNotFoundError:
        return None
    except OSError as e:
        return Candidate(name, problem=f"it is unreadable ({e.strerror}).")
    problem, iteration, created, run = _problem(path)
    if iteration < 0:
        iteration = iteration_from_name(name)
    return Candidate(name, iteration, created or mtime, run, problem)


def scan(directory: str) -> List[Candidate]:
    """Every checkpoint file in ``directory`` (both suffixes), with its cheap checks.

    Raises:
        OSError: the directory exists but cannot be listed.
    """
    try:
        names = sorted(store_for(directory).list(directory))
    except FileNotFoundError:
        return []
    out: List[Candidate] = []
    for name in names:
        if is_temp_file(name) or name.endswith(RECORD_SUFFIX):
            continue
        if not is_checkpoint_name(name):
            continue
        found = inspect(directory, name)
        if found is not None:
            out.append(found)
    return out


def plan_resume(directory: str, known_problems: Optional[Mapping[str, str]] = None) -> ResumeChoice:
    """:func:`choose_resume` over ``directory``; lists it only when a fallback is needed.

    Args:
        directory: the output directory.
        known_problems: ``name -> reason`` of files found unusable otherwise (a failed load,
            another architecture).
    """
    known: Dict[str, str] = dict(known_problems or {})

    def with_known(c: Candidate) -> Candidate:
        return replace(c, problem=known.get(c.name, c.problem))

    tag = read_tag(directory)
    tagged = inspect(directory, tag.name) if tag.name else None
    if tagged is not None:
        tagged = with_known(tagged)
        if not tagged.problem:
            return choose_resume([tagged], tag)
    try:
        candidates = scan(directory)
    except OSError as e:
        listed = [] if tagged is None else [tagged]
        return choose_resume(listed, tag, list_error=f"{directory} cannot be listed ({e.strerror})")
    return choose_resume([with_known(c) for c in candidates], tag)


def describe_skipped(choice: ResumeChoice) -> str:
    """One warning that names every skipped and passed-over file, why, and what is used."""
    lines: List[str] = []
    if choice.skipped:
        lines.append("Resume skipped broken checkpoint(s):")
        lines += [f"  - {name}: {why}" for name, why in choice.skipped]
    if choice.list_error:
        lines.append(f"No earlier checkpoint can be looked for: {choice.list_error}.")
    if choice.passed_over:
        lines.append("Resume never takes these files, as they are not of this run:")
        lines += [f"  - {name}: {why}" for name, why in choice.passed_over]
    if choice.used:
        lines.append(f"Resuming from {choice.used}.")
    else:
        lines.append(
            "Resuming from nothing (no valid checkpoint of this run): training starts from "
            "scratch as a new run. To continue from one of the files above, write its name "
            "into last_checkpoint, or load it with MODEL.WEIGHTS."
        )
    return "\n".join(lines)
