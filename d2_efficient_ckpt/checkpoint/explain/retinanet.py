"""Recognise RetinaNet head changes: number of classes, anchors per location, and the
number of convs in its classification and box subnets (MODEL.RETINANET.*)."""

import re
from typing import Dict, Iterable, List, Optional, Tuple

from .base import ExplainContext, Explanation, recogniser
from .heads import LABEL_SETS, plain_lists, preview_names

_OUTPUT = re.compile(r"^(?P<p>(?:.*\.)?head)\.(?:cls_score|bbox_pred)\.\w+$")
_SUBNET = re.compile(r"^(?P<p>(?:.*\.)?head)\.(?P<net>cls|bbox)_subnet\.(?P<i>[0-9]{1,9})\.\w+$")


def _rows(ctx: ExplainContext, key: str) -> Optional[Tuple[int, int]]:
    """Output channels of ``key`` in the checkpoint and in the model, when known."""
    mm = ctx.shape_mismatch
    if key in mm:
        return mm[key][0][0], mm[key][1][0]
    shape = ctx.model_shape(key)
    return (shape[0], shape[0]) if shape else None


@recogniser(order=42)
def retinanet_outputs(ctx: ExplainContext) -> List[Explanation]:
    """Classes (MODEL.RETINANET.NUM_CLASSES) or anchors per location changed.

    The classification output has A x K channels and the box output 4 x A, for A anchors per
    location and K classes (no background class).
    """
    mm = ctx.shape_mismatch
    out = []
    for p in dict.fromkeys(m.group("p") for k in mm for m in [_OUTPUT.match(k)] if m):
        cls, box = _rows(ctx, p + ".cls_score.weight"), _rows(ctx, p + ".bbox_pred.weight")
        if not cls or not box or box[0] % 4 or box[1] % 4:
            continue
        a_ck, a_md = box[0] // 4, box[1] // 4
        if not a_ck or not a_md or cls[0] % a_ck or cls[1] % a_md:
            continue
        k_ck, k_md = cls[0] // a_ck, cls[1] // a_md
        if a_ck != a_md:
            covered = [k for k in mm if k.startswith((p + ".cls_score.", p + ".bbox_pred."))]
            out.append(_anchors(ctx, p, a_ck, a_md, k_ck, k_md, covered))
        elif k_ck != k_md:
            covered = [k for k in mm if k.startswith(p + ".cls_score.")]
            out.append(_classes(ctx, p, a_ck, k_ck, k_md, covered))
    return out


def _classes(ctx, p, anchors, k_ck, k_md, covered) -> Explanation:
    detail = [
        f"{p}.cls_score has {anchors * k_ck} outputs in the checkpoint and {anchors * k_md} in "
        f"the model ({anchors} anchors per location x classes, no background class)."
    ]
    if k_ck in LABEL_SETS:
        detail.append(f"{k_ck} classes is the {LABEL_SETS[k_ck]} label set.")
    cfg_n = ctx.cfg_get("MODEL.RETINANET.NUM_CLASSES")
    if cfg_n is not None and cfg_n != k_md:
        detail.append(
            f"The model has {k_md} classes but MODEL.RETINANET.NUM_CLASSES is {cfg_n}: it was "
            "not built from this config."
        )
    exclude = [p + ".cls_score.*"]
    accept = (
        f"The class output starts from scratch (the subnets and box output are reused); make "
        f"it explicit with CHECKPOINT.LOAD.EXCLUDE {exclude}."
    )
    ds, classes = ctx.dataset_classes() if ctx.cfg is not None else (None, None)
    severity, config = "warning", {"CHECKPOINT.LOAD.EXCLUDE": exclude}
    if classes is not None and len(classes) == k_md:
        severity = "info"
        detail.append(
            f"This agrees with dataset '{ds}' ({len(classes)} classes: "
            f"{preview_names(classes)}): expected when fine-tuning to a new label set."
        )
        fix = "Nothing is wrong. " + accept
    elif classes is not None:
        severity, config = "error", {"MODEL.RETINANET.NUM_CLASSES": len(classes)}
        detail.append(f"But dataset '{ds}' has {len(classes)} classes ({preview_names(classes)}).")
        fix = f"Set MODEL.RETINANET.NUM_CLASSES {len(classes)}."
    else:
        fix = (
            f"If you fine-tune to {k_md} classes this is expected. {accept} If the checkpoint "
            f"was trained on your {k_ck} classes, set MODEL.RETINANET.NUM_CLASSES {k_ck}."
        )
    return Explanation(
        kind="num_classes",
        title=f"Number of classes changed: {k_ck} -> {k_md} classes (RetinaNet head)",
        detail=" ".join(detail),
        fix=fix,
        severity=severity,
        config=config,
        covered=covered,
    )


