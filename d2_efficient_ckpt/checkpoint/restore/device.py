"""Which device restored tensors go to: the model's, or CHECKPOINT.LOAD.MAP_LOCATION."""

import torch
import torch.nn as nn
from detectron2.utils import comm

from ..errors import CheckpointConfigError

__all__ = ["model_device", "resolve_map_location"]


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
    if dev.index is None or comm.get_world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return dev
