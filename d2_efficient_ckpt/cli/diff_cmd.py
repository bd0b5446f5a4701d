"""``diff``: a checkpoint against the model a config builds, or two checkpoints."""

import math
from typing import Any, Dict, List, Optional

from tabulate import tabulate

from ..checkpoint.keys.grouping import group_keys
from ..checkpoint.report.compare import diff_state_dicts
from ..checkpoint.report.policy import PolicyOutcome, policy_message
from ..errors import print_error
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    add_parser,
    emit,
    file_size,
    fmt_bytes,
    local_file,
    model_state,
    open_lazy,
    show_progress,
)
from .model_setup import build_model_from_config, dataset_classes_hint

EXAMPLES = """\
  # the load report against the model of a config (exit 1 when ON_MISMATCH error is broken)
  python -m d2_efficient_ckpt diff model_final_280758.pkl \\
      --config-file configs/faster_rcnn_R50_FPN_finetune.yaml MODEL.ROI_HEADS.NUM_CLASSES 3
  # two checkpoints: key/shape differences and how far each module's weights moved
  python -m d2_efficient_ckpt diff output/model_0000999.pth output/model_final.pth
  python -m d2_efficient_ckpt diff a.pth b.pth --depth 4 --json
"""


def register(sub, common) -> None:
    p = add_parser(
        sub,
        "diff",
        "compare a checkpoint with a config's model, or two checkpoints",
        "diff FILE --config-file CFG [KEY VALUE ...]: build the config's model (on the CPU, "
        "no training) and show the load report: loaded, missing, unexpected and mismatched "
        "keys with explanations. Exits 1 when CHECKPOINT.LOAD.ON_MISMATCH error is broken.\n"
        "diff A B: compare two checkpoints: keys, shapes, dtypes, and per module the relative "
        "change ||A-B|| / ||A|| of its weights, so that trained and frozen layers stand out.",
        EXAMPLES,
        common,
    )
    p.add_argument("paths", nargs="*", help="FILE [KEY VALUE ...] with --config-file, or A B")
    p.add_argument("--config-file", default="", metavar="CFG", help="detectron2 yaml config")
    p.add_argument(
        "--depth",
        type=int,
        default=0,
        help="diff A B: sum modules to this many name components (default: full module names)",
    )
    p.set_defaults(func=run, accepts_extra=True)


def run(args) -> int:
    paths = list(args.paths) + list(getattr(args, "extra", []) or [])
    if args.config_file:
        return diff_model(args, paths[0] if paths else None, paths[1:])
    if len(paths) != 2:
        raise CliError(
            "diff needs two checkpoints (diff A B), or one checkpoint and a config "
            "(diff FILE --config-file CFG [KEY VALUE ...])."
        )
    return diff_files(args, paths[0], paths[1])


# ----------------------------------------------------------------- FILE --config-file CFG
def diff_model(args, path: Optional[str], opts: List[str]) -> int:
    from ..checkpoint.checkpointer import EfficientDetectionCheckpointer

    cfg, model = build_model_from_config(args.config_file, opts)
    path = path or cfg.MODEL.WEIGHTS
    if not path:
        raise CliError("no checkpoint to compare: pass FILE or set MODEL.WEIGHTS in the config.")
    base, _, query = path.partition("?")
    local = local_file(base)
    checkpointer = EfficientDetectionCheckpointer(model, cfg=cfg)
    # The checkpointer plans the load (no weights are read), explains the differences and
    # applies the config's policy; a broken policy is reported below, as a failed check.
    report = checkpointer.plan(local + ("?" + query if query else ""))
    outcome = PolicyOutcome.from_dict(report.policy)
    data = {
        "checkpoint": path,
        "config_file": args.config_file,
        "opts": opts,
        "dataset": dataset_classes_hint(cfg),
        "report": report.to_dict(),
        "policy": outcome.to_dict(),
    }
    emit(args, data, report.format_table(max_rows_per_status=50))
    if outcome.broken:
        print_error(policy_message(report, outcome))
        return EXIT_FAILED
    return EXIT_OK


# ----------------------------------------------------------------- A B
def _describe(path: str, opened, state, extra) -> str:
    it = extra.get("iteration")
    it = f", iteration {it}" if isinstance(it, int) else ""
    size = fmt_bytes(file_size(opened.path))
    return f"{path} ({opened.format}, {len(state)} keys, {size}{it})"


def diff_files(args, a: str, b: str) -> int:
    oa, ob = open_lazy(a), open_lazy(b)
    (sa, ea), (sb, eb) = model_state(oa), model_state(ob)
    d = diff_state_dicts(sa, sb, depth=args.depth, progress=show_progress(args))
    data: Dict[str, Any] = {"a": a, "b": b, **d.to_dict()}
    if args.json:
        emit(args, data, "")
        return EXIT_OK
    lines = [f"A: {_describe(a, oa, sa, ea)}", f"B: {_describe(b, ob, sb, eb)}"]
    both = len(sa) - len(d.only_a)
    lines.append(
        f"keys: {both} in both, {len(d.only_a)} only in A, {len(d.only_b)} only in B; "
        f"{len(d.shape)} shape and {len(d.dtype)} dtype differences."
    )
    status = {k: "same" for k in sa}
    status.update({k: "only in B" for k in d.only_b})
    status.update({k: "only in A" for k in d.only_a})
    status.update({k: "dtype differs" for k, _, _ in d.dtype})
    status.update({k: "shape differs" for k, _, _ in d.shape})
    shapes = {k: f"{tuple(x)} -> {tuple(y)}" for k, x, y in d.shape}
    dtypes = {k: f"{x} -> {y}" for k, x, y in d.dtype}
    first = {**dtypes, **shapes}
    rows = [
        [
            g.status,
            g.pattern,
            sum(status[k] == g.status for k in g.keys),
            next((first[k] for k in g.keys if k in first), ""),
        ]
        # Integer tensors that an fp16 copy keeps as they are do not split its dtype rows.
        for g in group_keys(status, kin={"dtype differs": "same"})
        if g.status != "same"
    ]
    if rows:
        lines += ["", tabulate(rows, headers=["difference", "keys", "count", "A -> B (first key)"])]
    lines += ["", _module_table(d)]
    emit(args, data, "\n".join(lines))
    return EXIT_OK


def _module_table(d) -> str:
    if not d.modules:
        return "No floating-point tensors in common to compare."
    frozen = sum(1 for m in d.modules if m.frozen)
    by_name = {m.module: m for m in d.modules}
    status = {m.module: "frozen" if m.frozen else "changed" for m in d.modules}
    rows = []
    for g in group_keys(status):
        if g.status == "frozen":
            rows.append([g.pattern, f"{sum(by_name[k].params for k in g.keys):,}", "0", "frozen"])
            continue
        for name in g.keys:
            m = by_name[name]
            rows.append([name, f"{m.params:,}", f"{m.rel_change:.3g}", _bar(m.rel_change)])
    title = (
        f"Relative change ||A-B|| / ||A|| per module: {len(d.modules) - frozen} changed, "
        f"{frozen} frozen (bit-identical)."
    )
    headers = ["module", "params", "change", "log10 scale: 1e-6 ... 1e+1"]
    return title + "\n" + tabulate(rows, headers=headers)


def _bar(rel: float) -> str:
    if rel <= 0:
        return ""
    if math.isinf(rel):
        return "inf (A is zero)"
    return "#" * min(24, max(1, round(3 * (math.log10(rel) + 6))))
