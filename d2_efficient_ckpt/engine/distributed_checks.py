"""Checks that the ranks of a job see the same checkpoint before any of them loads it."""

import os

from detectron2.utils import comm

from ..checkpoint.errors import CheckpointFormatError

__all__ = ["same_checkpoint_on_all_ranks"]


def same_checkpoint_on_all_ranks(checkpointer) -> None:
    """Raise on every rank unless all ranks would resume from the main process's checkpoint.

    Without it, a rank whose output folder lacks the checkpoint (storage that is not shared)
    would start from scratch while the others load, and the job would hang in mismatched
    collectives.

    Raises:
        CheckpointFormatError: names the ranks that do not see the file, and the fix.
    """
    find = getattr(checkpointer, "get_checkpoint_file", None)
    mine = find() if find is not None and checkpointer.has_checkpoint() else ""
    chosen = comm.all_gather(mine)
    wanted = chosen[0]
    # A rank differs when its own output folder offers no checkpoint or another one, or
    # when it cannot open the main process's file.
    seen = comm.all_gather(os.path.isfile(wanted) if wanted else True)
    lacking = [r for r, (c, ok) in enumerate(zip(chosen, seen)) if c != wanted or not ok]
    if lacking and not wanted:
        raise CheckpointFormatError(
            chosen[lacking[0]],
            f"ranks {lacking} would resume from it, but the main process finds no "
            "checkpoint in its output folder.",
            "Give every rank the same output folder, or remove the stale checkpoints.",
        )
    if lacking:
        raise CheckpointFormatError(
            wanted,
            f"ranks {lacking} cannot read the file (their output folder does not hold it).",
            "Put checkpoints on storage that every machine mounts at the same path, or set "
            "CHECKPOINT.LOAD.BROADCAST_FROM_MAIN True to have the main process read it and "
            "send it to the other ranks.",
        )
