"""Errors that mean "the input is wrong", and how every command-line tool reports failures.

One rule for ``python -m d2_efficient_ckpt`` and the scripts under ``tools/``:

- an exception of the package's own user-error types (:class:`UserError`, the one base of
  every error the package raises for bad input) is bad input. It
  is printed as one ``error: <message>`` line and the exit status is
  :data:`EXIT_BAD_INPUT` (2): its message already names the file, key or record and the fix,
  and a traceback would only bury that.
- any other exception is a bug (here or in a library). Its traceback is printed, then one
  ``internal error:`` line, and the exit status is :data:`EXIT_INTERNAL_ERROR` (3), so that a
  bug never looks like bad input.
"""

import sys
import traceback
from typing import Any, Callable

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL_ERROR",
    "USER_ERRORS",
    "UserError",
    "error_message",
    "exit_on_user_error",
    "print_error",
    "report_exception",
]

EXIT_BAD_INPUT = 2  # a file, config, dataset or argument is wrong; one error line says which
EXIT_INTERNAL_ERROR = 3  # an unexpected exception: a bug; the traceback is printed


class UserError(Exception):
    """Base of every error the package raises for bad input: a file, config, dataset or
    argument that is wrong. Its message names it and the fix.

    Only these count as bad input: a built-in ``ValueError`` or ``KeyError`` may just as well
    be a bug. Subclasses also derive from the built-in type a caller would expect
    (``ValueError``, ``KeyError``, ``FileNotFoundError``), so existing handlers keep working.
    """


# What the tools report as bad input (see the module docstring).
USER_ERRORS = (UserError,)


def error_message(e: BaseException) -> str:
    """The message of ``e`` as a user should read it.

    ``str(KeyError("x"))`` is ``"'x'"`` (quoted); its argument reads better.
    """
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e)


def print_error(message: str) -> None:
    """Print ``error: <message>`` on stderr: the one form of every tool's bad-input report."""
    print(f"error: {message}", file=sys.stderr)


def report_exception(e: BaseException) -> int:
    """Report ``e`` as the module docstring says, and return the exit status to use.

    Args:
        e: the exception that ended the tool.

    Returns:
        :data:`EXIT_BAD_INPUT` for :data:`USER_ERRORS`, else :data:`EXIT_INTERNAL_ERROR`.
    """
    if isinstance(e, USER_ERRORS):
        print_error(error_message(e))
        return EXIT_BAD_INPUT
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    print(
        f"internal error: unexpected {type(e).__name__}. This is a bug, not bad input; "
        "please report it with the traceback above.",
        file=sys.stderr,
    )
    return EXIT_INTERNAL_ERROR


def exit_on_user_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a tool's entry point; if it raises, report the exception and exit.

    Bad input (:data:`USER_ERRORS`) exits with :data:`EXIT_BAD_INPUT` after one ``error:``
    line; any other exception exits with :data:`EXIT_INTERNAL_ERROR` after its traceback.

    Args:
        fn: the tool's entry point.
        *args, **kwargs: passed to ``fn``.

    Returns:
        What ``fn`` returns.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # reported by type: bad input as one line, a bug with its traceback
        sys.exit(report_exception(e))
