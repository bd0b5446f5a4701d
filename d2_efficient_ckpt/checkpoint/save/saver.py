"""``CheckpointSaver``: one save from the state to a durable, verified, tagged file.

The checkpointer hands it the state to save; the saver owns everything after that: the
snapshot and background thread for asynchronous saves, the atomic write with its integrity
record, ``last_checkpoint``, and retention. Settings come from ``CHECKPOINT.SAVE``.

Every file it writes carries the identity of the run (``run``) in its integrity record and in
the tag. A run starts with a new identity; a resume continues the identity of the file it
resumed from (:meth:`CheckpointSaver.continue_run`). Retention and the resume fallback use
it to tell this run's files from everything else in the folder.
"""

import logging
import os
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import torch

from ..formats.registry import SAVE_FORMATS, suffix_for, writer_for
from ..storage.base import Store
from ..storage.registry import store_for
from .async_writer import AsyncWriter
from .errors import SaveConfigError
from .integrity import READ_DEVICE, READ_PAGE_CACHE, READ_STORE, IntegrityError, read_record
from .retention import periodic_prefix, plan_deletions
from .snapshot import Snapshot, SnapshotBuffers
from .tag import TAG_FILE, read_tag, write_tag
from .write import SaveResult, explain_os_error, remove_checkpoint, write_checkpoint

__all__ = ["SaveOptions", "CheckpointSaver", "TAG_FILE", "iteration_of", "new_run_id"]

logger = logging.getLogger(__name__)

# What the check after a save compared the hash with, as the log says it.
_HOW_CHECKED = {
    READ_DEVICE: "(read back from the device)",
    READ_PAGE_CACHE: (
        "against the page cache only (this file system refuses O_DIRECT, so the disk's copy "
        "was not read back)"
    ),
    READ_STORE: "(the upload's spool against the hash; the store checked every part's MD5)",
}


@dataclass(frozen=True)
class SaveOptions:
    """The ``CHECKPOINT.SAVE`` settings the saver uses (see ``config.py``)."""

    verify: bool = True
    asynchronous: bool = False
    max_to_keep: int = 0
    format: str = "pth"
    stale_temp_age_s: float = 3600.0

    @classmethod
    def from_cfg(cls, cfg) -> "SaveOptions":
        """Read ``cfg.CHECKPOINT.SAVE``; defaults when ``cfg`` is None or lacks it."""
        node = None
        if cfg is not None and "CHECKPOINT" in cfg:
            node = cfg.CHECKPOINT.get("SAVE")
        if node is None:
            return cls()
        fmt = str(node.get("FORMAT", "pth")).lower()
        if fmt not in SAVE_FORMATS:
            raise SaveConfigError(
                f"CHECKPOINT.SAVE.FORMAT is '{fmt}'; use 'pth' (default) or 'safetensors'."
            )
        return cls(
            verify=bool(node.get("VERIFY", True)),
            asynchronous=bool(node.get("ASYNC") or False),  # None: the Trainer decides
            max_to_keep=int(node.get("MAX_TO_KEEP", 0)),
            format=fmt,
            stale_temp_age_s=float(node.get("STALE_TEMP_AGE_S", 3600.0)),
        )

    @property
    def suffix(self) -> str:
        return suffix_for(self.format)


def iteration_of(data: Any) -> int:
    """The training iteration a checkpoint holds: its ``iteration`` entry, else the trainer's;
    -1 when neither is there."""
    if not isinstance(data, dict):
        return -1
    trainer = data.get("trainer")
    if "iteration" not in data and isinstance(trainer, dict):
        data = trainer
    try:
        return int(data.get("iteration", -1))
    except (TypeError, ValueError):
        return -1


def new_run_id() -> str:
    """A fresh run identity: random, so runs on different machines never share one."""
    return uuid.uuid4().hex


