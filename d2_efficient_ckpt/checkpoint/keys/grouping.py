"""Collapse lists of state-dict keys to module prefixes.

Every key has a status (loaded, missing, ...). A module whose keys all share one status is
shown as one group, e.g. ``backbone.bottom_up.res4.{6..22}.*`` for the 170 keys of the blocks
that an R-101 has and an R-50 lacks, so that a removed stage of 100 keys is one line.

Some statuses qualify another: "loaded, dtype cast" is "loaded" with a cast. Passed as
``kin``, such a status takes in the plain loaded keys of a module where it has at least as
many keys, so that the integer BatchNorm counters an fp16 file leaves uncast do not split its
casts into a row per layer, while one cast key among many loaded ones keeps its own row.
"""

import os
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence

__all__ = ["KeyGroup", "group_keys", "coarsen_patterns"]


@dataclass
class KeyGroup:
    """Keys of one status under one prefix.

    Attributes:
        status: the status every key of the group has.
        pattern: the prefix, as ``a.b.*``, ``a.{0..5}.*``, ``a.fpn_*`` or a full key.
        keys: the keys, in their original order.
    """

    status: str
    pattern: str
    keys: List[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.keys)


class _Node:
    __slots__ = ("children", "status", "statuses", "keys", "counts")

    def __init__(self):
        self.children: Dict[str, "_Node"] = {}
        self.status: Optional[str] = None  # set when a key ends at this node
        self.statuses = set()
        self.counts: Dict[str, int] = {}
        self.keys: List[str] = []


# Real keys have fewer than 15 dotted parts; past this many, the rest of a key is one part,
# so that a key of a million dots costs one node, not a million.
MAX_PARTS = 32


def _build(statuses: Mapping[str, str]) -> _Node:
    root = _Node()
    for key, status in statuses.items():
        node = root
        node.statuses.add(status)
        node.keys.append(key)
        node.counts[status] = node.counts.get(status, 0) + 1
        for part in key.split(".", MAX_PARTS - 1):
            node = node.children.setdefault(part, _Node())
            node.statuses.add(status)
            node.keys.append(key)
            node.counts[status] = node.counts.get(status, 0) + 1
        node.status = status
    return root


def group_keys(
    statuses: Mapping[str, str],
    *,
    braces: bool = True,
    kin: Optional[Mapping[str, str]] = None,
) -> List[KeyGroup]:
    """Group keys under the shortest module prefixes whose keys all have the same status.

    Sibling modules with the same status are merged into one group: numbered blocks as
    ``{6..22}``, names with a common start as ``fpn_*`` (when no other sibling starts so),
    others as ``{a,b}``.

    Args:
        statuses: key -> status, for every key that should be considered (a prefix is only
            collapsed when no key of another status lies under it).
        braces: merge siblings into ``{...}`` groups; without it each such sibling is its own
            group, so that every pattern is a valid ``fnmatch`` glob.
        kin: status -> the base status it qualifies, e.g. ``{"cast": "loaded"}``: under a
            prefix where it has at least as many keys as the base status, the base keys join
            its group, which takes the qualifying status. Two different qualifying statuses
            never share a group.

    Returns:
        The groups, in the order of the keys.
    """
    if not statuses:
        return []
    root = _build(statuses)
    kin = dict(kin or {})
    top = _effective(root, kin)
    if len(top) == 1:
        return [KeyGroup(next(iter(top)), "*", list(root.keys))]
    out: List[KeyGroup] = []
    _walk(root, [], out, braces, kin)
    return out


def _effective(node: _Node, kin: Mapping[str, str]) -> FrozenSet[str]:
    """The statuses that decide whether a subtree is one group: a qualifying status absorbs
    its base status where it has at least as many keys (130 casts and 20 loaded keys count as
    ``{"cast"}``)."""
    counts = node.counts
    absorbed = {kin[s] for s in counts if s in kin and counts[s] >= counts.get(kin[s], 0)}
    return frozenset(s for s in node.statuses if s not in absorbed)


def _walk(
    node: _Node, path: List[str], out: List[KeyGroup], braces: bool, kin: Mapping[str, str]
) -> None:
    if node.status is not None:  # a key that is also the prefix of other keys
        key = ".".join(path)
        out.append(KeyGroup(node.status, key, [key]))
    names = list(node.children)
    effective = {n: _effective(node.children[n], kin) for n in names}
    done = set()
    for name in names:
        child = node.children[name]
        if len(effective[name]) > 1:
            _walk(child, path + [name], out, braces, kin)
            continue
        status = next(iter(effective[name]))
        if status in done:
            continue
        done.add(status)
        same = [n for n in names if effective[n] == {status}]
        out.extend(_merge(node, path, same, status, braces))


def _pattern(node: _Node, base: str, name: str) -> str:
    return base + name if not node.children[name].children else base + name + ".*"


def _merge(
    node: _Node, path: List[str], names: List[str], status: str, braces: bool
) -> List[KeyGroup]:
    base = ".".join(path) + "." if path else ""
    keys = [k for n in names for k in node.children[n].keys]
    if len(names) == 1:
        return [KeyGroup(status, _pattern(node, base, names[0]), keys)]
    star = _common_start(list(node.children), names)
    if star:
        return [KeyGroup(status, base + star + "*", keys)]
    if not braces:
        return [
            KeyGroup(status, _pattern(node, base, n), list(node.children[n].keys)) for n in names
        ]
    tail = "" if all(not node.children[n].children for n in names) else ".*"
    return [KeyGroup(status, base + "{" + _brace(names) + "}" + tail, keys)]


def _common_start(siblings: Sequence[str], names: Sequence[str]) -> str:
    start = os.path.commonprefix(list(names))
    if len(start) < 2 or (start.isascii() and start.isdigit()):
        return ""
    chosen = set(names)
    if any(s.startswith(start) and s not in chosen for s in siblings):
        return ""
    return start


def _is_index(name: str) -> bool:
    # ASCII digits only, and few of them: str.isdigit() admits "²", which int() refuses, and
    # int() of thousands of digits raises (and costs quadratic time) where the limit is set.
    return 0 < len(name) <= 18 and name.isascii() and name.isdigit()


def _brace(names: Sequence[str]) -> str:
    if not all(_is_index(n) for n in names):
        return ",".join(names)
    nums = sorted(int(n) for n in names)
    runs, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        runs.append(
            f"{start}..{prev}" if prev - start >= 2 else ",".join(map(str, range(start, prev + 1)))
        )
        if n is not None:
            start = prev = n
    return ",".join(runs)


def coarsen_patterns(patterns: Sequence[str], limit: int = 6) -> List[str]:
    """Replace the deepest patterns by their parent module until at most ``limit`` remain.

    ``["a.res4.6.*", ..., "a.res4.22.*", "b.c.*"]`` becomes ``["a.res4.*", "b.c.*"]``.
    """
    pats = list(dict.fromkeys(patterns))
    while len(pats) > limit:
        depths = [_depth(p) for p in pats]
        deepest = max(depths)
        if deepest == 0:
            break
        pats = list(dict.fromkeys(_parent(p) if d == deepest else p for p, d in zip(pats, depths)))
    return pats


def _depth(pattern: str) -> int:
    return pattern.rstrip("*").rstrip(".").count(".")


def _parent(pattern: str) -> str:
    stem = pattern.rstrip("*").rstrip(".")
    return stem.rsplit(".", 1)[0] + ".*" if "." in stem else "*"
