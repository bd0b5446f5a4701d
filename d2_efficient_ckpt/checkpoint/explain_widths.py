"""Recognise width changes: FPN channels (MODEL.FPN.OUT_CHANNELS) and box head width
(MODEL.ROI_BOX_HEAD.FC_DIM / CONV_DIM), with the layers fed by them."""

import re
from typing import List, Tuple

from .explain import ExplainContext, Explanation, recogniser

Shape = Tuple[int, ...]
_FPN = re.compile(r"^(?P<p>(?:.*\.)?)fpn_(?:lateral|output)\d+\.weight$")
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
