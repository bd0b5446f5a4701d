"""Errors raised while reading or restoring checkpoints.

Each message names the file and says what to do, so that no user has to read a traceback
from inside torch or pickle to understand what went wrong.
"""

from typing import Iterable

from ..errors import UserError

__all__ = [
    "PartialLoadError",
    "ArchitectureMismatchError",
    "SaveConfigError",
    "CheckpointConfigError",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointPolicyError",
    "UnsafeCheckpointError",
    "UnknownCheckpointerError",
    "RemoteStorageError",
]


class CheckpointError(UserError, RuntimeError):
    """Base class for checkpoint problems this package explains."""


class CheckpointConfigError(CheckpointError, ValueError):
    """A ``CHECKPOINT.*`` setting, or the matching ``load()`` argument, that cannot work."""


class SaveConfigError(CheckpointError, ValueError):
    """A ``CHECKPOINT.SAVE`` setting has a value that cannot work; the message names it.

    Also raised when the setting cannot store a value of the state (a pickle-free format and
    an object that is not data), wherever that is found.
    """


class RemoteStorageError(CheckpointError):
    """A remote store refused or failed a request: the message names the URL and the fix.

    Not an ``OSError`` on purpose: a store that cannot be reached is not a broken checkpoint,
    so a resume stops here instead of passing over every checkpoint as damaged.

    Attributes:
        url: the object or prefix.
        code: the store's error code (``AccessDenied``, ``NoSuchBucket``, ...) or the kind
            of failure (``timeout``, ``connection``).
    """

    def __init__(self, url: str, code: str, problem: str, fix: str = ""):
        self.url, self.code = url, code
        msg = f"Object storage request for '{url}' failed: {problem}"
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


class UnknownCheckpointerError(CheckpointConfigError, KeyError):
    """``CHECKPOINT.NAME`` names no registered checkpointer (a ``KeyError``, like a registry's)."""


class CheckpointFormatError(CheckpointError, ValueError):
    """The file is missing, truncated, of an unknown format, or lacks a model entry."""

    def __init__(self, path: str, problem: str, fix: str = ""):
        self.path = path
        msg = f"Cannot load checkpoint '{path}': {problem}"
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


class UnsafeCheckpointError(CheckpointError):
    """The file needs pickle globals outside the allowlist, i.e. it could run code."""

    def __init__(self, path: str, globals_needed: Iterable[str]):
        self.path = path
        self.globals_needed = sorted(set(globals_needed))
        names = ", ".join(self.globals_needed) or "(unknown)"
        super().__init__(
            f"Refusing to load checkpoint '{path}': it needs the pickle global(s) {names}, "
            "which are not plain tensors, numpy arrays or containers and could run arbitrary "
            "code. If you trust this file, opt in with CHECKPOINT.LOAD.WEIGHTS_ONLY False in the "
            "config (or weights_only=False in load()/resume_or_load()), or convert it once to a "
            "pickle-free .safetensors file."
        )


class CheckpointPolicyError(CheckpointError):
    """A load broke ``CHECKPOINT.LOAD.ON_MISMATCH "error"``.

    Attributes:
        path: the checkpoint file.
        violations: ``(kind, key)`` pairs not tolerated by ``ALLOW_MISMATCH``; kind is
            ``missing``, ``unexpected`` or ``shape_mismatch``.
        suggested_allow: glob patterns that, added to ``ALLOW_MISMATCH``, would tolerate them.
    """

    def __init__(self, message: str, path: str = "", violations=(), suggested_allow=()):
        self.path = path
        self.violations = list(violations)
        self.suggested_allow = list(suggested_allow)
        super().__init__(message)


class PartialLoadError(CheckpointError):
    """Copying stopped after some tensors had been written into the model."""


class ArchitectureMismatchError(CheckpointFormatError):
    """A resume found a checkpoint of another architecture, before restoring anything."""

    def __init__(self, path: str, problem: str):
        super().__init__(
            path,
            problem,
            "A resume continues this run's own checkpoints; to start from these weights, "
            "load the file with MODEL.WEIGHTS and train without --resume.",
        )
        self.problem = problem
