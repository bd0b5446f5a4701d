"""The open step of a load: a checkpoint file as its model state, its other entries, and how
they were read.

fvcore's extension point for reading is ``Checkpointer._load_file(filename) -> dict``.
The checkpointer's own ``_load_file`` returns a :class:`CheckpointDict`: the plain dict
fvcore expects, which also remembers the file mapping its tensors view. A subclass that
post-processes that dict in place (renaming keys, dropping entries) keeps lazy, checked
reads; one that returns another dict is read eagerly, and :func:`source_of` says so.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import parse_qs, urlparse

from ..errors import CheckpointConfigError, CheckpointFormatError
from ..formats import OpenedCheckpoint, open_checkpoint
from ..options import LoadOptions
from ..restore.parts import trainer_entry_problem
from ..save.integrity import check_cheap
from ..storage.cache import cached_copy
from ..storage.mapped import MappedFile
from ..storage.registry import is_remote

__all__ = [
    "CheckpointDict",
    "Source",
    "open_request",
    "open_source",
    "overrides",
    "parse_checkpoint_url",
    "source_of",
    "warn_unused_hooks",
]

# fvcore hooks a load through the pipeline does not call (it does their work itself).
_UNUSED_HOOKS = ("_load_model", "_log_incompatible_keys", "_convert_ndarray_to_tensor")

logger = logging.getLogger(__name__)


@dataclass
class Source:
    """An opened checkpoint.

    Attributes:
        path: the local file.
        state: the model's state dict (lazy where the format allows).
        entries: every other top-level entry (``trainer``, ``iteration``, ...).
        format: how it was read (see ``open_checkpoint``); "" when a subclass's
            ``_load_file`` built the dict itself.
        mapping: the file mapping the tensors view, for prefetching and checked reads.
    """

    path: str
    state: Mapping[str, Any]
    entries: Dict[str, Any]
    format: str = ""
    mapping: Optional[MappedFile] = None


class CheckpointDict(dict):
    """The checkpoint's entries (``model`` included), as ``_load_file`` returns them.

    Attributes:
        path: the file.
        format: how it was read.
        mapping: the file mapping its tensors view, or None.
    """

    path: str = ""
    format: str = ""
    mapping: Optional[MappedFile] = None

    @classmethod
    def of(cls, source: Source) -> "CheckpointDict":
        out = cls({"model": source.state, **source.entries})
        out.path, out.format, out.mapping = source.path, source.format, source.mapping
        return out


def open_request(
    request: Any, config: LoadOptions, load_file: Optional[Callable[[str], Any]] = None
) -> Source:
    """The open step of a :class:`~.pipeline.LoadRequest`.

    Args:
        request: the load's request (its path is local).
        config: the checkpointer's ``CHECKPOINT.LOAD`` options, which ``load_file`` reads with.
        load_file: a subclass's ``_load_file``, or None for the built-in reader.

    Raises:
        CheckpointConfigError: the call asks for ``weights_only`` while ``load_file`` reads
            with ``WEIGHTS_ONLY False``: never less safely than asked.
    """
    path = request.path
    if request.options.remote_cache_dir and is_remote(path):
        path = cached_copy(path, request.options.remote_cache_dir)
    if os.path.isfile(path):  # a file this package saved: its size against its record
        check_cheap(path, require_record=False)
    if load_file is None:
        source = open_source(path, request.options)
    elif request.options.weights_only and not config.weights_only:
        owner = getattr(load_file, "__qualname__", "_load_file")
        raise CheckpointConfigError(
            f"load(weights_only=True) cannot be honoured: {owner} reads with "
            "CHECKPOINT.LOAD.WEIGHTS_ONLY False. Set it True in the config."
        )
    else:
        reader = getattr(load_file, "__qualname__", "_load_file").rsplit(".", 1)[0]
        source = source_of(path, load_file(path), reader)
    if request.matching_heuristics:
        source.entries["matching_heuristics"] = True  # returned, as by the stock class
    return source


def parse_checkpoint_url(path: str) -> Tuple[str, bool]:
    """``(path without its query, whether it asks for matching_heuristics=True)``.

    Raises:
        CheckpointConfigError: another query.
    """
    url = urlparse(path)
    queries = parse_qs(url.query)
    heuristics = queries.pop("matching_heuristics", "False") == ["True"]
    if queries:
        raise CheckpointConfigError(
            f"Unsupported query {queries} in checkpoint path {path}; only "
            "matching_heuristics=True is known."
        )
    return url._replace(query="").geturl(), heuristics


def open_source(path: str, options: LoadOptions) -> Source:
    """Open ``path`` with the load options' ``mmap`` and ``weights_only``.

    Raises:
        CheckpointFormatError: missing, truncated or unknown file; no model entry; a
            trainer entry that cannot be split into parts.
        UnsafeCheckpointError: the file needs pickle globals outside the allowlist.
    """
    opened = open_checkpoint(path, mmap=options.mmap, weights_only=options.weights_only)
    source = _checked(opened)
    lazy = "memory-mapped" if opened.lazy else "eager"
    safe = "weights only" if options.weights_only else "UNSAFE pickle allowed"
    logger.info(f"Reading {path} as {opened.format} ({lazy}, {safe}).")
    return source


def source_of(path: str, checkpoint: Mapping[str, Any], reader: str) -> Source:
    """The :class:`Source` of what a ``_load_file`` returned.

    Args:
        path: the file it read.
        checkpoint: its return value.
        reader: the class whose ``_load_file`` it is, for the warning below.
    """
    if isinstance(checkpoint, CheckpointDict):
        fmt, mapping = checkpoint.format, checkpoint.mapping
    else:
        fmt, mapping = "", None
        logger.warning(
            f"{reader}._load_file returned a {type(checkpoint).__name__}, not the dict of "
            "EfficientDetectionCheckpointer._load_file, so this load has no memory-mapping, "
            "no prefetch and no checked reads (a file changed during the load is not "
            "detected). To keep them, change the dict that super()._load_file() returns in "
            "place and return it."
        )
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(path, f"_load_file returned a {type(checkpoint).__name__}.")
    return _checked(OpenedCheckpoint(path, dict(checkpoint), fmt, mapping is not None, {}, mapping))


def _checked(opened: OpenedCheckpoint) -> Source:
    state, entries = opened.split_model()
    problem = trainer_entry_problem(entries.get("trainer"))
    if problem:
        raise CheckpointFormatError(opened.path, problem)
    return Source(opened.path, state, entries, opened.format, opened.mapping)


def overrides(cls: type, base: type, name: str) -> bool:
    """Whether ``cls`` (a subclass of ``base``) redefines the method ``name``."""
    return getattr(cls, name, None) is not getattr(base, name, None)


def warn_unused_hooks(cls: type, base: type) -> None:
    """Warn when ``cls`` overrides fvcore hooks that ``base`` does not call."""
    unused = [h for h in _UNUSED_HOOKS if overrides(cls, base, h)]
    if unused:
        logger.warning(
            f"{cls.__name__} overrides {', '.join(unused)}, which {base.__name__} does not "
            "call: its loads go through one pipeline. Override _load_file to change what is "
            "read."
        )
