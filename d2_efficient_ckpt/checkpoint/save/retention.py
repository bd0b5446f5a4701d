"""Which old periodic checkpoints to delete (``CHECKPOINT.SAVE.MAX_TO_KEEP``).

:func:`plan_deletions` is a pure function. A file is a candidate only when the saver can
prove it is its own: its name is exactly a periodic name of the prefix being saved
(``<prefix>_<7 digits>.pth`` or ``.safetensors``) **and** its integrity record carries this
run's identity. A user's ``backup_0000001.pth``, another job's ``otherjob_0000000.pth``, a
converted file, an older run's checkpoints and any file without a record are never deleted.
The saver calls it only after the newest checkpoint was written, verified and tagged, so an
old file is never deleted before its successor is known to be good.
"""

from typing import Iterable, List, Optional, Tuple

from ..formats.registry import parse_periodic

__all__ = ["periodic_prefix", "plan_deletions"]


def periodic_prefix(name: str) -> Optional[str]:
    """The prefix of a periodic checkpoint name (``model_0000099.pth`` -> ``model``), or None."""
    parsed = parse_periodic(name)
    return parsed[0] if parsed else None


def plan_deletions(
    files: Iterable[Tuple[str, str]],
    *,
    run: str,
    prefix: str,
    max_to_keep: int,
    protected: Iterable[Optional[str]] = (),
) -> List[str]:
    """This run's periodic checkpoints of ``prefix`` beyond the ``max_to_keep`` newest.

    Args:
        files: ``(base name, run identity from its record or "")`` of the directory's
            checkpoint files.
        run: this run's identity; empty deletes nothing.
        prefix: the periodic prefix being saved (``model``).
        max_to_keep: how many periodic checkpoints to keep; 0 or less keeps all.
        protected: names never to delete (the tagged and the just-written file).

    Returns:
        Base names to delete, oldest first.
    """
    if max_to_keep <= 0 or not run:
        return []
    keep = {p for p in protected if p}
    ours: List[Tuple[int, str]] = []
    for name, owner in set(files):
        parsed = parse_periodic(name)
        if parsed and parsed[0] == prefix and owner == run:
            ours.append((parsed[1], name))
    ours.sort(reverse=True)
    old = [(it, name) for it, name in ours[max_to_keep:] if name not in keep]
    return [name for _, name in sorted(old)]
