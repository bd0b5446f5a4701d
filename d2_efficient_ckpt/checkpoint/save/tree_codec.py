"""A training checkpoint as named tensors plus a JSON skeleton: no pickle anywhere.

:func:`encode` splits a checkpoint (``{"model": state_dict, "trainer": {...}, ...}``) into
tensors, each under a name, and a JSON-serialisable skeleton that records every container,
scalar and where each tensor goes. :func:`decode` (in ``io.training_tree``, where the loader
uses it) puts it back from any ``name -> tensor`` lookup, so a reader may hand in lazy values.

Tensor names are readable paths: ``model/backbone.fpn_output2.weight``,
``trainer/optimizer/state/3/momentum_buffer``. A state dict's ``_metadata`` (module versions,
which ``load_state_dict`` uses) is kept. Objects other than tensors, numpy arrays, dicts,
lists, tuples, str, int, float, bool and None cannot be stored: the error names their path.
"""

from collections import Counter, OrderedDict
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..io.allowlist import is_safe_key
from ..io.training_tree import TRAINING_FORMAT, decode
from .errors import SaveConfigError

__all__ = ["TRAINING_FORMAT", "encode", "decode"]

_SCALARS = (str, int, float, bool, type(None))


def encode(data: Any) -> Tuple[Dict[str, torch.Tensor], Any]:
    """Split ``data`` into ``(tensors by name, skeleton)``.

    Raises:
        SaveConfigError: a value that is not a tensor, array, container or scalar, or a
            dict key that is not a str, int, float, bool or None; the message names its path.
    """
    tensors: Dict[str, torch.Tensor] = {}

    def name_for(path: List[str]) -> str:
        base = "/".join(path) or "tensor"
        name, n = base, 1
        while name in tensors:  # keys such as 1 and "1" meet in one path
            n += 1
            name = f"{base}#{n}"
        return name

    def walk(obj: Any, path: List[str]) -> Any:
        if isinstance(obj, torch.Tensor):
            name = name_for(path)
            tensors[name] = obj.detach()
            return {"t": "tensor", "k": name}
        if isinstance(obj, np.ndarray):
            name = name_for(path)
            tensors[name] = torch.from_numpy(np.ascontiguousarray(obj))
            return {"t": "ndarray", "k": name}
        if isinstance(obj, dict):
            items = []
            for key, value in obj.items():
                # The reader's key policy: what it would refuse is never written.
                if not isinstance(key, _SCALARS) or not is_safe_key(key):
                    raise _unstorable(path, f"a dict key of type {type(key).__name__}")
                items.append([key, walk(value, path + [str(key)])])
            # Counter keeps its type: torch's MultiStepLR looks up missing milestones in it.
            kind = "odict" if isinstance(obj, OrderedDict) else "dict"
            out = {"t": "counter" if isinstance(obj, Counter) else kind, "items": items}
            meta = getattr(obj, "_metadata", None)
            if meta is not None:
                out["meta"] = walk(meta, path + ["_metadata"])
            return out
        if isinstance(obj, (list, tuple)):
            kind = "list" if isinstance(obj, list) else "tuple"
            return {"t": kind, "v": [walk(v, path + [str(i)]) for i, v in enumerate(obj)]}
        if isinstance(obj, _SCALARS):
            return obj
        if isinstance(obj, (np.integer, np.floating, np.bool_)):
            return obj.item()
        raise _unstorable(path, f"a {type(obj).__module__}.{type(obj).__qualname__}")

    return tensors, walk(data, [])


def _unstorable(path: List[str], what: str) -> SaveConfigError:
    where = "/".join(path) or "(the checkpoint itself)"
    return SaveConfigError(
        f"CHECKPOINT.SAVE.FORMAT safetensors cannot store {what} at '{where}' without pickle. "
        "Make that state_dict() return tensors, numbers, strings and containers, or use "
        "CHECKPOINT.SAVE.FORMAT pth."
    )
