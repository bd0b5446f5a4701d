"""Tables and the bar chart of the load benchmark, from its JSON result.

Used by ``bench_load.py`` at the end of a run. Run on its own to print the Markdown
tables of an earlier result (as pasted into ``benchmarks/README.md``):

    python benchmarks/load_report.py benchmarks/results/load_cpu.json
"""

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

from tabulate import tabulate

__all__ = [
    "median_table",
    "plot",
    "references_table",
    "sequential_read_table",
    "targets_table",
    "text_report",
]

MB = 1e6
_CLASS_NAME = {"stock": "DetectionCheckpointer", "ours": "EfficientDetectionCheckpointer"}
_COLORS = {"stock": "#9e9e9e", "ours": "#1f77b4"}


def _gpu(result: Dict[str, Any]) -> bool:
    return str(result.get("device", "cpu")).startswith("cuda")


def median_table(result: Dict[str, Any], fmt: str = "simple") -> str:
    """Medians per case, cache state and class, formatted by ``tabulate``."""
    gpu = _gpu(result)
    headers = [
        "case",
        "cache",
        "class",
        "n",
        "time s",
        "min-max s",
        "load s",
        "touch s",
        "CPU s",
        "peak RSS +MB",
        "peak anon +MB",
        "anon after +MB",
        "transient MB",
        "peak anon % model" if gpu else "transient % file",
    ]
    headers.append("GPU peak +MB" if gpu else "x memcpy")
    rows = []
    for r in result["summary"]:
        pct = r["peak_anon_pct_model"] if gpu else r["transient_pct_file"]
        if gpu:
            extra = [f"{r['gpu_peak_growth'] / MB:.0f}" if "gpu_peak_growth" in r else ""]
        else:
            extra = [f"{r['time_over_memcpy']:.1f}" if "time_over_memcpy" in r else ""]
        rows.append(
            [
                r["case"],
                r["cache"],
                r["class"],
                r["repeats"],
                f"{r['time_s']:.3f}",
                f"{r['time_min_s']:.3f}-{r['time_max_s']:.3f}",
                f"{r['load_s']:.3f}",
                f"{r['touch_s']:.3f}",
                f"{r['cpu_s']:.3f}",
                f"{r['peak_rss_growth'] / MB:.0f}",
                f"{r['peak_anon_growth'] / MB:.0f}",
                f"{r['anon_growth_after'] / MB:.0f}",
                f"{r['transient_anon'] / MB:.1f}",
                f"{pct:.1f}",
                *extra,
            ]
        )
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def references_table(result: Dict[str, Any], fmt: str = "simple") -> str:
    """The copy references: median time and bandwidth."""
    refs = result["references"]
    names = {
        "memcpy_params": ("memcpy, tensor by tensor", refs["model_state_bytes"]),
        "memcpy_params_1thread": ("memcpy, tensor by tensor, 1 thread", refs["model_state_bytes"]),
        "memcpy_flat": ("memcpy, one copy", refs["model_state_bytes"]),
        "read_file": ("read() whole file from page cache", refs["file_bytes"]),
        "h2d_pinned": ("host-to-device, pinned", refs["model_state_bytes"]),
        "h2d_pageable": ("host-to-device, pageable", refs["model_state_bytes"]),
    }
    rows = []
    for key, (label, nbytes) in names.items():
        t = refs.get(key + "_median_s")
        if t is not None:
            rows.append([label, f"{nbytes / MB:.0f}", f"{t * 1e3:.1f}", f"{nbytes / t / 1e9:.2f}"])
    return tabulate(
        rows, headers=["reference", "MB", "median ms", "GB/s"], tablefmt=fmt, disable_numparse=True
    )


