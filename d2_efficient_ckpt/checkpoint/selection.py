"""Which keys and which checkpointables a load restores.

Key selection works on names: RENAME rules map checkpoint keys to model keys first, then
INCLUDE/EXCLUDE globs decide which model keys are loaded. Checkpointable selection splits
detectron2's ``trainer`` entry into the parts users think of: optimizer, scheduler,
iteration, hooks and the AMP grad scaler.
"""

import fnmatch
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import CheckpointConfigError

__all__ = ["LoadOptions", "KeySelector", "TRAINER_PARTS", "select_trainer_state"]

# Parts of DefaultTrainer.state_dict(), as (part name, path inside the "trainer" entry).
TRAINER_PARTS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "iteration": (("iteration",), ("_trainer", "iteration")),
    "optimizer": (("_trainer", "optimizer"),),
    "scaler": (("_trainer", "grad_scaler"),),
    "scheduler": (("hooks", "LRScheduler"),),
}
_ALL_PARTS = ("optimizer", "scheduler", "iteration", "hooks", "scaler")
_ON_MISMATCH = ("warn", "error", "ignore")


@dataclass(frozen=True)
class LoadOptions:
    """Everything that shapes one load; defaults equal the config defaults.

    Attributes:
        include: glob patterns over model keys to load; empty means all.
        exclude: glob patterns over model keys never to load.
        rename: ordered ``(regex, replacement)`` pairs applied to checkpoint keys.
        checkpointables: non-model entries or trainer parts to restore on resume.
        mmap: memory-map torch zip files.
        select_on_resume: apply the key selection when resuming from ``last_checkpoint``.
        weights_only: refuse pickles outside the allowlist.
        map_location: ``""`` (model's device), ``"cpu"`` or ``"cuda:N"``.
        on_mismatch: ``"warn"``, ``"error"`` or ``"ignore"`` (see ``policy``).
        allow_mismatch: glob patterns of keys whose incompatibility ``"error"`` tolerates.
    """

    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    rename: Tuple[Tuple[str, str], ...] = ()
    checkpointables: Tuple[str, ...] = _ALL_PARTS
    mmap: bool = True
    weights_only: bool = True
    map_location: str = ""
    select_on_resume: bool = False
    on_mismatch: str = "warn"
    allow_mismatch: Tuple[str, ...] = ()

    @classmethod
    def from_cfg(cls, cfg) -> "LoadOptions":
        """Read ``cfg.CHECKPOINT.LOAD``; a ``None`` cfg gives the defaults."""
        if cfg is None or "CHECKPOINT" not in cfg:
            return cls()
        ld = cfg.CHECKPOINT.LOAD
        return cls(
            include=tuple(ld.INCLUDE),
            exclude=tuple(ld.EXCLUDE),
            rename=_pairs(ld.RENAME),
            checkpointables=tuple(ld.CHECKPOINTABLES),
            mmap=bool(ld.MMAP),
            weights_only=bool(ld.WEIGHTS_ONLY),
            map_location=str(ld.MAP_LOCATION),
            select_on_resume=bool(ld.SELECT_ON_RESUME),
            on_mismatch=str(ld.get("ON_MISMATCH", "warn")),
            allow_mismatch=tuple(ld.get("ALLOW_MISMATCH", ())),
        )

    def __post_init__(self):
        value = str(self.on_mismatch).strip().lower()
        if value not in _ON_MISMATCH:
            raise CheckpointConfigError(
                f"CHECKPOINT.LOAD.ON_MISMATCH must be one of {', '.join(_ON_MISMATCH)}; got "
                f"{self.on_mismatch!r}. Example: CHECKPOINT.LOAD.ON_MISMATCH error"
            )
        object.__setattr__(self, "on_mismatch", value)

    def override(self, **kwargs: Any) -> "LoadOptions":
        """A copy with the keyword arguments that are not ``None`` replaced."""
        kw = {k: v for k, v in kwargs.items() if v is not None}
        for key in ("include", "exclude", "checkpointables", "allow_mismatch"):
            if key in kw:
                kw[key] = (kw[key],) if isinstance(kw[key], str) else tuple(kw[key])
        if "rename" in kw:
            kw["rename"] = _pairs(kw["rename"])
        return replace(self, **kw)


def _pairs(rules: Sequence[Sequence[str]]) -> Tuple[Tuple[str, str], ...]:
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise CheckpointConfigError(
                f"CHECKPOINT.LOAD.RENAME entries must be [regex, replacement] pairs; got {rule!r}. "
                "Example: RENAME: [['^backbone\\.bottom_up\\.', 'backbone.']]"
            )
        try:
            re.compile(rule[0])
        except re.error as e:
            raise CheckpointConfigError(
                f"CHECKPOINT.LOAD.RENAME regex {rule[0]!r} is invalid: {e}"
            ) from None
        out.append((str(rule[0]), str(rule[1])))
    return tuple(out)


class KeySelector:
    """Applies RENAME, INCLUDE and EXCLUDE to key names, recording what each did."""

    def __init__(
        self,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        rename: Sequence[Tuple[str, str]] = (),
    ):
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.rename = tuple((re.compile(p), r, p) for p, r in rename)

    def renamed(self, key: str) -> Tuple[str, List[str]]:
        """The key after all RENAME rules, and the patterns of the rules that changed it."""
        rules = []
        for rx, repl, pattern in self.rename:
            new = rx.sub(repl, key)
            if new != key:
                rules.append(pattern)
                key = new
        return key, rules

    def why_skipped(self, key: str) -> Optional[str]:
        """``"exclude"``, ``"include"`` (not matched by INCLUDE) or ``None`` if selected."""
        if self.include and not any(fnmatch.fnmatchcase(key, p) for p in self.include):
            return "include"
        if any(fnmatch.fnmatchcase(key, p) for p in self.exclude):
            return "exclude"
        return None


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
    wanted = set(_ALL_PARTS) if "trainer" in wanted else set(wanted)
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
    other_hooks = {k: v for k, v in saved.get("hooks", {}).items() if k != "LRScheduler"}
    if not other_hooks:
        status["hooks"] = "absent"
    elif "hooks" in wanted:
        status["hooks"] = "restored"
        merged["hooks"].update(other_hooks)
    else:
        status["hooks"] = "skipped"
    return merged, status
