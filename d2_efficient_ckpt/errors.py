"""Errors that mean "the input is wrong", and how command-line tools report them.

Tools print these as one ``error: ...`` line and exit non-zero, because their messages
already name the file, key or record and the fix; a traceback would only bury that.
"""

import sys
from typing import Any, Callable

from .checkpoint.errors import CheckpointError
from .data.errors import DatasetConfigError, DatasetValidationError

__all__ = ["USER_ERRORS", "exit_on_user_error"]

# Raised for bad files, bad configs and bad datasets. ValueError covers config type errors
# from merge_cfg_safely; KeyError covers unknown registry names.
USER_ERRORS = (
    CheckpointError,
    DatasetConfigError,
    DatasetValidationError,
    FileNotFoundError,
    ValueError,
    KeyError,
)


def exit_on_user_error(fn: Callable[..., Any], *args: Any, code: int = 2, **kwargs: Any) -> Any:
    """Call ``fn``; on a :data:`USER_ERRORS` exception print it and exit with ``code``.

    Args:
        fn: the tool's entry point.
        *args, **kwargs: passed to ``fn``.
        code: the exit status for bad input.

    Returns:
        What ``fn`` returns.
    """
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(code)
