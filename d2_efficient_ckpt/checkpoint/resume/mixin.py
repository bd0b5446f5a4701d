"""Which checkpoint a resume sees, as fvcore's ``Checkpointer`` methods.

``has_checkpoint`` and ``get_checkpoint_file`` keep fvcore's meaning: whether there is a
checkpoint to resume from, and the file ``last_checkpoint`` names (the newest finished save),
so fvcore's ``PeriodicCheckpointer(max_to_keep=...)`` works unchanged. The only differences
are the ones the resume rule makes (a broken tagged file falls back to this run's newest
valid one, see :mod:`.choice`), and that an asynchronous save counts from the moment
``save()`` returns.
"""

import os
from typing import List

from .choice import plan_resume, scan

__all__ = ["ResumeMixin"]


class ResumeMixin:
    """fvcore's ``has_checkpoint``, ``get_checkpoint_file`` and ``get_all_checkpoint_files``
    through the resume rule; needs ``save_dir`` (and the saver's ``in_flight``, if any)."""

    save_dir: str  # fvcore's Checkpointer sets it

    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` holds a checkpoint a resume would use (see ``choice``)."""
        return bool(self.get_checkpoint_file())

    def get_checkpoint_file(self) -> str:
        """The checkpoint a resume uses: the file ``last_checkpoint`` names (or, while an
        asynchronous save is in flight, will name), else this run's newest valid one; ""
        if none."""
        if not self.save_dir:
            return ""
        saver = self.__dict__.get("_saver")
        if saver is not None and saver.in_flight:
            return os.path.join(self.save_dir, saver.in_flight)
        used = plan_resume(self.save_dir).used
        return os.path.join(self.save_dir, used) if used else ""

    def get_all_checkpoint_files(self) -> List[str]:
        """Checkpoint files in ``save_dir`` that pass the cheap integrity checks."""
        if not self.save_dir:
            return []
        try:
            found = scan(self.save_dir)
        except OSError:
            return []
        return [os.path.join(self.save_dir, c.name) for c in found if not c.problem]
