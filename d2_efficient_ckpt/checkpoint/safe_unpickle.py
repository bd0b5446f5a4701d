"""Allowlisted unpickling for checkpoint files.

Torch files go through ``torch.load(weights_only=True)`` with a few extra numpy globals that
real detectron2 checkpoints contain. Model-zoo ``.pkl`` files go through
:class:`RestrictedUnpickler`, which builds numpy arrays, dicts, lists, strings and numbers and
nothing else.
"""

import collections
import contextlib
import io
import pickle
from typing import Any, Callable, Dict, Iterator, Tuple

import numpy as np
import torch

__all__ = ["RestrictedUnpickler", "restricted_pickle_load", "torch_safe_globals", "SafeGlobalError"]


class SafeGlobalError(pickle.UnpicklingError):
    """Raised by :class:`RestrictedUnpickler` for a global outside the allowlist."""

    def __init__(self, name: str):
        self.global_name = name
        super().__init__(f"global '{name}' is not allowed")


def _numpy_core():
    # numpy 2 moved numpy.core to numpy._core; pickles name whichever wrote them.
    return getattr(np, "_core", None) or np.core


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    core = _numpy_core()
    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): __import__("codecs").encode,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = core.multiarray._reconstruct
        allowed[(mod, "scalar")] = core.multiarray.scalar
    # dtype classes, e.g. numpy.dtypes.Float32DType, appear in pickles made by numpy >= 1.25.
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                allowed[("numpy.dtypes", name)] = getattr(dtypes, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays, containers, strings and numbers.

    Raises:
        SafeGlobalError: on any other global, naming it.
    """

    _ALLOWED = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()
        try:
            return RestrictedUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise SafeGlobalError(f"{module}.{name}") from None


def restricted_pickle_load(f: io.BufferedIOBase) -> Any:
    """Unpickle ``f`` (latin1 for Python-2 era zoo files) with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(f, encoding="latin1").load()


@contextlib.contextmanager
def torch_safe_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` accept the numpy globals of older checkpoints."""
    extra = []
    for (module, name), obj in _allowed_globals().items():
        if module.startswith("numpy") or module == "_codecs":
            extra.append((obj, f"{module}.{name}"))
    with torch.serialization.safe_globals(extra):
        yield


def unsafe_globals_from_error(err: BaseException, scan: Callable[[], list]) -> list:
    """Names of the globals that made a weights-only load fail.

    Args:
        err: the exception from ``torch.load(weights_only=True)``.
        scan: a callable returning ``torch.serialization.get_unsafe_globals_in_checkpoint``
            output; only works for zip files, so it may raise.

    Returns:
        A list of ``module.name`` strings; empty if none could be determined.
    """
    try:
        names = [g for g in scan() if not g.startswith(("numpy", "_codecs"))]
        if names:
            return names
    except Exception:  # legacy files cannot be scanned; fall back to the message
        pass
    text = str(err)
    for marker in ("Unsupported global: GLOBAL ", "GLOBAL "):
        if marker in text:
            return [text.split(marker, 1)[1].split()[0]]
    return []
