"""Restore non-model state (optimizer, scheduler, ...) onto its device, once.

Every tensor of the state is written once into fresh memory on its device: host tensors
share one :class:`~.arena.HostArena`, and tensors that view the checkpoint file are read
from it with length-checked reads. A tensor the state references several times is restored
once and referenced as often (memory follows the file's distinct tensors, not the number
of references). Containers come back as the type they were saved as: a ``Counter`` (the
milestones of ``MultiStepLR``), a ``defaultdict`` with its factory, an ``OrderedDict``.
"""

from typing import Any, Dict, Iterator, Optional, Set

import torch

from .arena import HostArena, shares_arena

__all__ = ["materialize", "tensors_in"]


def materialize(
    obj: Any,
    device: torch.device,
    reader: Optional[Any] = None,
    arena: Optional[HostArena] = None,
) -> Any:
    """Copy every tensor in a nested structure into fresh memory on ``device``.

    0-dim tensors (such as Adam's ``step``) stay on the CPU, where optimizers expect them.
    The copy is the one write each tensor needs anyway, so nothing stays backed by the file.
    Floating-point host tensors share one :class:`HostArena`, which keeps the page faults of
    that first write few.

    Args:
        obj: dicts, lists and tuples of tensors and other values.
        device: where non-scalar tensors go.
        reader: optional ``prefetch.FileReader``; tensors that view its file are read from
            the file into their destination with length-checked reads.
        arena: the arena to carve host tensors from, made (and perhaps prefaulted) by the
            caller ahead of time; by default one is made here.
    """
    if device.type == "cpu" and arena is None:
        arena = HostArena.for_tensors(tensors_in(obj))
    return _rebuild(obj, device, arena, reader, {})


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every distinct tensor (by identity) in a nested structure of dicts, lists and tuples."""
    yield from _walk(obj, set())


def _walk(obj: Any, seen: Set[int]) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            seen.add(id(obj))
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v, seen)


def _rebuild(
    obj: Any,
    device: torch.device,
    arena: Optional[HostArena],
    reader: Any,
    done: Dict[int, torch.Tensor],
) -> Any:
    if isinstance(obj, torch.Tensor):
        if id(obj) in done:  # referenced again: the same restored tensor
            return done[id(obj)]
        if shares_arena(obj) and arena is not None and device.type == "cpu":
            out = arena.empty_like(obj)
        else:
            dev = torch.device("cpu") if obj.dim() == 0 else device
            out = torch.empty(obj.shape, dtype=obj.dtype, device=dev)
        if reader is None:
            out.copy_(obj)
        else:
            reader.read_into(out, obj)  # length-checked; never touches a file mapping
        done[id(obj)] = out
        return out
    if isinstance(obj, dict):
        items = [(k, _rebuild(v, device, arena, reader, done)) for k, v in obj.items()]
        if type(obj) is dict:
            return dict(items)
        # A copy keeps the type and what it carries (a defaultdict's factory); its items are
        # then set one by one, as a Counter's update() would add them instead.
        out = obj.copy()
        out.clear()
        for k, v in items:
            out[k] = v
        return out
    if isinstance(obj, list):
        return [_rebuild(v, device, arena, reader, done) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_rebuild(v, device, arena, reader, done) for v in obj)
    return obj
