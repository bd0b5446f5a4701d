"""Explain the differences between a checkpoint and a model, and suggest fixes.

Each *recogniser* looks at a :class:`LoadReport` (names and shapes) and returns
:class:`Explanation` objects for the architecture changes it recognises: a new number of
classes, class-agnostic box regression, other anchors, a RetinaNet head of another depth, a
deeper backbone, another width, a wrapper prefix, torchvision/pycls/Caffe2 naming.
Recognisers run in order and each sees only the keys that earlier ones left unexplained.
New ones are added with :func:`recogniser`.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from detectron2.data import MetadataCatalog

from ..keys.grouping import group_keys
from ..report.load_report import LoadReport

__all__ = [
    "Explanation",
    "ExplainContext",
    "dataset_classes",
    "explain",
    "recogniser",
    "RECOGNISERS",
]

Shape = Tuple[int, ...]
SEVERITIES = ("error", "warning", "info")
_SEVERITY_LABEL = {"error": "likely a bug", "warning": "check", "info": "expected"}


@dataclass
class Explanation:
    """One recognised change.

    Attributes:
        kind: a stable id, e.g. ``num_classes``, ``anchors``, ``backbone_depth``.
        title: one line, e.g. ``Number of classes changed: 80 -> 3 classes``.
        detail: what was seen in the shapes and names, and how it relates to the config.
        fix: what to do, with config keys to set.
        severity: ``error`` (likely a bug), ``warning`` (check it) or ``info`` (expected).
        keys: glob-like patterns of the keys explained.
        config: suggested config values, e.g. ``{"CHECKPOINT.LOAD.RENAME": [[...]]}``.
        covered: the keys explained (not serialised; patterns are in ``keys``).
    """

    kind: str
    title: str
    detail: str = ""
    fix: str = ""
    severity: str = "warning"
    keys: List[str] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)
    covered: List[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
            "severity": self.severity,
            "keys": list(self.keys),
            "config": dict(self.config),
        }

    def format(self, indent: str = "") -> str:
        """Title, detail and fix on separate lines."""
        label = _SEVERITY_LABEL.get(self.severity, self.severity)
        lines = [f"{indent}* [{label}] {self.title}"]
        if self.keys:
            lines.append(f"{indent}    keys: {', '.join(self.keys)}")
        if self.detail:
            lines.append(f"{indent}    {self.detail}")
        if self.fix:
            lines.append(f"{indent}    fix: {self.fix}")
        return "\n".join(lines)


class ExplainContext:
    """What recognisers may look at.

    Attributes:
        report: the load report.
        model_shapes: model key -> shape (empty when not known).
        ckpt_keys: the checkpoint's own keys before renaming, when known.
        cfg: the config the model was built from, or ``None``.
        claimed: keys already explained by an earlier recogniser.
    """

    def __init__(self, report: LoadReport, model_shapes, ckpt_keys, cfg):
        self.report = report
        self.model_shapes: Dict[str, Shape] = dict(model_shapes or {})
        self.ckpt_keys: Optional[List[str]] = list(ckpt_keys) if ckpt_keys is not None else None
        self.cfg = cfg
        self.claimed: Set[str] = set()

    # Keys still to explain.
    @property
    def shape_mismatch(self) -> Dict[str, Tuple[Shape, Shape]]:
        return {
            k: (tuple(a), tuple(b))
            for k, a, b in self.report.shape_mismatch
            if k not in self.claimed
        }

    @property
    def missing(self) -> List[str]:
        return [k for k in self.report.missing if k not in self.claimed]

    @property
    def unexpected(self) -> List[str]:
        return [k for k in self.report.unexpected if k not in self.claimed]

    def model_keys(self) -> List[str]:
        """Keys of the model (from its shapes when known, else from the report)."""
        if self.model_shapes:
            return list(self.model_shapes)
        r = self.report
        return (
            r.loaded
            + r.missing
            + [k for k, _, _ in r.shape_mismatch]
            + list(r.skipped)
            + list(r.tied)
            + list(r.filled)
        )

    def checkpoint_keys(self) -> List[str]:
        """Checkpoint keys after renaming, as far as the report shows them."""
        r = self.report
        return r.loaded + r.unexpected + [k for k, _, _ in r.shape_mismatch] + list(r.skipped)

    def model_shape(self, key: str) -> Optional[Shape]:
        if key in self.model_shapes:
            return tuple(self.model_shapes[key])
        for k, _, b in self.report.shape_mismatch:
            if k == key:
                return tuple(b)
        return None

    def cfg_get(self, dotted: str, default: Any = None) -> Any:
        node = self.cfg
        for part in dotted.split("."):
            if node is None or not hasattr(node, "get"):
                return default
            node = node.get(part)
        return default if node is None else node

    def dataset_classes(self) -> Tuple[Optional[str], Optional[List[str]]]:
        """``(name, thing_classes)`` of the config's dataset: see :func:`dataset_classes`."""
        return dataset_classes(self.cfg)


def dataset_classes(cfg: Any) -> Tuple[Optional[str], Optional[List[str]]]:
    """``(name, thing_classes)`` of the first training (else test) dataset of ``cfg``.

    The one lookup of "which classes does the config's data have", for explanations and the
    checkpoint tool alike. ``name`` is ``None`` when the config names no dataset;
    ``thing_classes`` is ``None`` when that dataset is not registered or has no classes.
    """
    datasets = cfg.get("DATASETS") if hasattr(cfg, "get") else None
    if not hasattr(datasets, "get"):
        return None, None
    names = list(datasets.get("TRAIN") or ()) or list(datasets.get("TEST") or ())
    if not names:
        return None, None
    name = names[0]
    if name not in MetadataCatalog.list():
        return name, None
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    return name, (list(classes) if classes is not None else None)


Recogniser = Callable[[ExplainContext], Iterable[Explanation]]
# (order, recogniser); lower orders run first and claim keys first.
RECOGNISERS: List[Tuple[int, Recogniser]] = []


def recogniser(order: int = 100) -> Callable[[Recogniser], Recogniser]:
    """Register a recogniser. Built-in ones use orders 10 (file naming) to 90 (BatchNorm)."""

    def register(fn: Recogniser) -> Recogniser:
        RECOGNISERS.append((order, fn))
        return fn

    return register


def explain(
    report: LoadReport,
    *,
    model_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    ckpt_keys: Optional[Iterable[str]] = None,
    cfg=None,
) -> List[Explanation]:
    """Recognise the architecture changes behind a report's differences.

    Args:
        report: the report of a load.
        model_shapes: model key -> shape; makes some explanations more precise.
        ckpt_keys: the checkpoint's keys as stored (before ``module.`` stripping and RENAME).
        cfg: the model's config: lets explanations compare against config values and the
            registered dataset.

    Returns:
        Explanations, most severe first. Each one's ``keys`` are grouped patterns.
    """
    ctx = ExplainContext(report, model_shapes, ckpt_keys, cfg)
    out: List[Explanation] = []
    for _, fn in sorted(RECOGNISERS, key=lambda item: item[0]):
        for exp in fn(ctx) or ():
            exp.covered = list(dict.fromkeys(exp.covered))
            if not exp.keys and exp.covered:
                exp.keys = _patterns(report, exp.covered)
            ctx.claimed.update(exp.covered)
            out.append(exp)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(out, key=lambda e: order.get(e.severity, len(order)))


def _patterns(report: LoadReport, covered: Sequence[str]) -> List[str]:
    status = {k: "other" for k in report.key_status()}
    status.update({k: "this" for k in covered})
    return [g.pattern for g in group_keys(status) if g.status == "this"]
