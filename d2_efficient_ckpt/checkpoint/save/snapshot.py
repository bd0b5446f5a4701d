"""Snapshot a checkpoint's state into host buffers that are reused from save to save.

The training loop is blocked only while tensors are copied here; serialization happens
later, in the background, from the snapshot. Buffers are kept between saves (keyed by the
tensor's place in the state), so a steady-state snapshot allocates nothing and peak extra
host memory is one snapshot. Buffers for GPU tensors are pinned, and the device-to-host
copies are asynchronous: :meth:`Snapshot.wait` (called by the writer thread) waits for them.
"""

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Set, Tuple

import numpy as np
import torch

__all__ = ["Snapshot", "SnapshotBuffers"]

_Key = Tuple[Any, ...]
# dtypes numpy can view without a copy (bfloat16 and friends go through torch).
_NUMPY_DTYPES = {
    torch.float64,
    torch.float32,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
}


@dataclass
class Snapshot:
    """A copy of a state, made of host tensors, safe to serialize in another thread.

    Attributes:
        data: the copied state (same containers and keys as the original).
        nbytes: bytes of tensor data copied.
        events: CUDA events to wait for before ``data`` is complete.
    """

    data: Any
    nbytes: int = 0
    events: List[Any] = field(default_factory=list)

    def wait(self) -> None:
        """Block until every asynchronous device-to-host copy has landed."""
        for e in self.events:
            e.synchronize()
        self.events.clear()


class SnapshotBuffers:
    """Host buffers for :meth:`take`, reused while shapes and dtypes stay the same.

    Only one snapshot may be in use at a time: take the next one only after the previous
    one was written (the async writer's back-pressure guarantees this).
    """

    def __init__(self) -> None:
        self._buffers: Dict[_Key, torch.Tensor] = {}
        self._devices: Set[torch.device] = set()  # with copies in flight, this snapshot
        self.allocated_bytes = 0

    def take(self, state: Any) -> Snapshot:
        """Copy every tensor of ``state`` into the buffers; other leaves are deep-copied.

        Dicts (with their ``_metadata``, which state dicts carry), lists and tuples keep
        their types, so the snapshot serializes to the same bytes as ``state``.
        """
        snap = Snapshot(data=None)
        seen: Dict[_Key, bool] = {}
        snap.data = self._copy(state, (), snap, seen)
        for device in {k for k in self._devices}:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            snap.events.append(event)
        self._devices.clear()
        # Drop buffers of tensors that are gone (e.g. a parameter group was removed).
        for key in [k for k in self._buffers if k not in seen]:
            self.allocated_bytes -= _nbytes(self._buffers.pop(key))
        return snap

    def _copy(self, obj: Any, key: _Key, snap: Snapshot, seen: Dict[_Key, bool]) -> Any:
        if isinstance(obj, torch.Tensor):
            seen[key] = True
            return self._copy_tensor(obj, key, snap)
        if isinstance(obj, dict):
            out: Any = OrderedDict() if isinstance(obj, OrderedDict) else {}
            for k, v in obj.items():
                out[k] = self._copy(v, key + (k,), snap, seen)
            meta = getattr(obj, "_metadata", None)
            if meta is not None:
                out._metadata = copy.deepcopy(meta)
            return out
        if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
            items = [self._copy(v, key + (i,), snap, seen) for i, v in enumerate(obj)]
            return items if type(obj) is list else tuple(items)
        return copy.deepcopy(obj)

    def _copy_tensor(self, t: torch.Tensor, key: _Key, snap: Snapshot) -> torch.Tensor:
        t = t.detach()
        buf = self._buffers.get(key)
        on_device = t.device.type != "cpu"
        if buf is None or (buf.shape, buf.dtype, buf.stride()) != (t.shape, t.dtype, t.stride()):
            if buf is not None:
                self.allocated_bytes -= _nbytes(buf)
            buf = _empty_like_host(t, pin=on_device and t.device.type == "cuda")
            self._buffers[key] = buf
            self.allocated_bytes += _nbytes(buf)
        if on_device or t.dtype not in _NUMPY_DTYPES:
            buf.copy_(t, non_blocking=on_device)
        else:
            # A plain single-threaded memcpy: torch's copy_ opens an OpenMP region per
            # tensor, and on a busy machine each one waits for a descheduled thread
            # (measured: 0.3-1.3 s against 0.14 s for these 515 tensors, 334 MB).
            np.copyto(buf.numpy(), t.numpy())
        if on_device and t.device.type == "cuda":
            self._devices.add(t.device)
        snap.nbytes += _nbytes(buf)
        return buf


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _empty_like_host(t: torch.Tensor, pin: bool) -> torch.Tensor:
    # Same strides as the source, so the serialized storage is byte-identical.
    if t.is_contiguous():
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, pin_memory=pin)
