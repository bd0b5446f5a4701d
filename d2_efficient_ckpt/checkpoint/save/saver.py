"""``CheckpointSaver``: one save from the state to a durable, verified, tagged file.

The checkpointer hands it the state to save; the saver owns everything after that: the
snapshot and background thread for asynchronous saves, the atomic write with its integrity
record, ``last_checkpoint``, and retention. Settings come from ``CHECKPOINT.SAVE``.
"""

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from .async_writer import AsyncWriter
from .atomic import atomic_write_bytes, remove_stale_temp_files
from .errors import SaveConfigError
from .retention import plan_deletions
from .safetensors_format import write_training_safetensors
from .snapshot import SnapshotBuffers
from .write import SaveResult, explain_os_error, remove_checkpoint, write_checkpoint

__all__ = ["SaveOptions", "CheckpointSaver", "TAG_FILE", "iteration_of"]

logger = logging.getLogger(__name__)

TAG_FILE = "last_checkpoint"
# Formats the saver writes; the loader resumes from each of them.
_WRITABLE_FORMATS = ("pth", "safetensors")


@dataclass(frozen=True)
class SaveOptions:
    """The ``CHECKPOINT.SAVE`` settings the saver uses (see ``config.py``)."""

    verify: bool = True
    asynchronous: bool = False
    max_to_keep: int = 0
    format: str = "pth"

    @classmethod
    def from_cfg(cls, cfg) -> "SaveOptions":
        """Read ``cfg.CHECKPOINT.SAVE``; defaults when ``cfg`` is None or lacks it."""
        node = None
        if cfg is not None and "CHECKPOINT" in cfg:
            node = cfg.CHECKPOINT.get("SAVE")
        if node is None:
            return cls()
        fmt = str(node.get("FORMAT", "pth")).lower()
        if fmt not in _WRITABLE_FORMATS:
            raise SaveConfigError(
                f"CHECKPOINT.SAVE.FORMAT is '{fmt}'; use 'pth' (default) or 'safetensors'."
            )
        return cls(
            verify=bool(node.get("VERIFY", True)),
            asynchronous=bool(node.get("ASYNC", False)),
            max_to_keep=int(node.get("MAX_TO_KEEP", 0)),
            format=fmt,
        )

    @property
    def suffix(self) -> str:
        return ".safetensors" if self.format == "safetensors" else ".pth"


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
        self.options = options
        if serializer is None and options.format == "safetensors":
            serializer = write_training_safetensors
        self.serializer = serializer
        self.opener = opener
        self._writer = AsyncWriter()
        self._buffers = SnapshotBuffers()
        self._cleaned = False
        self.last_blocked_s = 0.0
        self.last_wait_s = 0.0
        self.last_snapshot_s = 0.0
        self.last_result: Optional[SaveResult] = None

    def clean_stale(self) -> List[str]:
        """Remove temporary files of killed saves (once per saver); return their names."""
        if self._cleaned:
            return []
        self._cleaned = True
        return remove_stale_temp_files(self.directory)

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
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise explain_os_error(path, e) from e
        self.clean_stale()
        logger.info(f"Saving checkpoint to {path}")
        if not self.options.asynchronous:
            self._commit(path, data, iteration)
            self.last_blocked_s = time.perf_counter() - start
            return
        snapshot = self._buffers.take(data)
        self.last_snapshot_s = time.perf_counter() - start - self.last_wait_s

        def job() -> None:
            snapshot.wait()
            self._commit(path, snapshot.data, iteration)

        self._writer.submit(job, path)
        self.last_blocked_s = time.perf_counter() - start

    def _commit(self, path: str, data: Any, iteration: int) -> None:
        result = write_checkpoint(
            path,
            data,
            verify=self.options.verify,
            iteration=iteration,
            serializer=self.serializer,
            opener=self.opener,
        )
        self.tag(os.path.basename(path))
        self.last_result = result
        checked = f", verified in {result.verify_s:.2f} s" if self.options.verify else ""
        logger.info(
            f"Checkpoint {path} is durable: {result.record.size / 2**20:.1f} MiB written in "
            f"{result.write_s:.2f} s{checked}."
        )
        self._retain(os.path.basename(path))

    def tag(self, basename: str) -> None:
        """Point ``last_checkpoint`` at ``basename``, atomically.

        Raises:
            CheckpointSaveError: ``last_checkpoint`` cannot be written (it is unchanged).
        """
        tag = os.path.join(self.directory, TAG_FILE)
        try:
            atomic_write_bytes(tag, basename.encode("utf-8"))
        except OSError as e:
            raise explain_os_error(tag, e) from e

    def _retain(self, newest: str) -> None:
        if self.options.max_to_keep <= 0:
            return
        doomed = plan_deletions(
            os.listdir(self.directory), self.options.max_to_keep, protected=[newest]
        )
        deleted = []
        for name in doomed:
            try:
                remove_checkpoint(os.path.join(self.directory, name))
                deleted.append(name)
            except OSError as e:  # the new checkpoint is safe; an old one outstays its time
                logger.warning(f"Could not delete old checkpoint {name} (MAX_TO_KEEP): {e}")
        if deleted:
            logger.info(f"Deleted old checkpoints (MAX_TO_KEEP): {', '.join(deleted)}")

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
