"""Resume when only the main process can read the checkpoint (storage that is not shared).

With ``CHECKPOINT.LOAD.BROADCAST_FROM_MAIN`` the main process loads the checkpoint into its
model and checkpointables, then sends the model's state and the restored state (the
optimizer, scheduler, iteration, hooks and sampling parts of the trainer) to the other
ranks. Tensors travel in buckets of at most :data:`BUCKET_BYTES`, so no rank holds more than
one bucket beyond the state itself; the structure around them travels as one small object
between the job's own processes. Stock detectron2 only warns here, and DDP syncs the
parameters alone.
"""

import copy
import logging
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm

from ..errors import CheckpointError
from ..report.load_report import LoadReport
from ..restore.parts import without_part

__all__ = [
    "BUCKET_BYTES",
    "broadcast_object",
    "broadcast_state",
    "broadcast_tensors",
    "group_device",
    "load_on_main",
]

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


class _Slot(NamedTuple):
    """Where the ``position``-th tensor of a state goes in its structure."""

    position: int


def _map_leaves(obj: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    """``obj`` with every value of type ``kind`` replaced by ``fn(value)``; dicts (an
    OrderedDict, a defaultdict with its factory, a Counter), lists and tuples keep their
    type."""
    if isinstance(obj, kind):
        return fn(obj)
    if isinstance(obj, dict):
        out = copy.copy(obj)
        out.clear()
        out.update((k, _map_leaves(v, kind, fn)) for k, v in obj.items())
        return out
    if isinstance(obj, list):
        return [_map_leaves(v, kind, fn) for v in obj]
    if type(obj) is tuple:
        return tuple(_map_leaves(v, kind, fn) for v in obj)
    return obj


def _split(obj: Any, tensors: List[torch.Tensor]) -> Any:
    # The structure with each tensor replaced by its slot; the tensors go to ``tensors``.
    def slot(t: torch.Tensor) -> _Slot:
        tensors.append(t)
        return _Slot(len(tensors) - 1)

    return _map_leaves(obj, torch.Tensor, slot)


def _join(skeleton: Any, tensors: List[torch.Tensor]) -> Any:
    return _map_leaves(skeleton, _Slot, lambda s: tensors[s.position])


def broadcast_state(state: Any, device: torch.device) -> Any:
    """The main process's ``state`` (a nested structure with tensors) on every rank.

    The structure travels as one small object; its tensors in buckets, into CPU tensors on
    the receiving ranks (``load_state_dict`` moves them to their parameters' devices).
    """
    tensors: List[torch.Tensor] = []
    if comm.is_main_process():
        skeleton = _split(state, tensors)
        layout = [(tuple(t.shape), str(t.dtype)) for t in tensors]
        message: List[Any] = [skeleton, layout]
    else:
        message = [None, None]
    dist.broadcast_object_list(message, src=0, device=_object_device(device))
    skeleton, layout = message
    if not comm.is_main_process():
        tensors = [torch.empty(shape, dtype=_dtype(dtype)) for shape, dtype in layout]
    broadcast_tensors(tensors, device)  # bucket by bucket; the values stay on the CPU
    return _join(skeleton, tensors)


def broadcast_object(obj: Any, device: torch.device) -> Any:
    """The main process's small picklable ``obj`` on every rank."""
    message = [obj if comm.is_main_process() else None]
    dist.broadcast_object_list(message, src=0, device=_object_device(device))
    return message[0]


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


def load_on_main(
    load: Callable[[], Any],
    model: torch.nn.Module,
    checkpointables: Mapping[str, Any],
    last_report: Callable[[], Optional[LoadReport]],
) -> Tuple[Any, Optional[LoadReport]]:
    """Run ``load`` on the main process alone, then give every rank what it restored.

    Every rank of the default group calls this together.

    Args:
        load: the load (into ``model`` and ``checkpointables``), involving no other rank.
        model: the unwrapped model, of the same architecture on every rank.
        checkpointables: the checkpointer's other objects.
        last_report: the report of the load that ``load`` ran.

    Returns:
        ``load``'s result (``{}`` on the other ranks) and its report, on every rank.

    Raises:
        CheckpointError: on every rank, when the load failed on the main process.
    """
    out: Any = {}
    message: List[Any] = [None, ""]
    if comm.is_main_process():
        try:
            out = load()
            message = [last_report(), ""]
        except Exception as e:
            message = [None, f"{type(e).__name__}: {e}"]
            failure: Optional[BaseException] = e
    device = group_device() or torch.device("cpu")
    report, error = broadcast_object(message, device)
    if error:
        if comm.is_main_process():
            raise failure  # type: ignore[misc]  # set with the error on this process
        raise CheckpointError(f"The main process could not load the checkpoint: {error}")
    broadcast_tensors(list(model.state_dict().values()), device)
    statuses = report.checkpointables if report is not None else {}
    for key, obj in checkpointables.items():
        if statuses.get(key) not in ("restored", "partial"):
            continue
        state = obj.state_dict() if comm.is_main_process() else None
        own_sampling = statuses.get("trainer.sampling") != "restored"
        if key == "trainer" and state is not None and own_sampling:
            state = without_part(state, "sampling")  # each rank keeps its own fresh one
        state = broadcast_state(state, device)
        if not comm.is_main_process():
            obj.load_state_dict(state)
    restored = [k for k, s in statuses.items() if s in ("restored", "partial") and "." not in k]
    names = "".join(", " + k for k in restored)
    logger.info(f"Loaded on the main process and broadcast to every rank (model{names}).")
    return out, report
