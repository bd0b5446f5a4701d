"""``last_checkpoint``: the file a resume continues from, and the run it belongs to.

``last_checkpoint`` holds one base name, exactly as fvcore and stock detectron2 write and
read it, so either can resume from a folder of ours and the reverse. Next to it,
``last_checkpoint.run.json`` holds the same name and the identity of the run that wrote it:
when the tagged file is missing or broken, a resume falls back only to files of that run.

A save writes the run file first, then ``last_checkpoint``, each atomically. A kill between
the two, or a ``last_checkpoint`` written by someone else (fvcore, stock detectron2, a user),
leaves a run file that names another file: :func:`read_tag` then takes the run from the
tagged file's own integrity record, and the run file only when that record says nothing.
Both are read without blocking and only when they are regular files.
"""

import json
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from ..storage.atomic import NotRegularFileError
from ..storage.registry import store_for

__all__ = ["TAG_FILE", "RUN_FILE", "Tag", "read_tag", "write_tag"]

TAG_FILE = "last_checkpoint"
RUN_FILE = "last_checkpoint.run.json"
_LIMIT = 4096


@dataclass(frozen=True)
class Tag:
    """What the tag files of a directory say.

    Attributes:
        name: the base name ``last_checkpoint`` holds, or None (absent or unusable).
        problem: why ``last_checkpoint`` is unusable, "" if it is fine or absent.
        run: the run identity the run file gives for ``name`` (or for the file it names, when
            ``names_tagged`` is False); "" if none.
        names_tagged: whether the run file names the same file as ``last_checkpoint``.
    """

    name: Optional[str] = None
    problem: str = ""
    run: str = ""
    names_tagged: bool = False


def _read_name(path: str) -> Tuple[Optional[str], str]:
    try:
        raw = store_for(path).read_small(path, _LIMIT)
    except FileNotFoundError:
        return None, ""
    except NotRegularFileError as e:
        return None, f"last_checkpoint is {e.strerror}"
    except OSError as e:
        return None, f"last_checkpoint is unreadable ({e.strerror})"
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "last_checkpoint is corrupt (not text)"
    if not name or "/" in name or "\n" in name or "\x00" in name or name in (".", ".."):
        return None, "last_checkpoint is corrupt (no single file name in it)"
    return name, ""


def _read_run(path: str) -> Tuple[str, str]:
    """``(file, run)`` of the run file, or ``("", "")`` if it is absent or unusable."""
    try:
        raw = json.loads(store_for(path).read_small(path, _LIMIT).decode("utf-8"))
        return str(raw["file"]), str(raw["run"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "", ""


def read_tag(directory: str) -> Tag:
    """The tag of ``directory``: never raises, never blocks."""
    name, problem = _read_name(os.path.join(directory, TAG_FILE))
    named, run = _read_run(os.path.join(directory, RUN_FILE))
    return Tag(name, problem, run, names_tagged=bool(name) and named == name)


def write_tag(directory: str, basename: str, run: str) -> None:
    """Point the tag at ``basename`` of ``run``: the run file, then ``last_checkpoint``.

    Raises:
        OSError: a tag file cannot be written; ``last_checkpoint`` is then unchanged.
    """
    body = json.dumps({"file": basename, "run": run}).encode("utf-8")
    store = store_for(directory)
    store.write_bytes(os.path.join(directory, RUN_FILE), body)
    store.write_bytes(os.path.join(directory, TAG_FILE), basename.encode("utf-8"))
