"""Which store holds a path: the one question every user of a checkpoint directory asks.

A path without a scheme (``output/run1``, ``/mnt/ckpt``) is local. A path with a scheme
(``s3://``, ``gs://``, an iopath prefix such as ``manifold://``) is refused with one error
naming it and the stores there are, never written to a local folder named after the
scheme. A store for a scheme is added with :func:`register_store`.
"""

import re
from typing import Callable, Dict, Optional

from ..errors import CheckpointConfigError
from .base import Store
from .local import LocalStore

__all__ = ["UnsupportedStorageError", "register_store", "scheme_of", "store_for"]

# "s3://bucket", "manifold://x", "remote://y": a scheme, then "://".
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_LOCAL = LocalStore()
_STORES: Dict[str, Callable[[], Store]] = {}


class UnsupportedStorageError(CheckpointConfigError):
    """A checkpoint directory on storage that no store handles."""


def scheme_of(path: str) -> Optional[str]:
    """The scheme of ``path`` (``"s3"`` for ``s3://b/k``), or None for a plain path."""
    m = _SCHEME.match(path or "")
    return m.group(1).lower() if m else None


def register_store(scheme: str, factory: Callable[[], Store]) -> None:
    """Make ``factory()`` the store of paths ``<scheme>://...``."""
    _STORES[scheme.lower()] = factory


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
    factory = _STORES.get(scheme)
    if factory is None:
        known = "".join(f", {s}://" for s in sorted(_STORES))
        raise UnsupportedStorageError(
            f"The {what} {path} is on '{scheme}://' storage, which checkpoints cannot be saved "
            f"to: the supported stores are {_LOCAL.description}, as a plain path{known}. "
            "Nothing was written. Set it to a local path (e.g. OUTPUT_DIR ./output/run1) or "
            "to storage mounted at a path."
        )
    return factory()
