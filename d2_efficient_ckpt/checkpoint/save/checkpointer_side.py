"""The save side of the checkpointer: ``save``, ``wait`` and which checkpoint a resume sees.

``EfficientDetectionCheckpointer`` inherits these methods. They need the attributes of
fvcore's ``Checkpointer`` (``model``, ``save_dir``, ``save_to_disk``, ``checkpointables``)
and ``cfg``; all the work is done by :class:`~.saver.CheckpointSaver` and the pure
functions of :mod:`.fallback`.
"""

import os
from typing import Any, Dict, List, Tuple

from .fallback import plan_resume, scan
from .saver import CheckpointSaver, SaveOptions, iteration_of

__all__ = ["SavingMixin"]


class SavingMixin:
    """Crash-safe, verified, optionally asynchronous saving for a ``Checkpointer``."""

    @property
    def saver(self) -> CheckpointSaver:
        """The :class:`CheckpointSaver` of ``save_dir`` with ``CHECKPOINT.SAVE`` settings."""
        saver = self.__dict__.get("_saver")
        if saver is None:
            saver = self._saver = CheckpointSaver(self.save_dir, SaveOptions.from_cfg(self.cfg))
        return saver

    @property
    def _suffixes(self) -> Tuple[str, ...]:
        return (".pth", ".safetensors") if self.saver.options.format == "safetensors" else (".pth",)

    def save(self, name: str, **kwargs: Any) -> None:
        """Save the model and checkpointables as ``name``, atomically and with a record.

        With ``CHECKPOINT.SAVE.ASYNC`` it returns after a host snapshot; the write runs in
        the background (see :meth:`wait`). ``kwargs`` are stored as extra entries.

        Raises:
            CheckpointSaveError, IntegrityError: this save (or the previous asynchronous
                one) failed; the previous checkpoint is intact.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        self.saver.save(f"{name}{self.saver.options.suffix}", data, iteration=iteration_of(data))

    def wait(self) -> None:
        """Block until the asynchronous save in flight is durable; raise its error if any."""
        if "_saver" in self.__dict__:
            self.saver.wait()

    def raise_if_failed(self) -> None:
        """Raise the error of a finished asynchronous save, without waiting."""
        if "_saver" in self.__dict__:
            self.saver.raise_if_failed()

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``last_checkpoint`` at the file, atomically (temporary file and rename)."""
        if self.save_to_disk:
            self.saver.tag(last_filename_basename)

    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` holds a checkpoint a resume can use (see ``save.fallback``)."""
        return bool(self.save_dir) and plan_resume(self.save_dir, self._suffixes).used is not None

    def get_checkpoint_file(self) -> str:
        """The checkpoint a resume uses: the tagged one, or the newest valid one if it is
        broken; "" if none."""
        if not self.save_dir:
            return ""
        used = plan_resume(self.save_dir, self._suffixes).used
        return os.path.join(self.save_dir, used) if used else ""

    def get_all_checkpoint_files(self) -> List[str]:
        """Checkpoint files in ``save_dir`` that pass the cheap integrity checks."""
        if not self.save_dir:
            return []
        found = scan(self.save_dir, self._suffixes)
        return [os.path.join(self.save_dir, c.name) for c in found if not c.problem]
