"""The save side of the checkpointer: ``save``, ``wait``, ``tag_last_checkpoint``.

``EfficientDetectionCheckpointer`` inherits these methods. They need the attributes of
fvcore's ``Checkpointer`` (``model``, ``save_dir``, ``save_to_disk``, ``checkpointables``)
and ``cfg``; all the work is done by :class:`~.saver.CheckpointSaver`.
"""

import contextlib
from typing import Any, Dict

from ..storage.registry import store_for
from .integrity import record_path
from .saver import CheckpointSaver, SaveOptions, iteration_of

__all__ = ["SavingMixin", "RecordAwarePathManager"]


class RecordAwarePathManager:
    """A path manager that removes a checkpoint's integrity record with the checkpoint.

    fvcore's ``PeriodicCheckpointer`` deletes old files through ``checkpointer.path_manager.rm``;
    through this wrapper their records go too. Everything else is the wrapped manager's.
    """

    def __init__(self, inner: Any):
        self.inner = inner

    def rm(self, path: str, **kwargs: Any) -> None:
        self.inner.rm(path, **kwargs)
        store = store_for(path)
        if not store.exists(path):
            with contextlib.suppress(OSError):
                store.remove(record_path(path))

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being built): no recursion through it
            raise AttributeError(name)
        return getattr(self.inner, name)


class SavingMixin:
    """Crash-safe, verified, optionally asynchronous saving for a ``Checkpointer``."""

    # Set by fvcore's Checkpointer and by the checkpointer's constructor.
    model: Any
    save_dir: str
    save_to_disk: bool
    checkpointables: Dict[str, Any]
    cfg: Any

    @property
    def path_manager(self) -> Any:
        return self.__dict__.get("_path_manager")

    @path_manager.setter
    def path_manager(self, manager: Any) -> None:
        if manager is not None and not isinstance(manager, RecordAwarePathManager):
            manager = RecordAwarePathManager(manager)
        self.__dict__["_path_manager"] = manager

    @property
    def saver(self) -> CheckpointSaver:
        """The :class:`CheckpointSaver` of ``save_dir`` with ``CHECKPOINT.SAVE`` settings."""
        saver = self.__dict__.get("_saver")
        if saver is None:
            saver = self._saver = CheckpointSaver(self.save_dir, SaveOptions.from_cfg(self.cfg))
        return saver

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

    def defer_until_step(self, model: Any, optimizer: Any) -> None:
        """Asynchronous saves copy the parameters and the optimizer state while the next
        iteration's forward and backward run; ``optimizer.step()`` waits for the copy
        (see :meth:`CheckpointSaver.defer_until_step`). The Trainer calls it."""
        self.saver.defer_until_step(model, optimizer)

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
