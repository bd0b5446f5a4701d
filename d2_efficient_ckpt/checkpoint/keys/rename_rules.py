"""Rename rules for checkpoints named by other code: torchvision, pycls, Caffe2.

The rules here are CHECKPOINT.LOAD.RENAME pairs; ``explain/name_schemes.py`` suggests them in
load reports, and :func:`torchvision_resnet_to_detectron2` applies the torchvision rules once,
for ``convert``.
"""

import json
import re
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .selection import KeySelector

__all__ = [
    "torchvision_rename_rules",
    "torchvision_resnet_to_detectron2",
    "torchvision_source_prefix",
    "TORCHVISION_INPUT_CONFIG",
    "pycls_resnet_rules",
    "rules_text",
    "mapped_keys",
    "TV_KEY",
    "C2_KEY",
    "PYCLS_KEY",
]

_BN = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
TV_KEY = re.compile(
    rf"(?:conv1\.weight|bn1\.{_BN}|layer[1-4]\.\d+\.(?:conv\d\.weight|bn\d\.{_BN}|"
    rf"downsample\.0\.weight|downsample\.1\.{_BN})|fc\.(?:weight|bias))"
)
_TV_PARTS = 5  # layer1.0.downsample.0.weight
C2_KEY = re.compile(r"^[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_(?:w|b|s|rm|riv)$")
PYCLS_KEY = re.compile(r"^(?:stem\.(?:conv|bn)\.|s\d+\.b\d+\.|head\.fc\.)")
# What a torchvision ResNet expects of its input and stride placement, in config terms.
TORCHVISION_INPUT_CONFIG = {
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}


def rules_text(rules: Sequence[Sequence[str]]) -> str:
    return json.dumps([list(r) for r in rules])


def mapped_keys(rules, keys: Sequence[str], targets: set) -> List[Tuple[str, str]]:
    """``(key, renamed key)`` for the keys that ``rules`` rename onto one of ``targets``."""
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
    found: Counter = Counter()
    for key in keys:
        parts = key.split(".")
        # A torchvision name has at most 5 parts: only the last few suffixes can be one (all
        # of them would be quadratic in a key's length).
        for i in range(max(0, len(parts) - _TV_PARTS), len(parts)):
            if TV_KEY.fullmatch(".".join(parts[i:])):
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
    selector = KeySelector(rename=[(r[0], r[1]) for r in torchvision_rename_rules(prefix, source)])
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


# ------------------------------------------------------------------------- Caffe2
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
