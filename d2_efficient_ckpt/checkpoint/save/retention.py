"""Which old periodic checkpoints to delete (``CHECKPOINT.SAVE.MAX_TO_KEEP``).

:func:`plan_deletions` is a pure function of the file names; the saver calls it only after
the newest checkpoint has been written, verified and tagged, so an old file is never
deleted before its successor is known to be good.
"""

import re
from typing import Iterable, List, Optional

__all__ = ["PERIODIC_RE", "plan_deletions"]

# Names the periodic checkpointer writes: model_0000099.pth (any prefix, 7+ digits).
PERIODIC_RE = re.compile(r"^(?P<prefix>.*_)(?P<iter>\d{7,})\.(?:pth|safetensors)$")


def plan_deletions(
    names: Iterable[str], max_to_keep: int, protected: Iterable[Optional[str]] = ()
) -> List[str]:
    """The periodic checkpoints beyond the ``max_to_keep`` newest, oldest first.

    Args:
        names: base names in the output directory.
        max_to_keep: how many periodic checkpoints to keep; 0 or less keeps all.
        protected: names never to delete (the tagged and the just-written file).

    Returns:
        Base names to delete. ``model_final`` and files of other shapes never appear.
    """
    if max_to_keep <= 0:
        return []
    keep = {p for p in protected if p}
    periodic = []
    for name in set(names):
        m = PERIODIC_RE.match(name)
        if m:
            periodic.append((int(m.group("iter")), name))
    periodic.sort(reverse=True)
    old = [name for _, name in periodic[max_to_keep:] if name not in keep]
    return sorted(old, key=lambda n: int(PERIODIC_RE.match(n).group("iter")))
