"""Recognise a wrapper prefix: keys saved behind ``module.`` (DDP), ``_orig_mod.``
(torch.compile) or another wrapper, or a part of a model saved without its prefix."""

import re
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from ..keys.rename_rules import rules_text
from .base import ExplainContext, Explanation, recogniser

_WRAPPERS = {
    "module.": "DistributedDataParallel or DataParallel",
    "_orig_mod.": "torch.compile",
}


def _origin(prefix: str) -> str:
    for name, origin in _WRAPPERS.items():
        if name in prefix:
            return origin
    return "a wrapper module (EMA, Lightning, ...)"


@recogniser(order=20)
def wrapper_prefix(ctx: ExplainContext) -> List[Explanation]:
    unexpected, missing = ctx.unexpected, ctx.missing
    out = []
    if unexpected and missing:
        out += _strip_prefix(unexpected, missing) or _add_prefix(unexpected, missing)
    stored = ctx.ckpt_keys
    if not out and stored and all(k.startswith("module.") for k in stored):
        out.append(
            Explanation(
                kind="wrapper_prefix",
                title="Wrapper prefix 'module.' stripped",
                detail=(
                    "Every checkpoint key starts with 'module.': the file was saved from a model "
                    "wrapped in DistributedDataParallel or DataParallel. The loader removed the "
                    "prefix from every key."
                ),
                fix="Nothing to fix. Save model.module.state_dict() to avoid the prefix.",
                severity="info",
            )
        )
    return out


def _common_wrapper(
    wrapped: Sequence[str], bare: Sequence[str]
) -> Optional[Tuple[str, List[Tuple[str, str]]]]:
    """The prefix that most keys of ``wrapped`` carry in front of a key of ``bare``.

    Returns:
        ``(prefix, [(wrapped key, bare key), ...])``, or ``None`` when no prefix explains
        at least half of the smaller side.
    """
    targets, found = set(bare), Counter()
    pairs: Dict[str, List[Tuple[str, str]]] = {}
    for key in wrapped:
        parts = key.split(".")
        for i in range(1, len(parts)):
            rest = ".".join(parts[i:])
            if rest in targets:
                wrapper = ".".join(parts[:i]) + "."
                found[wrapper] += 1
                pairs.setdefault(wrapper, []).append((key, rest))
                break
    if not found:
        return None
    wrapper, n = found.most_common(1)[0]
    if n * 2 < min(len(wrapped), len(bare)):
        return None
    return wrapper, pairs[wrapper]


def _strip_prefix(unexpected: Sequence[str], missing: Sequence[str]) -> List[Explanation]:
    match = _common_wrapper(unexpected, missing)
    if match is None:
        return []
    wrapper, matched = match
    n = len(matched)
    rules = [[f"^{re.escape(wrapper)}", ""]]
    return [
        Explanation(
            kind="wrapper_prefix",
            title=f"Wrapper prefix '{wrapper}' on checkpoint keys",
            detail=(
                f"{n} checkpoint keys are model keys behind the prefix '{wrapper}', left by "
                f"{_origin(wrapper)}. The loader strips 'module.' by itself only when every key "
                "has it."
            ),
            fix=f"Load with CHECKPOINT.LOAD.RENAME {rules_text(rules)}.",
            config={"CHECKPOINT.LOAD.RENAME": rules},
            covered=[k for pair in matched for k in pair],
        )
    ]


def _add_prefix(unexpected: Sequence[str], missing: Sequence[str]) -> List[Explanation]:
    match = _common_wrapper(missing, unexpected)
    if match is None:
        return []
    wrapper, matched = match
    n = len(matched)
    pairs = {wrapper: [(ck, key) for key, ck in matched]}  # (checkpoint key, model key)
    heads = sorted({ck.split(".")[0] for ck, _ in pairs[wrapper]})
    rules = [[f"^({'|'.join(re.escape(h) for h in heads)})\\.", f"{wrapper}\\1."]]
    return [
        Explanation(
            kind="wrapper_prefix",
            title=f"Checkpoint keys lack the prefix '{wrapper}'",
            detail=(
                f"{n} checkpoint keys are model keys without the prefix '{wrapper}' (e.g. "
                f"'{pairs[wrapper][0][0]}' for '{pairs[wrapper][0][1]}'): the file holds a part "
                "of the model, such as its backbone alone."
            ),
            fix=f"Load with CHECKPOINT.LOAD.RENAME {rules_text(rules)}.",
            config={"CHECKPOINT.LOAD.RENAME": rules},
            covered=[k for pair in pairs[wrapper] for k in pair],
        )
    ]
