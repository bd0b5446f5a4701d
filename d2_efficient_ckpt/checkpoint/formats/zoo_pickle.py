"""Model zoo pickles (``.pkl``): Detectron2's, and Caffe2 / Detectron1's.

A Detectron2 zoo file is ``{"model": {name: array}, "__author__": ...}``; a Caffe2 /
Detectron1 file keeps detection weights under ``"blobs"`` (or is the blobs itself), with
``*_momentum`` blobs of its solver beside them. Both are plain pickles of numpy arrays: they
run on the safe unpickler with the numpy allowlist alone, unless the caller trusts the file.
"""

import logging
import os
import pickle
from typing import Any

from ..errors import CheckpointFormatError
from ..storage.mapped import open_exact
from .opened import OpenedCheckpoint
from .safe_pickle import MalformedPickle, UnsafeGlobal, pickle_error, unpickle
from .safe_pickle.allowlist import numpy_globals

__all__ = ["SUFFIX", "DETECTRON2", "CAFFE2", "open_zoo_pickle"]

SUFFIX = ".pkl"
DETECTRON2, CAFFE2 = "pkl-detectron2", "pkl-caffe2"  # the formats an opened file reports

_ZOO_GLOBALS = numpy_globals()

logger = logging.getLogger(__name__)


def _find_zoo_global(module: str, name: str) -> Any:
    try:
        return _ZOO_GLOBALS[(module, name)]
    except KeyError:
        raise UnsafeGlobal(f"{module}.{name}") from None


def _load(path: str, weights_only: bool) -> Any:
    try:
        with os.fdopen(open_exact(path), "rb") as f:
            if weights_only:
                data, _ = unpickle(f.read(), find_global=_find_zoo_global, encoding="latin1")
            else:
                data = pickle.load(f, encoding="latin1")
    except (MalformedPickle, UnsafeGlobal) as e:
        raise pickle_error(path, e) from None
    except MemoryError:
        raise CheckpointFormatError(
            path, "it asks for more memory than this machine has."
        ) from None
    except OSError as e:
        raise CheckpointFormatError(path, f"it cannot be read ({e.strerror or e}).") from None
    except Exception as e:  # noqa: BLE001 (only with weights_only=False: a trusted pickle)
        raise CheckpointFormatError(path, f"it is not a readable pickle ({e}).") from None
    return data


def open_zoo_pickle(path: str, fmt: str, *, mmap: bool, weights_only: bool) -> OpenedCheckpoint:
    """Open a zoo ``.pkl`` (read whole: ``mmap`` does not apply).

    Returns:
        The weights under ``model``, with ``__author__`` and, for Caffe2 files,
        ``matching_heuristics`` entries as detectron2 gives them.
    """
    data = _load(path, weights_only)
    if not isinstance(data, dict):
        raise CheckpointFormatError(path, f"the pickle holds a {type(data).__name__}, not a dict.")
    if "model" in data and "__author__" in data:
        if not isinstance(data["model"], dict):
            raise CheckpointFormatError(path, "its 'model' entry is not a dict of arrays.")
        logger.info(f"Reading a file from '{data['__author__']}'")
        return OpenedCheckpoint(path, data, DETECTRON2, lazy=False)
    # Caffe2 / Detectron1 zoo: detection models keep weights under "blobs".
    blobs = data.get("blobs", data)
    if not isinstance(blobs, dict):
        raise CheckpointFormatError(path, "its 'blobs' entry is not a dict of arrays.")
    model = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
    return OpenedCheckpoint(
        path,
        {"model": model, "__author__": "Caffe2", "matching_heuristics": True},
        CAFFE2,
        lazy=False,
    )