def _anchors(ctx, p, a_ck, a_md, k_ck, k_md, covered) -> Explanation:
    detail = (
        f"{p} predicts {a_ck} anchors per location in the checkpoint and {a_md} in the model "
        f"(bbox_pred has 4 x A outputs, cls_score A x {k_md} classes)."
    )
    if k_ck != k_md:
        detail += f" The number of classes changed too: {k_ck} -> {k_md}."
    ratios = ctx.cfg_get("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
    sizes = ctx.cfg_get("MODEL.ANCHOR_GENERATOR.SIZES")
    if ratios and sizes:
        r, s = len(ratios[0]), len(sizes[0])
        detail += (
            f" MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS {plain_lists(ratios)} x SIZES "
            f"{plain_lists(sizes)} give {r} x {s} = {r * s} anchors per location."
        )
    exclude = [p + ".cls_score.*", p + ".bbox_pred.*"]
    return Explanation(
        kind="anchors",
        title=f"Anchors per location changed: {a_ck} -> {a_md} (RetinaNet head)",
        detail=detail,
        fix=(
            "If intended, the head's class and box outputs start from scratch (its subnets are "
            f"reused): add CHECKPOINT.LOAD.EXCLUDE {exclude}. To reuse them, configure "
            f"{a_ck} anchors per location again (MODEL.ANCHOR_GENERATOR.SIZES and "
            "ASPECT_RATIOS)."
        ),
        severity="warning",
        config={"CHECKPOINT.LOAD.EXCLUDE": exclude},
        covered=covered,
    )


def _convs(keys: Iterable[str], p: str) -> Tuple[int, bool]:
    """(convs per subnet, with norm layers) of the cls subnet under ``p``."""
    indices = set()
    for key in keys:
        m = _SUBNET.match(key)
        if m and m.group("p") == p and m.group("net") == "cls":
            indices.add(int(m.group("i")))
    # conv, ReLU (indices 0, 2, 4, ...), or conv, norm, ReLU (0, 1, 3, 4, ...) per layer.
    normed = any(i - 1 in indices for i in indices)
    return (sum(1 for i in indices if i % 3 == 0) if normed else len(indices)), normed


@recogniser(order=46)
def retinanet_convs(ctx: ExplainContext) -> List[Explanation]:
    """Convs per subnet changed (MODEL.RETINANET.NUM_CONVS)."""
    loose = ctx.missing + ctx.unexpected
    out = []
    prefixes: Dict[str, None] = dict.fromkeys(
        m.group("p") for k in loose for m in [_SUBNET.match(k)] if m
    )
    for p in prefixes:
        (n_ck, norm_ck), (n_md, norm_md) = (
            _convs(ctx.checkpoint_keys(), p),
            _convs(ctx.model_keys(), p),
        )
        if n_ck == n_md or norm_ck != norm_md or not n_ck or not n_md:
            continue
        covered = [k for k in loose if (m := _SUBNET.match(k)) and m.group("p") == p]
        cfg_n = ctx.cfg_get("MODEL.RETINANET.NUM_CONVS")
        detail = (
            f"{p}.cls_subnet and bbox_subnet have {n_ck} convs each in the checkpoint and {n_md} "
            "in the model"
        )
        detail += f" (MODEL.RETINANET.NUM_CONVS = {cfg_n})." if cfg_n is not None else "."
        if n_md > n_ck:
            detail += f" The last {n_md - n_ck} of each start from scratch."
        else:
            detail += f" The checkpoint's last {n_ck - n_md} of each are not used."
        out.append(
            Explanation(
                kind="retinanet_num_convs",
                title=f"RetinaNet head depth changed: {n_ck} -> {n_md} convs per subnet",
                detail=detail,
                fix=(
                    f"To reuse the checkpoint's head as trained, set MODEL.RETINANET.NUM_CONVS "
                    f"{n_ck}. If the new depth is intended, allow the keys with "
                    "CHECKPOINT.LOAD.ALLOW_MISMATCH."
                ),
                severity="warning",
                config={"MODEL.RETINANET.NUM_CONVS": n_ck},
                covered=covered,
            )
        )
    return out
