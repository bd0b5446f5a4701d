"""Recognise width changes: FPN channels (MODEL.FPN.OUT_CHANNELS), box head width
(MODEL.ROI_BOX_HEAD.FC_DIM / CONV_DIM), with the layers fed by them, and the width of the
backbone's bottleneck blocks (MODEL.RESNETS.WIDTH_PER_GROUP / NUM_GROUPS)."""

import re
from typing import List, Tuple

from .base import ExplainContext, Explanation, recogniser

Shape = Tuple[int, ...]
_FPN = re.compile(r"^(?P<p>(?:.*\.)?)fpn_(?:lateral|output)\d+\.weight$")
_BOTTLENECK_CONV1 = re.compile(
    r"^(?P<p>(?:.*\.)?)(?P<stage>res[2-5])\.(?P<block>\d+)\.conv1\.weight$"
)
_BOTTLENECK = re.compile(r"^(?P<p>(?:.*\.)?)res[2-5]\.\d+\.conv[123]\.")
_BOX_HEAD = re.compile(r"^(?P<p>(?:.*\.)?box_head)\.(?P<kind>fc|conv)\d+\.weight$")


def _scaled(ck: Shape, md: Shape, old: int, new: int) -> bool:
    """Whether ``md`` is ``ck`` with some dimensions scaled by ``new / old``."""
    if len(ck) != len(md) or ck == md:
        return False
    return all(a == b or a * new == b * old for a, b in zip(ck, md))


def _width_explanation(ctx, kind, title, what, cfg_key, old, new, covered) -> Explanation:
    current = ctx.cfg_get(cfg_key)
    detail = f"{what} {old} channels in the checkpoint and {new} in the model ({cfg_key}"
    detail += f" = {current})." if current is not None else ")."
    return Explanation(
        kind=kind,
        title=title,
        detail=detail
        + f" Layers fed by them change shape too: {len(covered)} keys start from scratch.",
        fix=f"To reuse the checkpoint's weights, set {cfg_key} {old}. If the new width is "
        "intended, add the keys to CHECKPOINT.LOAD.EXCLUDE.",
        severity="warning",
        config={cfg_key: old},
        covered=covered,
    )


@recogniser(order=50)
def widths(ctx: ExplainContext) -> List[Explanation]:
    """FPN width (MODEL.FPN.OUT_CHANNELS) or box head width (FC_DIM / CONV_DIM) changed."""
    out = []
    mm = ctx.shape_mismatch
    fpn = [(k, s) for k, s in mm.items() if _FPN.match(k) and s[0][0] != s[1][0]]
    if fpn:
        old, new = fpn[0][1][0][0], fpn[0][1][1][0]
        base = _FPN.match(fpn[0][0]).group("p")
        covered = [k for k, (a, b) in mm.items() if k.startswith(base + "fpn_")]
        covered += [
            k
            for k, (a, b) in mm.items()
            if k not in covered and not k.startswith(base) and _scaled(a, b, old, new)
        ]
        out.append(
            _width_explanation(
                ctx,
                "fpn_width",
                f"FPN width changed: {old} -> {new} channels",
                f"The {base}fpn_* layers have",
                "MODEL.FPN.OUT_CHANNELS",
                old,
                new,
                covered,
            )
        )
    mm = {k: v for k, v in mm.items() if not any(k in e.covered for e in out)}
    for key, (ck, md) in mm.items():
        m = _BOX_HEAD.match(key)
        if not m or ck[0] == md[0]:
            continue
        p, old, new = m.group("p"), ck[0], md[0]
        cfg_key = "MODEL.ROI_BOX_HEAD." + ("FC_DIM" if m.group("kind") == "fc" else "CONV_DIM")
        covered = [k for k, (a, b) in mm.items() if k.startswith(p + ".")]
        predictor = p.replace("box_head", "box_predictor")
        covered += [k for k, (a, b) in mm.items() if k.startswith(predictor + ".")]
        title = f"Box head width changed: {old} -> {new} channels"
        out.append(
            _width_explanation(
                ctx, "box_head_width", title, f"{p} layers have", cfg_key, old, new, covered
            )
        )
        break
    return out


@recogniser(order=55)
def backbone_width(ctx: ExplainContext) -> List[Explanation]:
    """Bottleneck width changed (MODEL.RESNETS.WIDTH_PER_GROUP, NUM_GROUPS).

    A bottleneck block of stage ``res{s}`` has ``NUM_GROUPS x WIDTH_PER_GROUP x 2^(s-2)``
    channels inside (conv1's outputs), and conv2 sees ``1 / NUM_GROUPS`` of them per group;
    the block's output channels stay, so only conv1, conv2 and conv3's inputs change shape.
    """
    mm = ctx.shape_mismatch
    for key, (ck, md) in mm.items():
        m = _BOTTLENECK_CONV1.match(key)
        if not m or ck[0] == md[0]:
            continue
        p, stage, block = m.group("p"), m.group("stage"), m.group("block")
        conv2 = mm.get(f"{p}{stage}.{block}.conv2.weight")
        if not conv2 or f"{p}{stage}.{block}.conv3.weight" not in mm:
            continue
        scale = 2 ** (int(stage[3]) - 2)
        groups = (ck[0] // conv2[0][1], md[0] // conv2[1][1])
        width = (ck[0] // (groups[0] * scale), md[0] // (groups[1] * scale))
        covered = [k for k in mm if (b := _BOTTLENECK.match(k)) and b.group("p") == p]
        return [_backbone_width_explanation(ctx, p, width, groups, covered)]
    return []


def _backbone_width_explanation(ctx, p, width, groups, covered) -> Explanation:
    (w_ck, w_md), (g_ck, g_md) = width, groups
    title = f"Backbone width changed: {g_ck}x{w_ck} -> {g_md}x{w_md} (groups x width per group)"
    config = {"MODEL.RESNETS.WIDTH_PER_GROUP": w_ck}
    if g_ck != g_md:
        config["MODEL.RESNETS.NUM_GROUPS"] = g_ck
    now = {k: ctx.cfg_get(k) for k in ("MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP")}
    where = f"{p}res2..res5" if p else "res2..res5"
    detail = (
        f"The bottleneck blocks of {where} have {g_ck} group(s) of {w_ck} channels inside "
        f"(doubling per stage) in the checkpoint and {g_md} of {w_md} in the model"
    )
    if all(v is not None for v in now.values()):
        detail += " (" + ", ".join(f"{k} = {v}" for k, v in now.items()) + ")"
    detail += (
        f": conv1, conv2 and conv3 change shape and {len(covered)} keys start from scratch. "
        "Block outputs keep their width, so the layers after the backbone still load."
    )
    settings = " and ".join(f"{k} {v}" for k, v in config.items())
    return Explanation(
        kind="backbone_width",
        title=title,
        detail=detail,
        fix=f"To reuse the checkpoint's backbone, set {settings}. If the new width is intended, "
        "the backbone trains from scratch: make it explicit with CHECKPOINT.LOAD.EXCLUDE.",
        severity="warning",
        keys=[f"{p}res*.conv1.*", f"{p}res*.conv2.*", f"{p}res*.conv3.weight"],
        config=config,
        covered=covered,
    )