def sequential_read_table(result: Dict[str, Any], fmt: str = "simple") -> str:
    """The cold sequential reads: the disk's floor for the bytes each case needs."""
    labels = {"file": "the whole file (resume)", "model": "the model's bytes (weights only)"}
    rows = []
    by_state = result.get("sequential_read", {})
    if by_state and "file" in by_state:  # a result written before the cold states were two
        by_state = {"evicted": by_state}
    reads = [(c, what, r) for c, per in by_state.items() for what, r in per.items()]
    for cache, what, r in reads:
        for method in ("buffered", "direct"):
            m = r.get(method)
            if m is None:
                continue
            rows.append(
                [
                    f"{labels.get(what, what)}, {cache}",
                    "O_DIRECT" if method == "direct" else "buffered",
                    r["repeats"],
                    f"{r['bytes'] / MB:.0f}",
                    f"{m['time_s'] * 1e3:.0f}",
                    f"{m['time_min_s'] * 1e3:.0f}-{m['time_max_s'] * 1e3:.0f}",
                    f"{m['GBps']:.2f}",
                    f"{m['sys_s']:.2f}",
                    "floor" if r["method"] == method else "",
                ]
            )
    headers = ["cold sequential read of", "how", "n", "MB", "median ms", "min-max ms", "GB/s"]
    return tabulate(
        rows,
        headers=headers + ["sys s", ""],
        tablefmt=fmt,
        disable_numparse=True,
    )


def targets_table(result: Dict[str, Any], fmt: str = "simple") -> str:
    """Each target with its measured value, limit, stock's value and PASS/FAIL."""
    rows = []
    for t in result["targets"]:
        show = (lambda v: f"{100 * v:.1f}%") if t.get("percent") else (lambda v: f"{v:.3f}")
        stock = t.get("stock_value")
        rows.append(
            [
                t["target"],
                show(t["value"]),
                "<= " + show(t["limit"]),
                "" if stock is None else show(stock),
                "PASS" if t["pass"] else "FAIL",
            ]
        )
    return tabulate(
        rows,
        headers=["target", "ours", "limit", "stock", "result"],
        tablefmt=fmt,
        disable_numparse=True,
    )


def text_report(result: Dict[str, Any], fmt: str = "simple") -> str:
    """The whole report: context, medians, references, ratios, targets."""
    m = result["machine"]
    ck = result["checkpoint"]
    ev = result["eviction_check"]
    lines = [
        f"{result['benchmark']}",
        f"model: {result['model']}; device: {result['device']}",
        f"machine: {m['cpu_model']}, {m['cpu_cores']} cores, torch {m['torch']}, "
        f"detectron2 {m.get('detectron2')}",
        f"checkpoint: {ck['file_bytes'] / MB:.1f} MB (model {ck['model_state_bytes'] / MB:.1f} MB, "
        f"optimizer state {ck['optimizer_state_bytes'] / MB:.1f} MB)",
        "disk reads capped at {} MB/s".format(result["throttle_read_MBps"])
        if result.get("throttle_read_MBps")
        else "disk: as it is (no read cap)",
        "eviction: {} (residency after evict {})".format(
            "works" if ev["works"] else "DOES NOT WORK",
            "n/a"
            if ev["residency_after_evict"] is None
            else f"{100 * ev['residency_after_evict']:.0f}%",
        ),
        "",
        "Medians (time = load + touch of optimizer state; memory growth over the state "
        "before the load):",
        median_table(result, fmt),
        "",
        references_table(result, fmt),
        "",
        sequential_read_table(result, fmt) if result.get("sequential_read") else "",
        "",
        tabulate(
            [[k, f"{v:.3f}"] for k, v in result["ratios"].items()],
            headers=["ratio", "value"],
            tablefmt=fmt,
            disable_numparse=True,
        ),
        "",
        targets_table(result, fmt),
        "",
        "ALL TARGETS PASS" if result["all_pass"] else "SOME TARGETS FAIL",
    ]
    return "\n".join(lines)


def _bar_groups(result: Dict[str, Any]) -> List[str]:
    seen = []
    for r in result["summary"]:
        g = f"{r['case']}\n{r['cache']}"
        if g not in seen:
            seen.append(g)
    return seen


