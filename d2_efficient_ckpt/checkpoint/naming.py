"""Checkpoints named by other code: torchvision, pycls, Caffe2.

The recognisers here suggest CHECKPOINT.LOAD.RENAME rules when a consistent renaming maps the
checkpoint's keys onto the model's (wrapper prefixes are in ``explain_wrappers``);
:func:`torchvision_resnet_to_detectron2` applies the torchvision rules once, for ``convert``.
"""

import json
import re
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .explain import ExplainContext, Explanation, recogniser
from .selection import KeySelector

__all__ = [
    "torchvision_rename_rules",
    "torchvision_resnet_to_detectron2",
    "torchvision_source_prefix",
    "TORCHVISION_INPUT_CONFIG",
    "pycls_resnet_rules",
    "rules_text",
]

_BN = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_TV_KEY = re.compile(
    rf"(?:conv1\.weight|bn1\.{_BN}|layer[1-4]\.\d+\.(?:conv\d\.weight|bn\d\.{_BN}|"
    rf"downsample\.0\.weight|downsample\.1\.{_BN})|fc\.(?:weight|bias))"
)
_C2_KEY = re.compile(r"^[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_(?:w|b|s|rm|riv)$")
_PYCLS_KEY = re.compile(r"^(?:stem\.(?:conv|bn)\.|s\d+\.b\d+\.|head\.fc\.)")
# What a torchvision ResNet expects of its input and stride placement, in config terms.
TORCHVISION_INPUT_CONFIG = {
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}


def rules_text(rules: Sequence[Sequence[str]]) -> str:
    return json.dumps([list(r) for r in rules])


def _mapped(rules, keys: Sequence[str], targets: set) -> List[Tuple[str, str]]:
    selector = KeySelector(rename=[tuple(r) for r in rules])
    out = []
    for key in keys:
        new, changed = selector.renamed(key)
        if changed and new in targets:
            out.append((key, new))
    return out


# ------------------------------------------------------------------------- torchvision
def torchvision_source_prefix(keys: Sequence[str]) -> Optional[str]:
    """The prefix before torchvision ResNet names (``""``, ``"backbone.body."``), or ``None``
    when fewer than half of the keys (and fewer than 3) are torchvision ResNet names."""
    found = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if _TV_KEY.fullmatch(".".join(parts[i:])):
                found[".".join(parts[:i]) + "." if i else ""] += 1
                break
    if not found:
        return None
    prefix, n = found.most_common(1)[0]
    return prefix if n >= 3 and n * 2 >= len(keys) else None


def torchvision_rename_rules(prefix: str = "", source_prefix: str = "") -> List[List[str]]:
    """RENAME rules from torchvision ResNet names to detectron2 names under ``prefix``.

    ``conv1``/``bn1`` become ``stem.conv1``/``stem.conv1.norm``, ``layerN.i`` becomes
    ``res{N+1}.i``, ``bnK`` becomes ``convK.norm`` and ``downsample.0/1`` become ``shortcut``
    and ``shortcut.norm``.
    """
    q, p = re.escape(source_prefix), re.escape(prefix)
    rules = [
        [f"^{q}conv1\\.", f"{prefix}stem.conv1."],
        [f"^{q}bn1\\.", f"{prefix}stem.conv1.norm."],
    ]
    rules += [[f"^{q}layer{i}\\.", f"{prefix}res{i + 1}."] for i in range(1, 5)]
    block = f"^({p}res[2-5]\\.\\d+)\\."
    rules += [
        [block + "bn(\\d)\\.", "\\1.conv\\2.norm."],
        [block + "downsample\\.0\\.", "\\1.shortcut."],
        [block + "downsample\\.1\\.", "\\1.shortcut.norm."],
    ]
    return rules


def torchvision_resnet_to_detectron2(
    state: Mapping[str, Any], prefix: str = ""
) -> Tuple[Dict[str, Any], List[str]]:
    """Rename a torchvision ResNet state dict to detectron2 backbone names.

    Args:
        state: the torchvision state dict (``torchvision.models.resnet50().state_dict()``).
        prefix: put in front of every new key, e.g. ``"backbone.bottom_up."`` for an FPN model.

    Returns:
        The renamed dict (values untouched) and the keys dropped: ``fc.*`` (the ImageNet
        classifier) and ``num_batches_tracked`` (unused by detectron2's FrozenBatchNorm).

    Raises:
        ValueError: when the keys are not (all) torchvision ResNet names.
    """
    keys = list(state)
    source = torchvision_source_prefix(keys)
    if source is None:
        raise ValueError(
            "not a torchvision ResNet state dict: expected keys like conv1.weight, bn1.weight, "
            f"layer1.0.conv1.weight; got {', '.join(keys[:4]) or 'no keys'}."
        )
    selector = KeySelector(rename=[tuple(r) for r in torchvision_rename_rules(prefix, source)])
    out, dropped, unknown = {}, [], []
    for key in keys:
        tail = key[len(source) :]
        if tail.startswith("fc.") or key.endswith(".num_batches_tracked"):
            dropped.append(key)
            continue
        new, rules = selector.renamed(key)
        if not key.startswith(source) or not rules:
            unknown.append(key)
            continue
        out[new] = state[key]
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys are not torchvision ResNet names (e.g. "
            f"{', '.join(unknown[:3])}); only the ResNet backbone of a torchvision "
            "checkpoint can be converted."
        )
    return out, dropped


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
    tv = [k for k in unexpected if k.startswith(source) and _TV_KEY.fullmatch(k[len(source) :])]
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
        mapped = _mapped(rules, tv, set(ctx.missing))
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


# ------------------------------------------------------------------------- Caffe2
@recogniser(order=12)
def caffe2_naming(ctx: ExplainContext) -> List[Explanation]:
    unexpected = ctx.unexpected
    c2 = [k for k in unexpected if _C2_KEY.match(k)]
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


# ------------------------------------------------------------------------- pycls
def pycls_resnet_rules(keys: Sequence[str], prefix: str) -> List[List[str]]:
    """RENAME rules from pycls ResNet names (``s1.b1.f.a``) to detectron2 (``res2.0.conv1``)."""
    rules = [
        ["^stem\\.conv\\.", f"{prefix}stem.conv1."],
        ["^stem\\.bn\\.", f"{prefix}stem.conv1.norm."],
    ]
    blocks = sorted(
        {
            (int(m.group(1)), int(m.group(2)))
            for k in keys
            for m in [re.match(r"^s(\d+)\.b(\d+)\.", k)]
            if m
        }
    )
    rules += [[f"^s{s}\\.b{b}\\.", f"{prefix}res{s + 1}.{b - 1}."] for s, b in blocks]
    block = f"^({re.escape(prefix)}res[2-5]\\.\\d+)\\."
    for letter, n in (("a", 1), ("b", 2), ("c", 3)):
        rules.append([block + f"f\\.{letter}_bn\\.", f"\\1.conv{n}.norm."])
        rules.append([block + f"f\\.{letter}\\.", f"\\1.conv{n}."])
    rules += [[block + "proj\\.", "\\1.shortcut."], [block + "bn\\.", "\\1.shortcut.norm."]]
    return rules


@recogniser(order=14)
def pycls_naming(ctx: ExplainContext) -> List[Explanation]:
    unexpected = ctx.unexpected
    pycls = [k for k in unexpected if _PYCLS_KEY.match(k)]
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
    mapped = _mapped(rules, pycls, set(ctx.missing))
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
