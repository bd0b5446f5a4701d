"""Recognise head changes: number of classes, class-agnostic box regression, anchors."""

import re
from typing import List, Optional, Sequence, Tuple

from .base import ExplainContext, Explanation, recogniser

# Label sets whose class count is distinctive enough to name.
LABEL_SETS = {80: "COCO", 1203: "LVIS v1", 1230: "LVIS v0.5", 365: "Objects365", 20: "Pascal VOC"}
_PREDICTOR = re.compile(r"^(?P<p>(?:.*\.)?box_predictor(?:\.\d+)?)\.(?:cls_score|bbox_pred)\.\w+$")
_MASK_PREDICTOR = re.compile(r"^(?:.*\.)?mask_head\.predictor\.(?:weight|bias)$")
_RPN = re.compile(r"^(?P<p>(?:.*\.)?rpn_head)\.objectness_logits\.weight$")


def preview_names(classes: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` class names, comma-separated, with "..." when there are more."""
    shown = ", ".join(str(c) for c in classes[:limit])
    return shown + (", ..." if len(classes) > limit else "")


def _bbox_mode(rows: int, num_classes: int) -> Tuple[Optional[str], int]:
    """("agnostic" | "per-class" | None, box dim) of a bbox_pred with ``rows`` outputs."""
    for dim in (4, 5):
        if rows == dim and num_classes != 1:
            return "agnostic", dim
    for dim in (4, 5):
        if num_classes > 0 and rows == dim * num_classes:
            return "per-class", dim
    return None, 0


@recogniser(order=40)
def box_predictor(ctx: ExplainContext) -> List[Explanation]:
    """Number of classes changed; class-agnostic against per-class box regression."""
    mm = ctx.shape_mismatch
    prefixes = list(dict.fromkeys(m.group("p") for k in mm for m in [_PREDICTOR.match(k)] if m))
    classes: List[str] = []
    agnostic: List[str] = []
    counts = None
    modes = None
    for p in prefixes:
        cls = mm.get(p + ".cls_score.weight")
        model_cls = cls[1] if cls else ctx.model_shape(p + ".cls_score.weight")
        if model_cls is None:
            continue
        n_ck = (cls[0][0] if cls else model_cls[0]) - 1
        n_md = model_cls[0] - 1
        if cls and n_ck != n_md:
            counts = counts or (n_ck, n_md)
            classes += [k for k in mm if k.startswith(p + ".cls_score.")]
        bbox = mm.get(p + ".bbox_pred.weight")
        if not bbox or bbox[0][0] == bbox[1][0]:
            continue
        ck_mode, md_mode = _bbox_mode(bbox[0][0], n_ck)[0], _bbox_mode(bbox[1][0], n_md)[0]
        target = agnostic if ck_mode and md_mode and ck_mode != md_mode else classes
        if target is agnostic:
            modes = modes or (p, bbox[0][0], bbox[1][0], ck_mode, md_mode, n_ck, n_md)
        if target is agnostic or n_ck != n_md:
            target += [k for k in mm if k.startswith(p + ".bbox_pred.")]
    out = []
    if counts:
        classes += [
            k for k, (a, b) in mm.items() if _MASK_PREDICTOR.match(k) and (a[0], b[0]) == counts
        ]
        out.append(_classes_explanation(ctx, *counts, prefixes, classes))
    if modes:
        out.append(_agnostic_explanation(ctx, *modes, agnostic))
    return out


def _classes_explanation(ctx, n_ck, n_md, prefixes, covered) -> Explanation:
    where = " and ".join(f"{p}.cls_score" for p in prefixes[:2])
    detail = [
        f"{where} has {n_ck + 1} outputs in the checkpoint and {n_md + 1} in the model "
        "(one per class plus background)."
    ]
    if n_ck in LABEL_SETS:
        detail.append(f"{n_ck} classes is the {LABEL_SETS[n_ck]} label set.")
    cfg_n = ctx.cfg_get("MODEL.ROI_HEADS.NUM_CLASSES")
    ds, classes = ctx.dataset_classes() if ctx.cfg is not None else (None, None)
    exclude = sorted({p + ".*" for p in prefixes})
    if cfg_n is not None and cfg_n != n_md:
        detail.append(
            f"The model has {n_md} classes but MODEL.ROI_HEADS.NUM_CLASSES is {cfg_n}: it was "
            "not built from this config."
        )
    accept = (
        f"To make the fresh start explicit, add CHECKPOINT.LOAD.EXCLUDE {exclude} (under "
        f"ON_MISMATCH error, or CHECKPOINT.LOAD.ALLOW_MISMATCH {exclude})."
    )
    if classes is not None and len(classes) == n_md:
        severity, config = "info", {"CHECKPOINT.LOAD.EXCLUDE": exclude}
        detail.append(
            f"This agrees with MODEL.ROI_HEADS.NUM_CLASSES = {cfg_n} and with dataset '{ds}' "
            f"({len(classes)} classes: {preview_names(classes)}): expected when fine-tuning to "
            "a new label set. The box predictor starts from scratch."
        )
        fix = "Nothing is wrong. " + accept
    elif classes is not None:
        k = len(classes)
        severity, config = "error", {"MODEL.ROI_HEADS.NUM_CLASSES": k}
        if k == n_ck:
            detail.append(
                f"But dataset '{ds}' has {k} classes ({preview_names(classes)}) like the "
                f"checkpoint: MODEL.ROI_HEADS.NUM_CLASSES = {cfg_n} is probably wrong (a common "
                "mistake at inference), and the box predictor would be left untrained."
            )
            fix = f"Set MODEL.ROI_HEADS.NUM_CLASSES {k}."
        else:
            detail.append(
                f"Neither matches dataset '{ds}', which has {k} classes ({preview_names(classes)})."
            )
            fix = f"Set MODEL.ROI_HEADS.NUM_CLASSES {k} (or DATASETS.NUM_CLASSES_FROM_DATA True)."
    else:
        severity, config = "warning", {"CHECKPOINT.LOAD.EXCLUDE": exclude}
        if ds:
            why = f"dataset '{ds}' is not registered or has no thing_classes"
        else:
            why = "no dataset is configured"
        if ctx.cfg is not None:
            detail.append(
                f"The model follows MODEL.ROI_HEADS.NUM_CLASSES = {cfg_n}; {why}, so whether "
                f"{n_md} is right cannot be checked."
            )
        else:
            detail.append("Without the config and dataset, whether this is intended is unknown.")
        fix = (
            f"If you fine-tune to {n_md} classes this is expected. {accept} If the checkpoint "
            f"was trained on your {n_ck} classes (e.g. at inference), set "
            f"MODEL.ROI_HEADS.NUM_CLASSES {n_ck}."
        )
    return Explanation(
        kind="num_classes",
        title=f"Number of classes changed: {n_ck} -> {n_md} classes",
        detail=" ".join(detail),
        fix=fix,
        severity=severity,
        config=config,
        covered=covered,
    )


def _agnostic_explanation(ctx, p, ck_rows, md_rows, ck_mode, md_mode, n_ck, n_md, covered):
    def describe(rows, mode, n):
        return f"{rows // n} per class x {n} classes" if mode == "per-class" else "shared by all"

    cfg_value = ctx.cfg_get("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG")
    detail = (
        f"{p}.bbox_pred has {ck_rows} outputs in the checkpoint "
        f"({describe(ck_rows, ck_mode, n_ck)}) and {md_rows} in the model "
        f"({describe(md_rows, md_mode, n_md)})."
    )
    if cfg_value is not None:
        detail += f" This follows MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = {cfg_value}."
    exclude = [p + ".bbox_pred.*"]
    return Explanation(
        kind="class_agnostic_bbox_reg",
        title=f"Box regression switched from {ck_mode} to {md_mode}",
        detail=detail,
        fix=(
            "Expected if you changed MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG: the box regressor "
            f"starts from scratch; make it explicit with CHECKPOINT.LOAD.EXCLUDE {exclude}. "
            "Otherwise set MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG "
            f"{ck_mode == 'agnostic'} to match the checkpoint."
        ),
        severity="warning",
        config={"CHECKPOINT.LOAD.EXCLUDE": exclude},
        covered=covered,
    )


@recogniser(order=45)
def anchors(ctx: ExplainContext) -> List[Explanation]:
    """Anchors per location changed (RPN head)."""
    mm = ctx.shape_mismatch
    out = []
    for key, (ck, md) in mm.items():
        m = _RPN.match(key)
        if not m or ck[0] == md[0]:
            continue
        p, a_ck, a_md = m.group("p"), ck[0], md[0]
        covered = [
            k for k in mm if k.startswith((p + ".objectness_logits.", p + ".anchor_deltas."))
        ]
        detail = (
            f"{p} predicts {a_ck} anchors per location in the checkpoint and {a_md} in the model "
            f"(objectness_logits has A outputs, anchor_deltas 4A)."
        )
        ratios = ctx.cfg_get("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
        sizes = ctx.cfg_get("MODEL.ANCHOR_GENERATOR.SIZES")
        reuse = ""
        if ratios and sizes:
            r, s = len(ratios[0]), len(sizes[0])
            detail += (
                f" MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS {plain_lists(ratios)} x SIZES "
                f"{plain_lists(sizes)} give {r} x {s} = {r * s} anchors per location on each level."
            )
            if a_ck % s == 0:
                reuse = f" To reuse them, use {a_ck // s} aspect ratios per level again"
                reuse += " (detectron2's default is [[0.5, 1.0, 2.0]])." if a_ck // s == 3 else "."
        exclude = [p + ".objectness_logits.*", p + ".anchor_deltas.*"]
        out.append(
            Explanation(
                kind="anchors",
                title=f"Anchors per location changed: {a_ck} -> {a_md} (RPN head)",
                detail=detail,
                fix=(
                    "If intended, the RPN's objectness and box-delta layers start from scratch "
                    f"(its 3x3 conv is reused): add CHECKPOINT.LOAD.EXCLUDE {exclude}." + reuse
                ),
                severity="warning",
                config={"CHECKPOINT.LOAD.EXCLUDE": exclude},
                covered=covered,
            )
        )
    return out


def plain_lists(value) -> str:
    """A config value of nested tuples/lists printed as nested lists, as yaml shows it."""
    return str(_lists(value))


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value
