"""Resume when only the main process can read the checkpoint (storage that is not shared).

The main process loads the checkpoint into its model and trainer, then sends the model's
state and the restored trainer state (optimizer, scheduler, iteration, hooks, sampling) to
the other ranks. Tensors travel in buckets of at most :data:`BUCKET_BYTES`, so no rank
holds more than one bucket beyond the state itself. Stock detectron2 only warns here, and
DDP syncs the parameters alone.
"""

import logging
from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm

from ..checkpoint.formats.training_safetensors import decode, encode

__all__ = ["BUCKET_BYTES", "broadcast_tensors", "broadcast_trainer_state", "group_device"]

logger = logging.getLogger(__name__)

# Largest bucket sent in one broadcast.
BUCKET_BYTES = 64 << 20


def _buckets(tensors: List[torch.Tensor], limit: int) -> List[List[int]]:
    # Consecutive tensors of one dtype, up to ``limit`` bytes (a larger tensor goes alone).
    out: List[List[int]] = []
    size, dtype = 0, None
    for i, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if not out or t.dtype != dtype or size + nbytes > limit:
            out.append([])
            size, dtype = 0, t.dtype
        out[-1].append(i)
        size += nbytes
    return out


def broadcast_tensors(
    tensors: List[torch.Tensor], device: torch.device, limit: int = BUCKET_BYTES
) -> None:
    """Copy the main process's ``tensors`` into the same-shaped ``tensors`` of every rank.

    Args:
        tensors: on every rank, in the same order, shapes and dtypes.
        device: where buckets live (the process group's device: a GPU for NCCL).
        limit: bucket size in bytes.
    """
    for group in _buckets(tensors, limit):
        parts = [tensors[i] for i in group]
        if comm.is_main_process():
            bucket = torch.cat([p.detach().reshape(-1).to(device) for p in parts])
        else:
            total = sum(p.numel() for p in parts)
            bucket = torch.empty(total, dtype=parts[0].dtype, device=device)
        dist.broadcast(bucket, src=0)
        if not comm.is_main_process():
            offset = 0
            with torch.no_grad():
                for p in parts:
                    p.copy_(bucket[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
        del bucket


def broadcast_trainer_state(state: Any, device: torch.device) -> Any:
    """The main process's ``state`` (a nested structure with tensors) on every rank.

    The structure travels as one small object; its tensors in buckets, into CPU tensors on
    the receiving ranks (``load_state_dict`` moves them to their parameters' devices).
    """
    if comm.is_main_process():
        tensors, skeleton = encode(state)
        layout: List[Tuple[str, Tuple[int, ...], str]] = [
            (name, tuple(t.shape), str(t.dtype)) for name, t in tensors.items()
        ]
        message = [skeleton, layout]
    else:
        message = [None, None]
    dist.broadcast_object_list(message, src=0, device=_object_device(device))
    skeleton, layout = message
    if comm.is_main_process():
        values = [tensors[name] for name, _, _ in layout]
    else:
        values = [torch.empty(shape, dtype=_dtype(dtype)) for _, shape, dtype in layout]
    broadcast_tensors(values, device)  # bucket by bucket; the values stay on the CPU
    received: Dict[str, torch.Tensor] = {name: v for (name, _, _), v in zip(layout, values)}
    return decode(skeleton, received.__getitem__)


def group_device() -> "torch.device | None":
    """The device collectives of the default group use: this rank's GPU under NCCL, else
    None (the CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def _object_device(device: torch.device):
    return device if dist.get_backend() == "nccl" else None


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.split(".", 1)[1])
