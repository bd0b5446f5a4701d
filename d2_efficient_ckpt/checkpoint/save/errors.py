"""Errors of the saving side; both are user-facing (see ``d2_efficient_ckpt.errors``)."""

from ..errors import CheckpointError

__all__ = ["CheckpointSaveError", "SaveConfigError"]


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written; the previous checkpoint is untouched."""

    def __init__(self, path: str, problem: str, fix: str = ""):
        self.path = path
        msg = f"Cannot save checkpoint '{path}': {problem}"
        if fix:
            msg += f" {fix}"
        super().__init__(msg)


class SaveConfigError(CheckpointError, ValueError):
    """A ``CHECKPOINT.SAVE`` setting has a value that cannot work; the message names it."""
