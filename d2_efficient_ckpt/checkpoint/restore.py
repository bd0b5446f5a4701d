"""Copy checkpoint tensors into a live model and its training state.

Tensors come from a memory-mapped (or otherwise lazy) checkpoint and are copied once, straight
into the model's existing parameters and buffers on their own device. No host copy of the
checkpoint is ever built.
"""

from collections.abc import Mapping
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .arena import HostArena
from .errors import CheckpointConfigError, PartialLoadError

__all__ = [
    "model_device",
    "resolve_map_location",
    "materialize",
    "tensors_in",
    "PartialLoadError",
]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def resolve_map_location(map_location: str, model: nn.Module) -> torch.device:
    """Turn ``CHECKPOINT.LOAD.MAP_LOCATION`` into a device for this process.

    ``""`` is the model's own device. ``"cuda"`` is this process's current CUDA device.
    Under multi-process training, an explicit ``"cuda:N"`` is replaced by this rank's
    current device, so that ranks never all land on the same GPU.

    Raises:
        CheckpointConfigError: for a string that is not "", "cpu", "cuda" or "cuda:N".
    """
    loc = (map_location or "").strip()
    if not loc:
        return model_device(model)
    try:
        dev = torch.device(loc)
    except RuntimeError:
        raise CheckpointConfigError(
            f"CHECKPOINT.LOAD.MAP_LOCATION '{map_location}' is not a device; use '', 'cpu' or "
            "'cuda:N'."
        ) from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise CheckpointConfigError(
            f"CHECKPOINT.LOAD.MAP_LOCATION is '{map_location}' but CUDA is not available here. "
            "Use '' (the model's device) or 'cpu'."
        )
    from detectron2.utils import comm

    if dev.index is None or comm.get_world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def materialize(obj: Any, device: torch.device, reader: Optional[Any] = None) -> Any:
    """Copy every tensor in a nested structure into fresh memory on ``device``.

    0-dim tensors (such as Adam's ``step``) stay on the CPU, where optimizers expect them.
    The copy is the one write each tensor needs anyway, so nothing stays backed by the file.
    Host tensors share one :class:`HostArena`, which keeps the page faults of that first
    write few.

    Args:
        obj: dicts, lists and tuples of tensors and other values.
        device: where non-scalar tensors go.
        reader: optional ``prefetch.FileReader``; tensors that view its file are read from
            the file into their destination with length-checked reads.
    """
    host = [t for t in tensors_in(obj) if t.dim() > 0] if device.type == "cpu" else []
    arena = HostArena(sum(HostArena.footprint(t) for t in host)) if host else None
    return _rebuild(obj, device, arena, reader)


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested structure of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v)


def _rebuild(obj: Any, device: torch.device, arena: Optional[HostArena], reader: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.dim() > 0 and arena is not None and device.type == "cpu":
            out = arena.empty_like(obj)
        else:
            dev = torch.device("cpu") if obj.dim() == 0 else device
            out = torch.empty(obj.shape, dtype=obj.dtype, device=dev)
        if reader is None:
            out.copy_(obj)
        else:
            reader.read_into(out, obj)  # length-checked; never touches a file mapping
        return out
    if isinstance(obj, dict):
        items = ((k, _rebuild(v, device, arena, reader)) for k, v in obj.items())
        return dict(items) if type(obj) is dict else type(obj)(items)
    if isinstance(obj, list):
        return [_rebuild(v, device, arena, reader) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_rebuild(v, device, arena, reader) for v in obj)
    return obj


def as_tensor(value: Any) -> torch.Tensor:
    """A tensor view of a checkpoint value (numpy arrays from zoo pickles included)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"Unsupported type {type(value).__name__} in checkpoint")


def shape_of(state: Mapping, key: str) -> Tuple[int, ...]:
    """Shape of ``state[key]`` without reading its data where the mapping allows it."""
    if hasattr(state, "shape") and callable(state.shape):
        return tuple(state.shape(key))
    return tuple(state[key].shape)


def dtype_of(state: Mapping, key: str) -> Optional[torch.dtype]:
    """dtype of ``state[key]`` without reading its data where the mapping allows it."""
    if hasattr(state, "dtype") and callable(state.dtype):
        return state.dtype(key)
    v = state[key]
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v.reshape(-1)[:0]).dtype
    return getattr(v, "dtype", None)


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
    from collections import OrderedDict

    out = OrderedDict(tensors)
    out._metadata = metadata  # module versions, read by _load_from_state_dict
    return out
