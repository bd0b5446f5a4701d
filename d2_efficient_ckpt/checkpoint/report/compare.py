"""Compare two state dicts key by key, and measure how far each module's weights moved.

Tensors are read one at a time from the (lazy) mappings, so two memory-mapped checkpoints can
be compared with little more memory than their largest tensor.
"""

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import torch
from tqdm import tqdm

from ..formats.tensors import as_tensor, dtype_of, shape_of

__all__ = ["ModuleChange", "StateDiff", "diff_state_dicts", "module_of"]


@dataclass
class ModuleChange:
    """How far one module's floating-point tensors moved from A to B.

    Attributes:
        module: the module name (key minus its last component), or a shorter prefix.
        params: elements compared.
        rel_change: ``||A - B|| / ||A||`` over all its tensors; ``inf`` when A is all zero and
            B is not.
        frozen: whether every tensor is bit-identical.
    """

    module: str
    params: int
    rel_change: float
    frozen: bool


@dataclass
class StateDiff:
    """Key, shape and dtype differences, and per-module weight changes."""

    only_a: List[str] = field(default_factory=list)
    only_b: List[str] = field(default_factory=list)
    shape: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    dtype: List[Tuple[str, str, str]] = field(default_factory=list)
    modules: List[ModuleChange] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "shape": [[k, list(a), list(b)] for k, a, b in self.shape],
            "dtype": [list(d) for d in self.dtype],
            "modules": [
                {
                    "module": m.module,
                    "params": m.params,
                    "rel_change": m.rel_change if math.isfinite(m.rel_change) else None,
                    "frozen": m.frozen,
                }
                for m in self.modules
            ],
        }


def module_of(key: str, depth: int = 0) -> str:
    """The module of a key (``a.b.weight`` -> ``a.b``), cut to ``depth`` components if > 0."""
    parts = key.split(".")
    parts = parts[:-1] or parts
    return ".".join(parts[:depth] if depth > 0 else parts)


def diff_state_dicts(
    a: Mapping[str, Any], b: Mapping[str, Any], *, depth: int = 0, progress: bool = False
) -> StateDiff:
    """Compare two state dicts.

    Args:
        a, b: key -> tensor (or numpy array); lazy mappings are read one key at a time.
        depth: aggregate modules to this many name components (0: the full module name).
        progress: show a progress bar.

    Returns:
        The differences. Keys whose shapes differ, and integer tensors, are left out of the
        per-module changes.
    """
    in_b = set(b)
    out = StateDiff(only_a=[k for k in a if k not in in_b])
    in_a = set(a)
    out.only_b = [k for k in b if k not in in_a]
    sums: Dict[str, List[Any]] = OrderedDict()  # module -> [||a-b||^2, ||a||^2, numel, equal]
    common = [k for k in a if k in in_b]
    for key in tqdm(common, desc="comparing", unit="key", disable=not progress):
        sa, sb = tuple(shape_of(a, key)), tuple(shape_of(b, key))
        if sa != sb:
            out.shape.append((key, sa, sb))
            continue
        da, db = dtype_of(a, key), dtype_of(b, key)
        if da != db:
            out.dtype.append((key, str(da), str(db)))
        ta, tb = as_tensor(a[key]), as_tensor(b[key])
        if not (ta.is_floating_point() and tb.is_floating_point()):
            continue
        acc = sums.setdefault(module_of(key, depth), [0.0, 0.0, 0, True])
        same = da == db and torch.equal(ta, tb)
        if not same:
            xa = ta.to(torch.float64)
            acc[0] += float(torch.linalg.vector_norm(xa - tb.to(torch.float64))) ** 2
            acc[1] += float(torch.linalg.vector_norm(xa)) ** 2
        else:
            acc[1] += float(torch.linalg.vector_norm(ta.to(torch.float64))) ** 2
        acc[2] += ta.numel()
        acc[3] = acc[3] and same
    for module, (num, den, numel, frozen) in sums.items():
        out.modules.append(ModuleChange(module, numel, _ratio(num, den), frozen))
    return out


def _ratio(num: float, den: float) -> float:
    if num == 0:
        return 0.0
    return math.sqrt(num) / math.sqrt(den) if den > 0 else math.inf
