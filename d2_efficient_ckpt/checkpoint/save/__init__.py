"""The saving side: atomic, verified, optionally asynchronous checkpoints.

Modules, each with one job (imports point down: ``..errors``, ``..storage``, ``..formats``):
    errors        CheckpointSaveError, SaveConfigError
    atomic        temporary file (locked), fsync, rename, directory fsync; non-blocking reads
    stale         which temporary files of interrupted saves are dead (pure), their removal
    integrity     the sidecar record (size, xxh3-64, iteration, run) and its checks
    tag           last_checkpoint and the run it belongs to
    write         one checkpoint file: serialize, verify, rename, record
    snapshot      host copies of the state into buffers reused from save to save
    async_writer  one background thread, back-pressure, errors raised in the caller
    retention     which of this run's periodic checkpoints to delete (pure)
    signals       preemption signals turned into a flag the training loop polls
    saver         CheckpointSaver: the sequence above for one save
"""

from .errors import CheckpointSaveError, SaveConfigError
from .integrity import IntegrityError, IntegrityRecord, check_cheap, check_full, read_record
from .saver import TAG_FILE, CheckpointSaver, SaveOptions, iteration_of

__all__ = [
    "TAG_FILE",
    "CheckpointSaveError",
    "CheckpointSaver",
    "IntegrityError",
    "IntegrityRecord",
    "SaveConfigError",
    "SaveOptions",
    "check_cheap",
    "check_full",
    "iteration_of",
    "read_record",
]
