"""Helpers shared by the subcommands: errors, output, files, logging."""

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import sys
import textwrap
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch

from ..checkpoint.formats import OpenedCheckpoint, open_checkpoint
from ..checkpoint.formats.registry import CHECKPOINT_SUFFIXES, model_writer_for, output_format
from ..checkpoint.save.errors import CheckpointSaveError
from ..checkpoint.save.saver import iteration_of
from ..checkpoint.save.write import write_checkpoint
from ..checkpoint.storage.registry import is_remote, store_for
from ..errors import EXIT_BAD_INPUT, UserError

EXIT_OK = 0
EXIT_FAILED = 1  # the policy says error (diff), or integrity problems (verify)
# EXIT_BAD_INPUT (2) and EXIT_INTERNAL_ERROR (3) are every tool's: see ..errors.


class CliError(UserError):
    """An error to print as ``error: <message>`` and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


def add_parser(sub, name: str, help: str, description: str, examples: str, common):
    """A subcommand parser whose --help ends with examples."""
    return sub.add_parser(
        name,
        parents=[common],
        help=help,
        description="\n".join(textwrap.fill(part, 79) for part in description.split("\n")),
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def emit(args, data: Dict[str, Any], text: str) -> None:
    """Print ``data`` as JSON with --json, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=json_default))
    elif text:
        print(text)


