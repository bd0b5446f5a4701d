"""A resume, on one process or on every rank of a job: which file, and what if it fails.

:func:`resume_from_directory` is the one place a resume happens. The main process removes a
killed run's temporary files before any rank lists the directory, then chooses the file
once (the rule: ``choice.choose_resume``) and every rank takes that choice. Every rank must
be able to read the file (each reads to its own device); otherwise all of them fail with
one clear error, instead of one rank starting from scratch and the job hanging in
mismatched collectives. A file that fails to load on any rank, or is of another
architecture, is passed over by every rank and the rule is asked again.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from detectron2.utils import comm

from ..errors import CheckpointFormatError, RemoteStorageError
from ..save.tag import read_tag
from ..storage.registry import is_remote, store_for
from .choice import ResumeChoice, describe_skipped, plan_resume

__all__ = ["Resumed", "every_rank_reads", "resume_from_directory"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
# attempt(path, skipped files) loads one candidate; raises CheckpointFormatError if broken.
Attempt = Callable[[str, Sequence[Tuple[str, str]]], T]


@dataclass
class Resumed:
    """A resume that loaded a file.

    Attributes:
        name: the file's base name.
        run: the run it belongs to ("" if unknown: the saves start a new one).
        result: what the attempt returned.
    """

    name: str
    run: str
    result: Any


def resume_from_directory(
    directory: str,
    attempt: Attempt,
    *,
    clean: Optional[Callable[[], Any]] = None,
    distributed: bool = False,
    writes_suffix: str = "",
    log: logging.Logger = logger,
) -> Optional[Resumed]:
    """Resume from ``directory``: the rule's file, else its fallbacks, else nothing.

    Args:
        directory: the output directory.
        attempt: loads one file (on every rank when ``distributed``).
        clean: removes stale temporary files; run on the main process only, first.
        distributed: every rank of the default group calls this together.
        writes_suffix: the suffix the saves write, for a note when resuming another format.
        log: where the warnings go (the checkpointer's logger).

    Returns:
        The resume, or None when there is nothing to resume from (a new run).

    Raises:
        CheckpointFormatError: a rank cannot read the chosen file; a rank has a checkpoint
            while the main process finds none; or the tag is unusable and the directory
            cannot be listed.
    """
    if clean is not None and comm.is_main_process():
        clean()  # temporary files of a killed run, gone before anyone lists the directory
    if distributed:
        comm.synchronize()
    broken: Dict[str, str] = {}
    while True:
        choice = _choose(directory, broken, distributed, log)
        if choice.used is None:
            _nothing_to_resume(directory, choice, distributed)
            return None
        path = os.path.join(directory, choice.used)
        if distributed:
            every_rank_reads(path, resuming=True)
        if writes_suffix and not choice.used.endswith(writes_suffix):
            log.info(
                f"Resuming from {choice.used}, although CHECKPOINT.SAVE.FORMAT writes "
                f"{writes_suffix} files: it is this run's newest checkpoint; the next saves use "
                "the configured format."
            )
        result, problem = _try(attempt, path, choice.skipped)
        if distributed:  # a file broken for one rank is passed over by all
            problem = next((p for p in comm.all_gather(problem) if p), "")
        if not problem:
            return Resumed(choice.used, choice.run, result)
        broken[choice.used] = problem


def _choose(
    directory: str, broken: Dict[str, str], distributed: bool, log: logging.Logger
) -> ResumeChoice:
    # Chosen once, on the main process; the other ranks take its choice.
    choice = plan_resume(directory, broken) if comm.is_main_process() or not distributed else None
    if distributed:
        choice = comm.all_gather(choice)[0]
    assert choice is not None
    if comm.is_main_process() and (choice.skipped or choice.passed_over or choice.list_error):
        log.warning(describe_skipped(choice))
    return choice


def _try(attempt: Attempt, path: str, skipped: List[Tuple[str, str]]) -> Tuple[Any, str]:
    try:
        return attempt(path, tuple(skipped)), ""
    except CheckpointFormatError as e:
        return None, getattr(e, "problem", "") or str(e)


def _nothing_to_resume(directory: str, choice: ResumeChoice, distributed: bool) -> None:
    if choice.list_error:
        raise CheckpointFormatError(
            directory,
            f"--resume cannot go on: {choice.list_error}, and the file last_checkpoint names "
            "is not usable, so no earlier checkpoint of this run can be found.",
            "Fix the folder's permissions or storage, or train without --resume.",
        )
    if not distributed:
        return
    # A rank whose own folder offers a checkpoint would expect to resume from it.
    # (Shared storage gives every rank the main process's tag: that is no such case.)
    tagged = comm.all_gather(read_tag(directory).name or "")
    lacking = [rank for rank, name in enumerate(tagged) if name and name != tagged[0]]
    if lacking:
        raise CheckpointFormatError(
            os.path.join(directory, tagged[lacking[0]]),
            f"ranks {lacking} would resume from it, but the main process finds no "
            "checkpoint in its output folder.",
            "Give every rank the same output folder, or remove the stale checkpoints.",
        )


def _readable(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    try:  # an object: every rank asks the store itself (a refusal is raised as it is)
        return store_for(path).exists(path)
    except RemoteStorageError:
        return False


def every_rank_reads(path: str, *, resuming: bool = False) -> None:
    """Raise on every rank unless every rank of the default group can read ``path``.

    Every rank reads the file itself (each to its own device), so all must see it.

    Raises:
        CheckpointFormatError: names the ranks that cannot, and the fix.
    """
    seen = comm.all_gather(_readable(path))
    lacking = [rank for rank, ok in enumerate(seen) if not ok]
    if not lacking:
        return
    if not resuming:
        raise CheckpointFormatError(
            path,
            f"ranks {lacking} cannot read the file.",
            "Put checkpoints on storage that every machine mounts at the same path.",
        )
    raise CheckpointFormatError(
        path,
        f"ranks {lacking} cannot read the file (their output folder does not hold it).",
        "Put checkpoints on storage that every machine mounts at the same path, or set "
        "CHECKPOINT.LOAD.BROADCAST_FROM_MAIN True to have the main process read it and "
        "send it to the other ranks.",
    )
