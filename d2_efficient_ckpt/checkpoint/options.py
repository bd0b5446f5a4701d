"""The options of one load: ``CHECKPOINT.LOAD`` read once, overridden per call.

This module is the one home of the option values and their checks: the ON_MISMATCH
choices, the trainer part names, and RENAME rules that must be ``[regex, replacement]``.
"""

import re
from dataclasses import dataclass, replace
from typing import Any, Sequence, Tuple

from .errors import CheckpointConfigError

__all__ = ["LoadOptions", "ON_MISMATCH_CHOICES", "TRAINER_PART_NAMES", "normalise_on_mismatch"]

# What an incompatible key does to a load (see report/policy.py).
ON_MISMATCH_CHOICES = ("warn", "error", "ignore")
# Parts of the trainer state a resume can restore one by one (see restore/parts.py).
TRAINER_PART_NAMES = ("optimizer", "scheduler", "iteration", "hooks", "scaler", "sampling")


def normalise_on_mismatch(value: Any) -> str:
    """``value`` lower-cased, checked against :data:`ON_MISMATCH_CHOICES`.

    Raises:
        CheckpointConfigError: for any other value, with an example setting.
    """
    out = str(value or "warn").strip().lower()
    if out not in ON_MISMATCH_CHOICES:
        raise CheckpointConfigError(
            f"CHECKPOINT.LOAD.ON_MISMATCH must be one of {', '.join(ON_MISMATCH_CHOICES)}; got "
            f"{value!r}. Example: CHECKPOINT.LOAD.ON_MISMATCH error"
        )
    return out


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
        broadcast_from_main: under several processes, ``resume_or_load`` reads on the main
            process alone and sends the state to the other ranks.
        remote_cache_dir: a local folder keeping whole copies of objects read from a
            store, by ETag ("" reads them in ranges every time).
    """

    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    rename: Tuple[Tuple[str, str], ...] = ()
    checkpointables: Tuple[str, ...] = TRAINER_PART_NAMES
    mmap: bool = True
    weights_only: bool = True
    map_location: str = ""
    select_on_resume: bool = False
    on_mismatch: str = "warn"
    allow_mismatch: Tuple[str, ...] = ()
    broadcast_from_main: bool = False
    remote_cache_dir: str = ""

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
            broadcast_from_main=bool(ld.get("BROADCAST_FROM_MAIN", False)),
            remote_cache_dir=str(ld.get("REMOTE_CACHE_DIR", "")),
        )

    def __post_init__(self):
        object.__setattr__(self, "on_mismatch", normalise_on_mismatch(self.on_mismatch))

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
    """RENAME rules as ``(regex, replacement)`` pairs, each checked."""
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
