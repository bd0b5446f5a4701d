"""Check that an unpickled object is plain, finite-sized data.

Every walk over a checkpoint's entries (restoring optimizer state, counting bytes for
``inspect``) visits shared sub-structures once per path. A pickle of a few kilobytes can
share sub-lists so that the paths number 2**64, and it can nest deeper than Python's
recursion limit or refer to itself. :func:`check_tree` visits each object once and refuses
such structures, so that every later walk is bounded by ``max_paths`` and ``max_depth``.
"""

from collections import Counter, OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch

__all__ = ["TreeError", "check_tree"]

_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), slice)
_TORCH_LEAVES = (torch.dtype, torch.device, torch.Tensor)
_CONTAINERS = (dict, OrderedDict, Counter, list, tuple, set, frozenset, torch.Size)


class TreeError(ValueError):
    """The structure is cyclic, too deep, too large to walk, or holds a foreign object."""


def _children(obj: Any) -> List[Any]:
    if isinstance(obj, dict):
        out = list(obj.keys()) + list(obj.values())
        if type(obj) is OrderedDict and obj.__dict__:
            out += list(obj.__dict__.values())
        return out
    return list(obj)


def _check_leaf(obj: Any, pending_type: Optional[type]) -> None:
    if isinstance(obj, _LEAVES) or isinstance(obj, _TORCH_LEAVES):
        return
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.hasobject:
            raise TreeError("a numpy array of Python objects (only numeric arrays are data)")
        return
    if isinstance(obj, np.dtype):
        if obj.hasobject:
            raise TreeError("a numpy dtype with object fields")
        return
    if pending_type is not None and isinstance(obj, pending_type):
        raise TreeError("an object that was used before its state was set")
    raise TreeError(f"an object of type {type(obj).__name__}, which is not data")


def check_tree(
    obj: Any, *, max_depth: int, max_paths: int, pending_type: Optional[type] = None
) -> int:
    """Visit every object reachable from ``obj`` once and check it.

    Args:
        obj: the root.
        max_depth: containers nested deeper than this are refused.
        max_paths: the most nodes a walk that follows every path may visit.
        pending_type: a type that must not appear (half-built objects).

    Returns:
        The number of nodes a full walk visits (shared objects once per path).

    Raises:
        TreeError: a cycle, too deep a nesting, too many paths, or a non-data object.
    """
    if type(obj) not in _CONTAINERS:
        _check_leaf(obj, pending_type)
        return 1
    done: Dict[int, int] = {}
    on_path = {id(obj)}
    # Each frame: [container, its children, next child index, paths counted so far].
    frames: List[list] = [[obj, _children(obj), 0, 1]]
    while frames:
        frame = frames[-1]
        kids = frame[1]
        if frame[2] < len(kids):
            child = kids[frame[2]]
            frame[2] += 1
            if type(child) not in _CONTAINERS:
                _check_leaf(child, pending_type)
                frame[3] += 1
            else:
                cid = id(child)
                if cid in done:
                    frame[3] += done[cid]
                elif cid in on_path:
                    raise TreeError("a structure that contains itself")
                elif len(frames) >= max_depth:
                    raise TreeError(f"structures nested more than {max_depth} levels deep")
                else:
                    on_path.add(cid)
                    frames.append([child, _children(child), 0, 1])
                    continue
            if frame[3] > max_paths:
                raise TreeError(_too_many(max_paths))
            continue
        frames.pop()
        on_path.discard(id(frame[0]))
        done[id(frame[0])] = frame[3]
        if frames:
            frames[-1][3] += frame[3]
            if frames[-1][3] > max_paths:
                raise TreeError(_too_many(max_paths))
    return done[id(obj)]


def _too_many(max_paths: int) -> str:
    return (
        f"shared sub-structures that a walk would visit more than {max_paths:,} times "
        "(a checkpoint of data has about one node per few bytes of pickle)"
    )