def plot(result: Dict[str, Any], path: str) -> None:
    """Grouped bars, stock vs ours: time per case and cache state, then host memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = _gpu(result)
    groups = _bar_groups(result)
    by = {(f"{r['case']}\n{r['cache']}", r["class"]): r for r in result["summary"]}
    raw = {}
    for run in result["runs"]:
        raw.setdefault((f"{run['case']}\n{run['cache']}", run["class"]), []).append(run)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 5.4))
    width = 0.38
    x = list(range(len(groups)))
    for i, klass in enumerate(("stock", "ours")):
        xs = [xi + (i - 0.5) * width for xi in x]
        rows = [by.get((g, klass)) for g in groups]
        times = [r["time_s"] if r else 0 for r in rows]
        ax_t.bar(xs, times, width, color=_COLORS[klass], label=_CLASS_NAME[klass])
        for xv, g in zip(xs, groups):
            pts = [run["time_s"] for run in raw.get((g, klass), [])]
            ax_t.scatter([xv] * len(pts), pts, s=8, color="black", zorder=3)
        for xv, t in zip(xs, times):
            ax_t.annotate(
                f"{t:.3f}",
                (xv, 0),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                color="white",
                fontweight="bold",
            )
        kept = [max(r["anon_growth_after"], 0) / MB if r else 0 for r in rows]
        if gpu:
            top = [max(r["peak_anon_growth"] / MB - k, 0) if r else 0 for r, k in zip(rows, kept)]
        else:
            top = [max(r["transient_anon"], 0) / MB if r else 0 for r in rows]
        ax_m.bar(xs, kept, width, color=_COLORS[klass], alpha=0.35, hatch="//", edgecolor="white")
        ax_m.bar(xs, top, width, bottom=kept, color=_COLORS[klass], label=_CLASS_NAME[klass])
        for xv, k, v in zip(xs, kept, top):
            label = k + v if gpu else v  # GPU: the whole peak is the figure of merit
            ax_m.annotate(f"{label:.0f}", (xv, k + v), ha="center", va="bottom", fontsize=8)
    for xi, g in zip(x, groups):
        if (g, "ours") in by and (g, "stock") in by:
            ratio = by[(g, "ours")]["time_s"] / by[(g, "stock")]["time_s"]
            top = max(by[(g, "ours")]["time_max_s"], by[(g, "stock")]["time_max_s"])
            ax_t.annotate(
                f"x{ratio:.2f}", (xi, top * 1.08), ha="center", fontsize=9, fontweight="bold"
            )
    refs = result["references"]
    ref_key = "h2d_pageable_median_s" if gpu else None
    ref_t = refs.get(ref_key) if ref_key else result.get("memcpy_reference_s")
    if ref_t:
        label = "pageable H2D of the model" if gpu else "memcpy of the model's bytes"
        ax_t.axhline(ref_t, color="green", ls=":", lw=1, label=f"{label} ({ref_t * 1e3:.0f} ms)")
    ax_t.set_xticks(x)
    ax_t.set_xticklabels(groups)
    ax_t.set_ylabel("seconds (median; dots: repeats)")
    ax_t.set_title("Load time, fresh process each repeat")
    ymax = max([r["time_max_s"] for r in result["summary"]] + [0.1])
    ax_t.set_ylim(0, ymax * 1.22)
    ax_t.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ck = result["checkpoint"]
    if gpu:
        limit = 0.05 * ck["model_state_bytes"] / MB
        ax_m.set_title("Host anon growth (peak labelled): hatched after, solid transient")
        limit_label = f"5% of the model ({limit:.0f} MB)"
    else:
        limit = 0.05 * ck["file_bytes"] / MB
        ax_m.set_title("Anon memory: solid transient (peak - after), hatched after")
        limit_label = f"5% of the file ({limit:.0f} MB)"
    ax_m.axhline(limit, color="red", ls="--", lw=1, label=limit_label)
    ax_m.set_xticks(x)
    ax_m.set_xticklabels(groups)
    ax_m.set_ylabel("MB growth over the state before the load (median)")
    ymax_m = max([r["peak_anon_growth"] / MB for r in result["summary"]] + [limit])
    ax_m.set_ylim(0, ymax_m * 1.15)
    ax_m.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    m = result["machine"]
    fig.suptitle(
        f"Faster R-CNN R50-FPN training checkpoint, {ck['file_bytes'] / MB:.0f} MB, "
        f"device {result['device']}; {m['cpu_model']}, {m['cpu_cores']} cores, "
        f"torch {m['torch']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the Markdown tables of a saved result."""
    import json

    p = argparse.ArgumentParser(description="Markdown tables of a load benchmark result.")
    p.add_argument("json_file")
    p.add_argument("--png", default=None, help="also redraw the chart to this file")
    args = p.parse_args(argv)
    with open(args.json_file) as f:
        result = json.load(f)
    print(median_table(result, "github"))
    print()
    print(references_table(result, "github"))
    print()
    if result.get("sequential_read"):
        print(sequential_read_table(result, "github"))
        print()
    print(targets_table(result, "github"))
    if args.png:
        plot(result, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
