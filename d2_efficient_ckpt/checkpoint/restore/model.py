"""Copy checkpoint tensors into a live model's existing parameters and buffers.

Tensors are read once, straight into the model's parameters on their own device; no host
copy of the checkpoint is built.
"""

from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..errors import PartialLoadError

__all__ = ["copy_into_model"]


def copy_into_model(
    model: nn.Module, tensors: Dict[str, Any], metadata: Any, reader: Optional[Any] = None
) -> List[str]:
    """``model.load_state_dict(tensors, strict=False)`` with length-checked reads.

    With a ``reader`` (a ``prefetch.FileReader``), keys of modules that load the default
    way are read from the file straight into the existing parameter, on its own device.
    The rest (modules with their own ``_load_from_state_dict`` such as BatchNorm,
    FrozenBatchNorm and quantization observers, or with load hooks) are read into fresh
    memory first and go through ``load_state_dict``, so their own logic still runs.

    Returns:
        The keys that were written.

    Raises:
        PartialLoadError: if copying failed after some tensors were written.
    """
    direct: Dict[str, torch.Tensor] = {}
    if reader is not None and not _has_post_hooks(model):
        params = dict(model.state_dict(keep_vars=True))
        plain = _plain_modules(model)
        for key, src in tensors.items():
            dst = params.get(key)
            module = key.rsplit(".", 1)[0] if "." in key else ""
            if (
                module in plain
                and isinstance(dst, torch.Tensor)
                and isinstance(src, torch.Tensor)
                and not torch.nn.parameter.is_lazy(dst)
                and tuple(dst.shape) == tuple(src.shape)
            ):
                direct[key] = dst
    rest = {k: v for k, v in tensors.items() if k not in direct}
    if reader is not None:  # small (norm layers, observers): read before anything is written
        rest = {k: reader.read(v) if isinstance(v, torch.Tensor) else v for k, v in rest.items()}
    if metadata is not None:
        rest = _with_metadata(rest, metadata)
    touched = False
    try:
        with torch.no_grad():
            for key, dst in direct.items():
                touched = True
                reader.read_into(dst.data, tensors[key])
            touched = True
            model.load_state_dict(rest, strict=False)
    except Exception as e:
        if not touched:
            raise
        raise PartialLoadError(
            f"Copying weights into the model failed ({type(e).__name__}: {e}). Some of the "
            f"{len(tensors)} tensors may already have been written, so the model is partly "
            "loaded: rebuild it or load a good checkpoint before using it."
        ) from e
    return list(tensors.keys())


def _plain_modules(model: nn.Module) -> set:
    """Names of modules whose state loads by a plain copy (no custom logic, no hooks)."""
    default = nn.Module._load_from_state_dict
    return {
        name
        for name, m in model.named_modules()
        if type(m)._load_from_state_dict is default and not m._load_state_dict_pre_hooks
    }


def _has_post_hooks(model: nn.Module) -> bool:
    return any(m._load_state_dict_post_hooks for m in model.modules())


def _with_metadata(tensors: Dict[str, Any], metadata: Any):
    out = OrderedDict(tensors)
    out._metadata = metadata  # module versions, read by _load_from_state_dict
    return out