def show_progress(args) -> bool:
    """Progress bars go to stderr, only for people: not with --json, not when redirected."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


def local_file(path: str) -> str:
    """A local path for ``path`` (URLs such as detectron2:// are downloaded and cached); an
    object of a store (``s3://bucket/key``) is returned as it is, once it is known to exist.

    Raises:
        CliError: the file or object does not exist.
    """
    if is_remote(path):  # an object: read in ranges where the format allows
        try:
            store_for(path).info(path)
        except FileNotFoundError:
            raise CliError(f"{path}: no such object.") from None
        return path
    if "://" in path:
        from detectron2.utils.file_io import PathManager

        try:
            path = PathManager.get_local_path(path)
        except Exception as e:
            raise CliError(f"cannot fetch {path}: {e}") from None
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise CliError(f"{path} is a directory, not a checkpoint file.")
    return path


def file_size(path: str) -> int:
    """The size of a local file or of an object (``s3://...``)."""
    if is_remote(path):
        return store_for(path).info(path).size
    return os.path.getsize(path)


def open_lazy(path: str) -> OpenedCheckpoint:
    """Open a checkpoint memory-mapped and without unsafe pickle code."""
    return open_checkpoint(local_file(path), mmap=True, weights_only=True)


def model_state(opened: OpenedCheckpoint) -> Tuple[Mapping[str, Any], Dict[str, Any]]:
    """The model state dict of an opened checkpoint, and its other entries.

    Raises:
        CheckpointFormatError: no ``model`` entry and not a bare state dict.
    """
    return opened.read_model()  # values read length-checked, never from the mapping


@contextlib.contextmanager
def quiet_logs(verbose: bool) -> Iterator[None]:
    """Silence library logs (the CLI prints its own output); ``--verbose`` shows them."""
    names = ("detectron2", "fvcore", "d2_efficient_ckpt", "iopath")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    handler = None
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
    try:
        for lg in loggers:
            lg.setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
            if handler is not None:
                lg.addHandler(handler)
                lg.propagate = False
        yield
    finally:
        for lg, (level, propagate, handlers) in zip(loggers, saved):
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers[:] = handlers


ENTRIES_METADATA_KEY = "d2_efficient_ckpt.entries"


# Entries a converted file carries besides its weights; "model" is the weights themselves.
_NOT_AN_ENTRY = ("model",)


def scalar_entries(extra: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries that are plain values (iteration, __author__, matching_heuristics).

    Never ``model``: an entry of that name would replace the weights in the written file.
    """
    return {
        k: v
        for k, v in extra.items()
        if isinstance(k, str)
        and k not in _NOT_AN_ENTRY
        and isinstance(v, (bool, int, float, str))
        and not k.startswith("__format")
    }


def saved_entries(path: str, text: Any) -> Dict[str, Any]:
    """The plain entries a ``.safetensors`` file of ours keeps as JSON in its metadata.

    Raises:
        CliError: the metadata is not a JSON object.
    """
    try:
        parsed = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise CliError(f"{path}: its '{ENTRIES_METADATA_KEY}' metadata is not a JSON object.")
    return scalar_entries(parsed)


def check_output(src: str, out: str, force: bool) -> str:
    """The output format (``safetensors`` or ``torch``) of ``out``, after sanity checks.

    ``out`` may be an object (``s3://bucket/key``): its bucket must exist.
    """
    if is_remote(out):
        _check_remote_output(src, out, force)
    else:
        if not is_remote(src) and os.path.abspath(src) == os.path.abspath(out):
            raise CliError("the output must be another file than the input.")
        if os.path.exists(out) and not force:
            raise CliError(f"{out} exists; pass --force to overwrite it.")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise CliError(f"the output folder {parent} does not exist.")
    kind = output_format(out)
    if kind is None:
        raise CliError(
            f"cannot tell the output format of {out}: name it {' or '.join(CHECKPOINT_SUFFIXES)}."
        )
    return kind


def _check_remote_output(src: str, out: str, force: bool) -> None:
    if src.rstrip("/") == out.rstrip("/"):
        raise CliError("the output must be another object than the input.")
    store = store_for(out)
    if store.exists(out) and not force:
        raise CliError(f"{out} exists; pass --force to overwrite it.")
    try:
        store.makedirs(os.path.dirname(out))  # an object store: whether the bucket exists
    except FileNotFoundError:
        bucket = out.split("://", 1)[1].split("/", 1)[0]
        raise CliError(f"the bucket of {out} does not exist; create s3://{bucket} first.") from None


def write_output(out: str, kind: str, entries, extra: Dict[str, Any], progress: bool) -> int:
    """Write model weights (``entries``) and plain ``extra`` entries; returns the file size.

    The file is written as the saver writes checkpoints (``save.write.write_checkpoint``):
    into a temporary file, fsynced, read back and compared, renamed over ``out``, and given
    an integrity record, so that an interrupted command leaves no partial output. A
    safetensors file keeps the extra entries as JSON in its metadata.

    Raises:
        CliError: the file cannot be written (no space, no permission).
    """
    writer = functools.partial(
        model_writer_for(kind),
        extra=extra,
        progress=progress,
        desc=f"writing {os.path.basename(out)}",
        path=out,
    )
    try:
        result = write_checkpoint(
            out, list(entries), iteration=iteration_of(extra), serializer=keep_interrupts(writer)
        )
    except CheckpointSaveError as e:  # a full disk or a read-only folder is the user's to fix
        raise CliError(f"cannot write {out}: {_os_reason(e)}.") from None
    return result.record.size


def _os_reason(e: BaseException) -> Any:
    """What the operating system said about a failed write: the ``OSError`` behind ``e``."""
    seen: Optional[BaseException] = e
    for _ in range(8):  # the chain is short: explain_os_error's, from the serializer's
        if seen is None or isinstance(seen, OSError):
            break
        seen = seen.__cause__ or seen.__context__
    return (seen.strerror or seen) if isinstance(seen, OSError) else e


class _WatchedFile:
    """A file object that remembers whether a write was interrupted (Ctrl-C)."""

    def __init__(self, f: Any):
        self._f, self.interrupted = f, False

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except KeyboardInterrupt:
            self.interrupted = True
            raise

    def flush(self) -> None:
        self._f.flush()


def keep_interrupts(serializer: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``serializer`` whose Ctrl-C stays a ``KeyboardInterrupt`` (exit 130, not a bug).

    torch's zip writer turns any exception raised in a file object's ``write`` into a
    ``RuntimeError``; the temporary file is removed either way.
    """

    def run(data: Any, f: Any) -> None:
        watched = _WatchedFile(f)
        try:
            serializer(data, watched)
        except RuntimeError:
            if watched.interrupted:
                raise KeyboardInterrupt from None
            raise

    return run
