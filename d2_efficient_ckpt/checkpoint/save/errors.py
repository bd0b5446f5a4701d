"""Errors of the saving side; both are user-facing (see ``d2_efficient_ckpt.errors``).

``SaveConfigError`` lives with the package's other errors (``..errors``), since the formats
raise it too for state their format cannot store; it is named here for the saving side.
"""

from ..errors import CheckpointError, SaveConfigError

__all__ = ["CheckpointSaveError", "SaveConfigError"]


class CheckpointSaveError(CheckpointError):
    """A checkpoint could not be written; the previous checkpoint is untouched."""

    def __init__(self, path: str, problem: str, fix: str = ""):
        self.path = path
        msg = f"Cannot save checkpoint '{path}': {problem}"
        if fix:
            msg += f" {fix}"
        super().__init__(msg)
