"""Wrap the model for several processes, on GPUs (NCCL) or on the CPU (gloo)."""

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["wrap_model"]


def wrap_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when there are several processes, else ``model``.

    Like detectron2's ``create_ddp_model``, except that ``device_ids`` is given only for a
    model on a GPU: for a CPU model DDP refuses it, which stops ``--num-gpus 2 MODEL.DEVICE
    cpu`` before the first step. A CPU model in an NCCL process group (a launch on a GPU
    machine) synchronises its gradients over a gloo group, since NCCL moves only GPU tensors.

    Args:
        model: the model, already on its device.
        **kwargs: more arguments of ``DistributedDataParallel`` (e.g. ``broadcast_buffers``).
    """
    if comm.get_world_size() == 1:
        return model
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cuda" and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    if device.type == "cpu" and dist.get_backend() == "nccl" and "process_group" not in kwargs:
        kwargs["process_group"] = dist.new_group(backend="gloo")  # collective: every rank
    return DistributedDataParallel(model, **kwargs)
