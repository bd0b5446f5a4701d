"""Exceptions raised by the dataset layer.

Both derive from the package's :class:`~d2_efficient_ckpt.errors.UserError` (the tools
report them as bad input) and from :class:`ValueError`, so callers that already catch
bad-value errors keep working, while tests and tools can tell a broken dataset from a
broken config.
"""

from ..errors import UserError

__all__ = ["DatasetConfigError", "DatasetValidationError", "format_offenders"]


class DatasetConfigError(UserError, ValueError):
    """The config declares or names datasets in a way that cannot work.

    Examples: a ``DATASETS.CUSTOM`` entry without ``ANN_FILE``, an unknown ``FORMAT``, a name
    in ``DATASETS.TRAIN`` that nobody registered, or ``MODEL.ROI_HEADS.NUM_CLASSES`` that
    disagrees with the training data.
    """


class DatasetValidationError(UserError, ValueError):
    """A declared dataset's files or records are missing or malformed."""


def format_offenders(lines: list, limit: int = 5, indent: str = "  ") -> str:
    """Render the first ``limit`` offending records, one per line, then a count of the rest.

    Args:
        lines: one human-readable description per offending record.
        limit: how many to show before summarising the remainder.
        indent: prefix of each rendered line.

    Returns:
        A newline-joined block such as ``"  annotation id 3: ...\\n  ... and 7 more"``.
    """
    shown = [f"{indent}{line}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"{indent}... and {len(lines) - limit} more")
    return "\n".join(shown)
