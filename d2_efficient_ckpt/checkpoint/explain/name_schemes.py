"""Recognise checkpoints named by other code (torchvision, pycls, Caffe2) and suggest
the CHECKPOINT.LOAD.RENAME rules that map them onto the model (rules in ``keys/rename_rules.py``;
wrapper prefixes are in ``wrappers.py``).
"""

from typing import Any, Dict, List, Optional

from ..keys.rename_rules import (
    C2_KEY,
    PYCLS_KEY,
    TORCHVISION_INPUT_CONFIG,
    TV_KEY,
    mapped_keys,
    pycls_resnet_rules,
    rules_text,
    torchvision_rename_rules,
    torchvision_source_prefix,
)
from .base import ExplainContext, Explanation, recogniser

__all__: List[str] = []  # recognisers register themselves; nothing to import by name


def _model_prefix(ctx: ExplainContext, suffix: str) -> Optional[str]:
    for key in ctx.model_keys():
        if key.endswith(suffix) and (key == suffix or key[-len(suffix) - 1] == "."):
            return key[: -len(suffix)]
    return None


@recogniser(order=10)
def torchvision_naming(ctx: ExplainContext) -> List[Explanation]:
    unexpected = ctx.unexpected
    source = torchvision_source_prefix(unexpected)
    if source is None:
        return []
    tv = [k for k in unexpected if k.startswith(source) and TV_KEY.fullmatch(k[len(source) :])]
    prefix = _model_prefix(ctx, "stem.conv1.weight")
    where = f" under '{source}'" if source else ""
    detail = (
        f"{len(tv)} checkpoint keys use torchvision's ResNet names (conv1, bn1, layer1-4, "
        f"downsample, fc){where}."
    )
    config: Dict[str, Any] = {}
    covered = list(tv)
    if prefix is None:
        fix = "The model has no detectron2 ResNet backbone to load them into."
    else:
        rules = torchvision_rename_rules(prefix, source)
        mapped = mapped_keys(rules, tv, set(ctx.missing))
        covered += [new for _, new in mapped]
        detail += (
            f" With the RENAME rules below, {len(mapped)} of them land on missing model keys "
            f"under '{prefix}'. fc.* is torchvision's ImageNet classifier and has no place in a "
            "detector. torchvision ResNets put the stride in the 3x3 conv and take RGB input "
            "normalised with ImageNet statistics."
        )
        if ctx.cfg_get("MODEL.RESNETS.STRIDE_IN_1X1") is True:
            detail += " This config has MODEL.RESNETS.STRIDE_IN_1X1 True, which does not fit."
        config = {"CHECKPOINT.LOAD.RENAME": rules, **TORCHVISION_INPUT_CONFIG}
        fix = (
            "Convert the file once with `python -m d2_efficient_ckpt convert --from torchvision "
            f"--prefix {prefix} IN OUT`, or load it as is with CHECKPOINT.LOAD.RENAME "
            f"{rules_text(rules)}. Either way set MODEL.RESNETS.STRIDE_IN_1X1 False, "
            "INPUT.FORMAT RGB, MODEL.PIXEL_MEAN [123.675, 116.28, 103.53] and MODEL.PIXEL_STD "
            "[58.395, 57.12, 57.375]; under ON_MISMATCH error also CHECKPOINT.LOAD.ALLOW_MISMATCH "
            "['fc.*', '*.num_batches_tracked']."
        )
    return [
        Explanation(
            kind="torchvision_naming",
            title="torchvision ResNet naming",
            detail=detail,
            fix=fix,
            config=config,
            covered=covered,
        )
    ]


@recogniser(order=12)
def caffe2_naming(ctx: ExplainContext) -> List[Explanation]:
    unexpected = ctx.unexpected
    c2 = [k for k in unexpected if C2_KEY.match(k)]
    if len(c2) < 3 or len(c2) * 2 < len(unexpected):
        return []
    return [
        Explanation(
            kind="caffe2_naming",
            title="Caffe2 / Detectron1 naming",
            detail=(
                f"{len(c2)} checkpoint keys use Caffe2 blob names (e.g. {', '.join(c2[:3])}). "
                "detectron2 maps them to its own names, and moves the background class of "
                "cls_score, only when it reads the file as a Caffe2 pickle."
            ),
            fix=(
                "Load the original .pkl file (MODEL.WEIGHTS path/to/model.pkl), or convert it "
                "once with `python -m d2_efficient_ckpt convert --from caffe2 IN.pkl OUT.pth`."
            ),
            covered=c2,
        )
    ]


@recogniser(order=14)
def pycls_naming(ctx: ExplainContext) -> List[Explanation]:
    unexpected = ctx.unexpected
    pycls = [k for k in unexpected if PYCLS_KEY.match(k)]
    if len(pycls) < 3 or len(pycls) * 2 < len(unexpected):
        return []
    regnet = _model_prefix(ctx, "s1.b1.f.a.weight")
    if regnet is not None:
        rules = [["^(stem|s\\d+)\\.", f"{regnet}\\1."]]
        what = f"detectron2's RegNet backbones use the same names, under '{regnet}' in this model"
    else:
        prefix = _model_prefix(ctx, "stem.conv1.weight")
        if prefix is None:
            return []
        rules = pycls_resnet_rules(pycls, prefix)
        what = (
            "pycls numbers stages and blocks from 1 (s1.b1) where detectron2 starts at res2.0, "
            "so the rules name each block; pycls ResNets also put the stride in the 3x3 conv "
            "(MODEL.RESNETS.STRIDE_IN_1X1 False)"
        )
    mapped = mapped_keys(rules, pycls, set(ctx.missing))
    return [
        Explanation(
            kind="pycls_naming",
            title="pycls naming",
            detail=(
                f"{len(pycls)} checkpoint keys use pycls names (stem.conv, sN.bM, head.fc); "
                f"{what}. With the RENAME rules, {len(mapped)} of them land on missing model keys."
            ),
            fix=f"Load with CHECKPOINT.LOAD.RENAME {rules_text(rules)}.",
            config={"CHECKPOINT.LOAD.RENAME": rules},
            covered=pycls + [new for _, new in mapped],
        )
    ]
