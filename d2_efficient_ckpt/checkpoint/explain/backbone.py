"""Recognisers for backbone changes: ResNet depth and block type, BatchNorm counters."""

import os
import re
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..keys.grouping import coarsen_patterns, group_keys
from .base import ExplainContext, Explanation, recogniser

# Block numbers are ASCII digits of bounded length: int() of thousands of digits raises.
_BLOCK = re.compile(r"^(?P<p>(?:.*\.)?)(?P<stage>res[2-5])\.(?P<block>[0-9]{1,9})\.")
_STAGES = ("res2", "res3", "res4", "res5")
# Blocks per stage -> {bottleneck?: depth}.
_DEPTHS = {
    (2, 2, 2, 2): {False: 18},
    (3, 4, 6, 3): {False: 34, True: 50},
    (3, 4, 23, 3): {True: 101},
    (3, 8, 36, 3): {True: 152},
}


class _Side:
    """Blocks per stage of one side (model or checkpoint), per backbone prefix."""

    def __init__(self, keys: Iterable[str]):
        self.blocks: Dict[Tuple[str, str], Set[int]] = defaultdict(set)
        self.bottleneck: Dict[str, bool] = defaultdict(bool)
        for key in keys:
            m = _BLOCK.match(key)
            if m:
                self.blocks[(m.group("p"), m.group("stage"))].add(int(m.group("block")))
                if ".conv3." in key[m.end() - 1 :]:
                    self.bottleneck[m.group("p")] = True

    def counts(self, prefix: str) -> Tuple[int, ...]:
        return tuple(max(self.blocks.get((prefix, s), {-1})) + 1 for s in _STAGES)

    def has(self, prefix: str) -> bool:
        return any(p == prefix for p, _ in self.blocks)


def depth_name(counts: Sequence[int], bottleneck: bool) -> Optional[str]:
    """``"R50"`` for blocks (3, 4, 6, 3) with bottlenecks, ``None`` if not a known ResNet."""
    depth = _DEPTHS.get(tuple(counts), {}).get(bottleneck)
    return f"R{depth}" if depth else None


def _describe(counts: Sequence[int], bottleneck: bool) -> str:
    return depth_name(counts, bottleneck) or "blocks " + "/".join(str(c) for c in counts)


@recogniser(order=70)
def backbone_depth(ctx: ExplainContext) -> List[Explanation]:
    """Blocks or stages missing or extra (R50 -> R101), or basic against bottleneck blocks."""
    loose = ctx.missing + ctx.unexpected + list(ctx.shape_mismatch)
    prefixes = list(dict.fromkeys(m.group("p") for k in loose for m in [_BLOCK.match(k)] if m))
    if not prefixes:
        return []
    model, ckpt = _Side(ctx.model_keys()), _Side(ctx.checkpoint_keys())
    out = []
    for p in prefixes:
        if not (model.has(p) and ckpt.has(p)):
            continue
        c_ck, c_md = ckpt.counts(p), model.counts(p)
        b_ck, b_md = ckpt.bottleneck[p], model.bottleneck[p]
        if c_ck == c_md and b_ck == b_md:
            continue
        name_ck, name_md = _describe(c_ck, b_ck), _describe(c_md, b_md)
        stages = [s for s, a, b in zip(_STAGES, c_ck, c_md) if a != b]
        covered = [
            k
            for k in loose
            if k.startswith(p) and (b_ck != b_md or any(k.startswith(f"{p}{s}.") for s in stages))
        ]
        parts = [
            f"{s} has {a} blocks in the checkpoint and {b} in the model"
            for s, a, b in zip(_STAGES, c_ck, c_md)
            if a != b
        ]
        if b_ck != b_md:
            kinds = {True: "bottleneck blocks (R50 and deeper)", False: "basic blocks (R18/R34)"}
            title = f"Backbone block type changed: {kinds[b_ck]} -> {kinds[b_md]}"
            parts.append("every block's layers differ, so the whole backbone starts from scratch")
        else:
            title = f"Backbone depth changed: {name_ck} -> {name_md}"
        detail = "; ".join(parts) + f" ({p or 'backbone '}res2-res5: {name_ck} -> {name_md})."
        cfg_depth = ctx.cfg_get("MODEL.RESNETS.DEPTH")
        if cfg_depth is not None:
            detail += f" The config has MODEL.RESNETS.DEPTH = {cfg_depth}."
        deeper = sum(c_md) > sum(c_ck)
        ck_depth = _DEPTHS.get(tuple(c_ck), {}).get(b_ck)
        if deeper:
            fix = (
                "The model's extra blocks start from scratch, which usually costs accuracy. "
                f"Load {name_md} weights (e.g. ImageNet-pretrained ones from the detectron2 "
                "model zoo)"
            )
            fix += (
                f", or set MODEL.RESNETS.DEPTH {ck_depth} to match the checkpoint."
                if ck_depth
                else "."
            )
        else:
            fix = "The checkpoint's extra blocks are ignored."
            fix += f" Set MODEL.RESNETS.DEPTH {ck_depth} to use them." if ck_depth else ""
        out.append(
            Explanation(
                kind="backbone_depth",
                title=title,
                detail=detail,
                fix=fix,
                severity="warning",
                config={"MODEL.RESNETS.DEPTH": ck_depth} if ck_depth else {},
                covered=covered,
            )
        )
    return out


