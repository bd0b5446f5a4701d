"""Restore detectron2's ``trainer`` entry part by part.

``DefaultTrainer.state_dict()`` bundles the iteration, the optimizer, the LR scheduler (a
hook), the sampling state (a hook: data order and random states), other hooks and the AMP
grad scaler. Users think of them as separate parts: a resume
after a change of schedule keeps the weights and the iteration but not the optimizer.
"""

from typing import Any, Dict, Sequence, Tuple

from ..options import TRAINER_PART_NAMES

__all__ = [
    "TRAINER_PARTS",
    "saved_parts",
    "select_trainer_state",
    "trainer_entry_problem",
    "without_part",
]

# Parts of DefaultTrainer.state_dict(), as (part name, path inside the "trainer" entry).
TRAINER_PARTS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "iteration": (("iteration",), ("_trainer", "iteration")),
    "optimizer": (("_trainer", "optimizer"),),
    "scaler": (("_trainer", "grad_scaler"),),
    "scheduler": (("hooks", "LRScheduler"),),
    # The training loader's position and the random states (the trainer's SamplingState hook).
    "sampling": (("hooks", "SamplingState"),),
}
# Hooks whose state is a part of its own; "hooks" is every other hook.
_OWN_PART_HOOKS = {p[1] for paths in TRAINER_PARTS.values() for p in paths if p[0] == "hooks"}


def _get(d: Any, path: Tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _set(d: Dict, path: Tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def trainer_entry_problem(saved: Any) -> str:
    """Why a checkpoint's ``trainer`` entry cannot be split into parts, "" if it can.

    The parts are looked up by path (a missing or odd inner node is an absent part), but the
    hook states are a map from hook names to states: anything else is a broken file.
    """
    if isinstance(saved, dict) and "hooks" in saved and not isinstance(saved["hooks"], dict):
        return f"its trainer entry's hooks are a {type(saved['hooks']).__name__}, not a dict."
    return ""


def select_trainer_state(
    saved: Dict, current: Dict, wanted: Sequence[str]
) -> Tuple[Dict, Dict[str, str]]:
    """Merge a saved trainer state with the current one, part by part.

    Parts not wanted keep the trainer's current state, so ``load_state_dict`` on the result
    restores exactly the wanted parts and leaves the rest as it is.

    Args:
        saved: the ``trainer`` entry of the checkpoint.
        current: ``trainer.state_dict()`` now.
        wanted: part names; ``"trainer"`` means all parts.

    Returns:
        The merged state, and for each part ``"restored"``, ``"skipped"`` or ``"absent"``.
    """
    wanted = set(TRAINER_PART_NAMES) if "trainer" in wanted else set(wanted)
    merged = {k: v for k, v in current.items()}
    merged["hooks"] = dict(current.get("hooks", {}))
    if "_trainer" in current:
        merged["_trainer"] = dict(current["_trainer"])
    status = {}
    for part, paths in TRAINER_PARTS.items():
        present = [p for p in paths if _get(saved, p) is not None]
        if not present:
            status[part] = "absent"
        elif part not in wanted:
            status[part] = "skipped"
        else:
            status[part] = "restored"
            for p in present:
                _set(merged, p, _get(saved, p))
    other_hooks = {k: v for k, v in saved.get("hooks", {}).items() if k not in _OWN_PART_HOOKS}
    if not other_hooks:
        status["hooks"] = "absent"
    elif "hooks" in wanted:
        status["hooks"] = "restored"
        merged["hooks"].update(other_hooks)
    else:
        status["hooks"] = "skipped"
    return merged, status


def saved_parts(saved: Dict, status: Dict[str, str]) -> Dict:
    """The pieces of a saved trainer state that ``status`` (of :func:`select_trainer_state`)
    restores, at their paths; what a partial restore reads from the file."""
    out: Dict = {}
    for part, paths in TRAINER_PARTS.items():
        if status.get(part) == "restored":
            for p in paths:
                value = _get(saved, p)
                if value is not None:
                    _set(out, p, value)
    if status.get("hooks") == "restored":
        hooks = out.setdefault("hooks", {})
        hooks.update({k: v for k, v in saved.get("hooks", {}).items() if k not in _OWN_PART_HOOKS})
    return out


def without_part(state: Dict, part: str) -> Dict:
    """A shallow copy of a trainer state without ``part`` (its paths removed)."""
    out = dict(state)
    for path in TRAINER_PARTS[part]:
        node = out
        for k in path[:-1]:
            if not isinstance(node.get(k), dict):
                break
            node[k] = dict(node[k])  # copied on the way down: the caller's state is kept
            node = node[k]
        else:
            node.pop(path[-1], None)
    return out
