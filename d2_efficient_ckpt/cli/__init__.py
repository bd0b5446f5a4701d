"""``python -m d2_efficient_ckpt``: inspect, diff, convert, strip and verify checkpoints.

Exit codes: 0 success; 1 a check failed (``diff`` under CHECKPOINT.LOAD.ON_MISMATCH error,
``verify``); 2 bad input (missing or unreadable file, a config that does not build, bad
arguments), printed as one ``error: <message>`` line (``--debug`` shows its traceback);
3 an unexpected error, i.e. a bug, printed with its traceback (see :mod:`..errors`).
"""

import argparse
import os
import sys
import warnings
from typing import List, Optional

from ..checkpoint.errors import CheckpointPolicyError
from ..errors import USER_ERRORS, error_message, print_error, report_exception
from . import convert_cmd, diff_cmd, inspect_cmd, strip_cmd, verify_cmd
from .common import EXIT_BAD_INPUT, EXIT_FAILED, CliError, quiet_logs

__all__ = ["main", "build_parser"]

_COMMANDS = (inspect_cmd, diff_cmd, convert_cmd, strip_cmd, verify_cmd)
EXAMPLES = """\
examples:
  python -m d2_efficient_ckpt inspect output/model_final.pth
  python -m d2_efficient_ckpt diff model_final.pth --config-file configs/my.yaml
  python -m d2_efficient_ckpt diff output/model_0000999.pth output/model_final.pth
  python -m d2_efficient_ckpt convert model_final.pth model_final.safetensors
  python -m d2_efficient_ckpt strip --fp16 output/model_final.pth deploy.safetensors
  python -m d2_efficient_ckpt verify deploy.safetensors
Run "python -m d2_efficient_ckpt COMMAND --help" for the options of each command.

exit codes:
  0 success; 1 a check failed (diff under CHECKPOINT.LOAD.ON_MISMATCH error, verify);
  2 bad input (a missing or unreadable file, a config that does not build, bad arguments),
    printed as one "error: ..." line; 3 an unexpected error (a bug), printed with its traceback.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per module in ``_COMMANDS``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--verbose", action="store_true", help="show library logs on stderr")
    common.add_argument("--debug", action="store_true", help="show tracebacks of bad input too")
    parser = argparse.ArgumentParser(
        prog="python -m d2_efficient_ckpt",
        description="Inspect, compare, convert, strip and verify detectron2 checkpoints.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub, common)
    return parser


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured)
        pass


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and not token[1:2].isdigit() and token != "-"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool; returns the exit code instead of exiting."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_BAD_INPUT
        if extra and (
            not getattr(args, "accepts_extra", False) or any(map(_looks_like_flag, extra))
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, or argparse's own usage errors
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    args.extra = extra
    try:
        with quiet_logs(args.verbose), warnings.catch_warnings():
            if not args.verbose:
                warnings.simplefilter("ignore")
            return args.func(args)
    except KeyboardInterrupt:
        print_error("interrupted.")
        return 130
    except BrokenPipeError:  # the reader closed the pipe early, e.g. `| head`
        _silence_stdout()
        return 0
    except (CliError, *USER_ERRORS) as e:  # bad input: one line, the traceback only on --debug
        if args.debug:
            raise
        print_error(error_message(e))
        if isinstance(e, CliError):
            return e.code
        return EXIT_FAILED if isinstance(e, CheckpointPolicyError) else EXIT_BAD_INPUT
    except Exception as e:  # a bug: its traceback, and a code of its own
        return report_exception(e)
