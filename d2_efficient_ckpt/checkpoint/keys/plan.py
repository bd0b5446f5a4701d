"""Which checkpoint key goes into which model key: a pure function of names and shapes.

Given the checkpoint's keys (with shapes and dtypes, read from the file's index, not its
data), the model's keys (with shapes and dtypes) and the INCLUDE/EXCLUDE/RENAME selection,
:func:`plan_keys` decides everything a load does with keys: strip a ``module.`` wrapper
prefix, rename, skip, copy, or report as unexpected, missing or of another shape. Nothing is
read and no model is needed, so every rule is testable on plain dictionaries.
"""

from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

from .selection import KeySelector

__all__ = ["KeyInfo", "KeyPlan", "plan_keys", "WRAPPER_PREFIX"]

# The prefix DistributedDataParallel adds; stripped when every checkpoint key has it.
WRAPPER_PREFIX = "module."

# (shape, dtype) of a key; shape None for a lazy (uninitialised) parameter of the model.
KeyInfo = Tuple[Optional[Tuple[int, ...]], Any]


@dataclass
class KeyPlan:
    """What one load does with each key.

    Attributes:
        copy: model key -> checkpoint key, for every key to copy.
        names: checkpoint key -> model key after prefix stripping and RENAME.
        renamed: ``(checkpoint key, model key, rules that applied)``.
        skipped: model key -> ``"include"`` or ``"exclude"``.
        unexpected: model keys (after renaming) the model does not have.
        missing: model keys nothing is copied into and that were not skipped.
        shape_mismatch: ``(model key, checkpoint shape, model shape)``.
        dtype_changed: ``(model key, checkpoint dtype, model dtype)`` of copied keys.
    """

    copy: Dict[str, str] = field(default_factory=dict)
    names: Dict[str, str] = field(default_factory=dict)
    renamed: List[Tuple[str, str, List[str]]] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    unexpected: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    dtype_changed: List[Tuple[str, str, str]] = field(default_factory=list)


def plan_keys(
    checkpoint: Mapping[str, KeyInfo],
    model: Mapping[str, KeyInfo],
    selector: KeySelector,
    resizable: Collection[str] = (),
) -> KeyPlan:
    """Match checkpoint keys to model keys.

    Args:
        checkpoint: checkpoint key -> (shape, dtype).
        model: model key -> (shape, dtype); shape ``None`` for lazy parameters, which take
            any shape.
        selector: the INCLUDE/EXCLUDE/RENAME rules of this load.
        resizable: model keys whose modules resize them to the checkpoint's shape
            (quantization observers), so a different shape is not a mismatch.

    Returns:
        The plan; keys keep the checkpoint's order.
    """
    plan = KeyPlan()
    strip = bool(checkpoint) and all(k.startswith(WRAPPER_PREFIX) for k in checkpoint)
    for ck in checkpoint:
        key = ck[len(WRAPPER_PREFIX) :] if strip else ck
        key, rules = selector.renamed(key)
        if rules:
            plan.renamed.append((ck, key, rules))
        plan.names[ck] = key
    for ck, key in plan.names.items():
        why = selector.why_skipped(key)
        if why:
            plan.skipped[key] = why
            continue
        if key not in model:
            plan.unexpected.append(key)
            continue
        (ck_shape, ck_dtype), (shape, dtype) = checkpoint[ck], model[key]
        # A checkpoint's keys always have a shape; only a model's lazy parameters lack one.
        stored = tuple(ck_shape or ())
        if shape is not None and stored != tuple(shape) and key not in resizable:
            plan.shape_mismatch.append((key, stored, tuple(shape)))
            continue
        if shape is not None and ck_dtype is not None and ck_dtype != dtype:
            plan.dtype_changed.append((key, str(ck_dtype), str(dtype)))
        plan.copy[key] = ck
    mismatched = {k for k, _, _ in plan.shape_mismatch}
    for key in model:
        if key in plan.copy or key in plan.skipped or key in mismatched:
            continue
        why = selector.why_skipped(key)
        if why:
            plan.skipped[key] = why
        else:
            plan.missing.append(key)
    return plan


def architecture_difference(plan: KeyPlan, num_model_keys: int) -> str:
    """Why a checkpoint cannot be of the model's architecture, "" when it can be.

    A resume restores optimizer state, iteration and the rest next to the weights; from a
    checkpoint of another architecture that half-restores a run that then crashes, so a
    resume asks this before anything is restored. A key of another shape, or no key in
    common at all, is another architecture; missing or extra keys alone are not (models
    gain and lose buffers between versions).

    Args:
        plan: the key plan of the load.
        num_model_keys: how many keys the model's state dict has.
    """
    if plan.shape_mismatch:
        key, theirs, ours = plan.shape_mismatch[0]
        more = (
            f" and {len(plan.shape_mismatch) - 1} other key(s)"
            if len(plan.shape_mismatch) > 1
            else ""
        )
        return (
            f"it is of another architecture: {key} is {tuple(theirs)} in the file and "
            f"{tuple(ours)} in the model{more}."
        )
    if num_model_keys and not plan.copy:
        return "it is of another architecture: it has none of the model's keys."
    return ""
