"""Which store holds a path: the one question every user of a checkpoint directory asks.

A path without a scheme (``output/run1``, ``/mnt/ckpt``) is local; ``s3://bucket/prefix``
is the S3 store (:mod:`.s3`, made on first use, one per process). Any other scheme (``gs://``,
an iopath prefix such as ``manifold://``) is refused with one error naming it and the
stores there are, never written to a local folder named after the scheme. A store for a
scheme is added with :func:`register_store`.
"""

import re
from typing import Callable, Dict, Optional

from ..errors import CheckpointConfigError
from .base import Store
from .local import LocalStore
from .source import ByteSource

__all__ = [
    "UnsupportedStorageError",
    "forget_stores",
    "is_remote",
    "open_bytes",
    "register_store",
    "scheme_of",
    "store_for",
]

# "s3://bucket", "manifold://x", "remote://y": a scheme, then "://".
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_LOCAL = LocalStore()
_STORES: Dict[str, Callable[[], Store]] = {}
_MADE: Dict[str, Store] = {}  # one store per scheme and process: it holds a client and threads


class UnsupportedStorageError(CheckpointConfigError):
    """A checkpoint directory on storage that no store handles."""


def scheme_of(path: str) -> Optional[str]:
    """The scheme of ``path`` (``"s3"`` for ``s3://b/k``), or None for a plain path."""
    m = _SCHEME.match(path or "")
    return m.group(1).lower() if m else None


def register_store(scheme: str, factory: Callable[[], Store]) -> None:
    """Make ``factory()`` the store of paths ``<scheme>://...`` (made once, on first use)."""
    _STORES[scheme.lower()] = factory
    _MADE.pop(scheme.lower(), None)


def forget_stores() -> None:
    """Drop the stores made so far: the next use makes them again, reading the AWS chain
    anew (for a process that changed its credentials or endpoint, and for tests)."""
    _MADE.clear()


def _s3() -> Store:
    from .s3 import S3Store  # boto3 is imported only by a process that uses s3:// paths

    return S3Store()


register_store("s3", _s3)


def store_for(path: str, what: str = "checkpoint directory") -> Store:
    """The store of ``path``.

    Args:
        path: a file or directory path.
        what: what the path is, for the message (``OUTPUT_DIR``, say).

    Raises:
        UnsupportedStorageError: no store handles its scheme.
    """
    scheme = scheme_of(path)
    if scheme is None:
        return _LOCAL
    made = _MADE.get(scheme)
    if made is not None:
        return made
    factory = _STORES.get(scheme)
    if factory is None:
        known = "".join(f", {s}://" for s in sorted(_STORES))
        raise UnsupportedStorageError(
            f"The {what} {path} is on '{scheme}://' storage, which checkpoints cannot be saved "
            f"to: the supported stores are {_LOCAL.description}, as a plain path{known}. "
            "Nothing was written. Set it to a local path (e.g. OUTPUT_DIR ./output/run1) or "
            "to storage mounted at a path."
        )
    return _MADE.setdefault(scheme, factory())


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL of a registered store (``s3://...``), not a local path."""
    scheme = scheme_of(path)
    return scheme is not None and scheme in _STORES


def open_bytes(path: str) -> ByteSource:
    """Exact, checked reads of the file or object at ``path`` (see :class:`ByteSource`).

    Raises:
        UnsupportedStorageError: no store handles its scheme.
        OSError: it cannot be opened.
    """
    return store_for(path).open_bytes(path)