class CheckpointSaver:
    """Saves checkpoints into one directory.

    Args:
        directory: the output directory (created on the first save).
        options: ``CHECKPOINT.SAVE`` settings.
        serializer: ``fn(data, file_object)`` writing one checkpoint; ``torch.save`` if None.
        opener: ``open``-like function for temporary files (tests inject failing disks).

    Attributes:
        last_blocked_s: seconds the last :meth:`save` blocked its caller.
        last_wait_s: of which waiting for the previous save (back-pressure: nonzero means
            saves come faster than the disk takes them).
        last_snapshot_s: of which copying the state into the snapshot (asynchronous only).
        last_result: the :class:`SaveResult` of the last finished write.
        run: this run's identity; set by :meth:`start_run` or :meth:`continue_run`, else at
            the first save.
        in_flight: base name of the asynchronous save not yet finished, or None.
    """

    def __init__(
        self,
        directory: str,
        options: SaveOptions = SaveOptions(),
        *,
        serializer: Optional[Callable[[Any, Any], None]] = None,
        opener=open,
    ):
        self.directory = directory
        # Refused here, not at the first save: a path no store handles is a config error.
        self._store = store_for(directory, "checkpoint directory") if directory else None
        self.options = options
        if serializer is None:
            serializer = writer_for(options.format)
        self.serializer = serializer
        self.opener = opener
        self._writer = AsyncWriter()
        self._buffers = SnapshotBuffers()
        self._cleaned = False
        self.last_blocked_s = 0.0
        self.last_wait_s = 0.0
        self.last_snapshot_s = 0.0
        self.last_result: Optional[SaveResult] = None
        self.run = ""
        self.in_flight: Optional[str] = None
        # (model, optimizer) whose tensors asynchronous saves copy until the next step.
        self._stable: Optional[Tuple[Any, Any]] = None
        self._copying: Optional[Snapshot] = None

    @property
    def store(self) -> Store:
        """The store of the directory."""
        if self._store is None:
            raise SaveConfigError("The checkpointer has no save_dir: set OUTPUT_DIR to save.")
        return self._store

    def defer_until_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Let asynchronous saves copy ``model``'s parameters and ``optimizer``'s state while
        training goes on, until ``optimizer.step()``, which first waits for the copy.

        For loops that change those tensors only in ``optimizer.step()`` between a save and
        the next step, as detectron2's trainers do (the Trainer calls this). Buffers, which
        forward may change (BatchNorm statistics), are always copied before ``save()``
        returns. The wait is an optimizer step pre-hook; ``model`` and ``optimizer`` are
        held by weak references.
        """
        self._stable = (weakref.ref(model), weakref.ref(optimizer))
        saver = weakref.ref(self)

        def before_step(*_: Any) -> None:
            me = saver()
            if me is not None:
                me.wait_for_snapshot()

        optimizer.register_step_pre_hook(before_step)

    def _stable_storages(self) -> FrozenSet[int]:
        """``data_ptr()`` of the storages ``defer_until_step`` declared stable."""
        if self._stable is None:
            return frozenset()
        model, optimizer = (ref() for ref in self._stable)
        if model is None or optimizer is None:
            return frozenset()
        tensors = list(model.parameters())
        for state in optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return frozenset(p for p in (t.untyped_storage().data_ptr() for t in tensors) if p)

    def wait_for_snapshot(self) -> None:
        """Return once the last snapshot's deferred copies have read the live tensors (the
        optimizer step's pre-hook); at once when there are none."""
        copying, self._copying = self._copying, None
        if copying is not None:
            copying.wait_copied()

    def start_run(self) -> str:
        """Give the files saved from now on a new run identity; return it."""
        self.run = new_run_id()
        return self.run

    def continue_run(self, run: str) -> None:
        """Save as the run ``run`` (the identity of the file a resume loaded); a new identity
        when it is empty."""
        if run:
            self.run = run
        else:
            self.start_run()

    def clean_stale(self) -> List[str]:
        """Remove temporary files of killed saves (once per saver); return their names.

        Never raises (see ``Store.remove_stale``).
        """
        if self._cleaned:
            return []
        self._cleaned = True
        return self.store.remove_stale(self.directory, self.options.stale_temp_age_s)

    def save(self, basename: str, data: Any, *, iteration: int = -1) -> None:
        """Save ``data`` as ``basename``, tag it, then apply retention.

        Synchronous saves return when all of that is done. Asynchronous saves return after
        the snapshot; the rest runs in the background, and its error (if any) is raised by
        the next call to :meth:`save`, :meth:`wait` or :meth:`raise_if_failed`.

        Raises:
            CheckpointSaveError, IntegrityError: this save failed (synchronous) or the
                previous one did (asynchronous).
        """
        start = time.perf_counter()
        self._writer.wait()  # back-pressure, and the previous save's error
        self.last_wait_s = time.perf_counter() - start
        path = os.path.join(self.directory, basename)
        try:
            self.store.makedirs(self.directory)
        except OSError as e:
            raise explain_os_error(path, e) from e
        self.clean_stale()
        if not self.run:
            self.start_run()
        run = self.run
        logger.info(f"Saving checkpoint to {path}")
        if not self.options.asynchronous:
            self._commit(path, data, iteration, run)
            self.last_blocked_s = time.perf_counter() - start
            return
        snapshot = self._buffers.take(data, self._stable_storages())
        self._copying = snapshot if snapshot.deferred_bytes else None
        self.last_snapshot_s = time.perf_counter() - start - self.last_wait_s

        def job() -> None:
            try:
                snapshot.wait()
                self._commit(path, snapshot.data, iteration, run)
            finally:
                self.in_flight = None

        self.in_flight = basename
        try:
            self._writer.submit(job, path)
        except BaseException:
            self.in_flight = None
            raise
        self.last_blocked_s = time.perf_counter() - start

    def _commit(self, path: str, data: Any, iteration: int, run: str) -> None:
        result = write_checkpoint(
            path,
            data,
            verify=self.options.verify,
            iteration=iteration,
            run=run,
            serializer=self.serializer,
            opener=self.opener,
        )
        self.tag(os.path.basename(path), run)
        self.last_result = result
        checked = ""
        if self.options.verify:
            checked = f", verified in {result.verify_s:.2f} s {_HOW_CHECKED[result.verified_from]}"
        logger.info(
            f"Checkpoint {path} is durable: {result.record.size / 2**20:.1f} MiB written in "
            f"{result.write_s:.2f} s{checked}."
        )
        self._retain(os.path.basename(path))

    def tag(self, basename: str, run: Optional[str] = None) -> None:
        """Point ``last_checkpoint`` at ``basename`` of ``run`` (this run's by default),
        atomically.

        Raises:
            CheckpointSaveError: ``last_checkpoint`` cannot be written (it is unchanged).
        """
        if run is None:
            run = self.run or self.start_run()
        try:
            write_tag(self.directory, basename, run)
        except OSError as e:
            raise explain_os_error(os.path.join(self.directory, TAG_FILE), e) from e

    def _retain(self, newest: str) -> None:
        # Only periodic saves prune, as fvcore's hook does, and only their own prefix.
        prefix = periodic_prefix(newest)
        if self.options.max_to_keep <= 0 or prefix is None:
            return
        try:
            names = self.store.list(self.directory)
        except OSError as e:  # the new checkpoint is safe; old ones outstay their time
            logger.warning(f"Could not list {self.directory} for MAX_TO_KEEP: {e}")
            return
        files = [(n, self._owner(n)) for n in names if periodic_prefix(n) == prefix]
        doomed = plan_deletions(
            files,
            run=self.run,
            prefix=prefix,
            max_to_keep=self.options.max_to_keep,
            protected=[newest, read_tag(self.directory).name],
        )
        deleted = []
        for name in doomed:
            try:
                remove_checkpoint(os.path.join(self.directory, name))
                deleted.append(name)
            except OSError as e:
                logger.warning(f"Could not delete old checkpoint {name} (MAX_TO_KEEP): {e}")
        if deleted:
            logger.info(f"Deleted old checkpoints (MAX_TO_KEEP): {', '.join(deleted)}")

    def _owner(self, name: str) -> str:
        """The run identity in the record of ``name``, "" if it has none or it is unusable."""
        try:
            record = read_record(os.path.join(self.directory, name))
        except IntegrityError:
            return ""
        return record.run if record is not None else ""

    def wait(self) -> None:
        """Join the save in flight; raise its error if it failed."""
        self._writer.wait()

    def raise_if_failed(self) -> None:
        """Raise the error of a finished background save, without waiting."""
        self._writer.raise_if_failed()

    @property
    def busy(self) -> bool:
        """Whether a background save is running."""
        return self._writer.busy