@recogniser(order=90)
def batchnorm_counters(ctx: ExplainContext) -> List[Explanation]:
    """Only ``num_batches_tracked`` differs: BatchNorm in one, FrozenBatchNorm in the other."""
    present = set(ctx.report.loaded) | {k for k, _, _ in ctx.report.shape_mismatch}
    keys = [
        k
        for k in ctx.missing + ctx.unexpected
        if k.endswith(".num_batches_tracked")
        and k[: -len("num_batches_tracked")] + "running_mean" in present
    ]
    if not keys:
        return []
    side = "checkpoint" if keys[0] in ctx.report.unexpected else "model"
    other = "model" if side == "checkpoint" else "checkpoint"
    return [
        Explanation(
            kind="batchnorm_counters",
            title=f"BatchNorm step counters only: {len(keys)} num_batches_tracked buffers",
            detail=(
                f"The {side} has BatchNorm layers where the {other} has FrozenBatchNorm "
                "(MODEL.RESNETS.NORM): only their step counters differ, and detectron2 does not "
                "use them."
            ),
            fix=(
                "Nothing to fix. Under ON_MISMATCH error, add CHECKPOINT.LOAD.ALLOW_MISMATCH "
                "['*.num_batches_tracked']."
            ),
            severity="info",
            config={"CHECKPOINT.LOAD.ALLOW_MISMATCH": ["*.num_batches_tracked"]},
            covered=keys,
        )
    ]


@recogniser(order=85)
def backbone_only(ctx: ExplainContext) -> List[Explanation]:
    """The checkpoint holds the backbone alone (ImageNet pretraining): the rest starts fresh."""
    loaded, missing = ctx.report.loaded, ctx.missing
    if not loaded or not missing:
        return []
    prefix = os.path.commonprefix(loaded)
    prefix = prefix[: prefix.rfind(".") + 1]
    if not prefix.startswith("backbone") or any(k.startswith(prefix) for k in missing):
        return []
    status = {k: "loaded" for k in loaded}
    status.update({k: "missing" for k in missing})
    fresh = [g.pattern for g in group_keys(status, braces=False) if g.status == "missing"]
    fresh = coarsen_patterns(fresh)
    return [
        Explanation(
            kind="backbone_only",
            title=f"Backbone-only checkpoint: {len(missing)} keys outside '{prefix}*' start fresh",
            detail=(
                f"All {len(loaded)} loaded keys lie under '{prefix}' and the checkpoint has "
                "nothing for the rest of the model, as with ImageNet-pretrained backbone "
                "weights: the other layers keep their initialisation."
            ),
            fix=(
                "Nothing to fix when training a detector from a classification checkpoint. "
                f"Under ON_MISMATCH error, add CHECKPOINT.LOAD.ALLOW_MISMATCH {fresh}."
            ),
            severity="info",
            config={"CHECKPOINT.LOAD.ALLOW_MISMATCH": fresh},
            covered=list(missing),
        )
    ]
