"""Checkpoint load benchmark: ``EfficientDetectionCheckpointer`` against the stock class.

Loads a real Faster R-CNN R50-FPN training checkpoint (model weights plus SGD momentum for
every trainable parameter, about 333 MB) with detectron2's ``DetectionCheckpointer`` and
with ``d2_efficient_ckpt.EfficientDetectionCheckpointer``, side by side in one run. Every
repeat is a fresh process; the model (and optimizer) are built before the clock starts.

Cases:
    model   ``load(path, checkpointables=[])``: weights only, as for fine-tuning.
    resume  ``load(path)`` with ``optimizer=`` registered, then every optimizer state
            tensor written once (``mul_(1)``, as the first training step would).

Each case runs with the file in the page cache (warm) and with it evicted
(``POSIX_FADV_DONTNEED`` before the process starts). Results go to
``<out-dir>/load_cpu.json`` and ``load_cpu.png`` (``load_cuda.*`` with ``--device cuda:N``);
``benchmarks/README.md`` explains every figure.

Run from the repository root (about 3 minutes on a 2-core machine):

    python benchmarks/bench_load.py

Other forms:

    python benchmarks/bench_load.py --quick                 # 2 warm + 1 evicted repeat
    python benchmarks/bench_load.py --device cuda:0         # model on a GPU
    python benchmarks/bench_load.py --ckpt benchmarks/results/r50_fpn_train.pth  # keep/reuse
    python benchmarks/bench_load.py --threads 0             # torch's default thread count
    python benchmarks/bench_load.py --profile resume        # cProfile of one load per class
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import load_report
import procmem
from load_worker import CASES, CLASSES, RESULT_MARKER, make_cfg, make_checkpoint, worker_main
from throttle import ReadThrottle, ThrottleError

from d2_efficient_ckpt.checkpoint.storage.page_cache import (
    evict_from_page_cache,
    page_cache_residency,
)
from d2_efficient_ckpt.errors import EXIT_BAD_INPUT, print_error

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
# "evicted": evicted before the worker starts, loaded --settle-s seconds later (a resumed job
# finds its file long out of the page cache); "evicted_now": evicted by the worker the
# instant before the load (an independent harness measures this way; see README: Cold).
CACHE_STATES = ("warm", "evicted", "evicted_now")
COLD_STATES = CACHE_STATES[1:]
TRANSIENT_LIMIT = 0.05  # of the checkpoint file (CPU) or of the model's bytes (CUDA)
# Ours against the stock class, per (case, cache state), on the CPU.
TARGETS_VS_STOCK = {
    ("model", "warm"): 0.25,
    ("resume", "warm"): 0.45,
    ("resume", "evicted"): 0.6,
    ("resume", "evicted_now"): 0.6,
}
# Ours against the disk's sequential read of the bytes the case needs, cold.
TARGET_VS_SEQUENTIAL_READ = 1.25
MEMCPY_FACTOR = 4.0  # model, warm: ours against one memcpy of the model's bytes
# With the model on a GPU: a warm weights-only load against the pinned host-to-device copy
# of the model's bytes, and a resume against the stock class.
TARGET_VS_PINNED_H2D = 1.5
TARGET_GPU_RESUME_VS_STOCK = 0.5


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options of the benchmark driver."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda:N' (model's device)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per warm case (5)")
    p.add_argument("--evicted-repeats", type=int, default=None, help="repeats per evicted case (5)")
    p.add_argument("--quick", action="store_true", help="2 warm and 1 evicted repeat")
    p.add_argument(
        "--states",
        nargs="+",
        choices=CACHE_STATES,
        default=list(CACHE_STATES),
        help="cache states to measure (default: all)",
    )
    p.add_argument(
        "--ckpt",
        default=None,
        help="checkpoint to use; generated there if missing (default: a temporary file)",
    )
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--no-verify", action="store_true", help="skip the after-load check")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in the workers, same for both classes (0: torch's "
        "default). 1 by default: a load is a chain of memory-bound copies, and on a busy "
        "machine every parallel region waits for a descheduled OpenMP thread",
    )
    p.add_argument(
        "--sample-ms",
        type=float,
        default=1.0,
        help="memory sampling interval in the workers, ms (0: only before and after)",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="model",
        choices=CASES,
        default=None,
        help="instead of the benchmark, profile one warm load of this case per class",
    )
    p.add_argument("--timeout", type=int, default=300, help="seconds per worker process")
    p.add_argument(
        "--settle-s",
        type=float,
        default=5.0,
        help="seconds between evicting the file and a cold load or read (see README: Cold)",
    )
    p.add_argument(
        "--throttle-mbps",
        type=float,
        default=0.0,
        help="cap the workers' disk reads at this many MB/s (a slow disk; needs root, see "
        "throttle.py); 0: the disk as it is",
    )
    return p.parse_args(argv)


# --------------------------------------------------------------------------- workers
def _worker_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_worker(
    args: List[str], timeout: int, throttle: Optional[ReadThrottle] = None
) -> Dict[str, Any]:
    """Run ``bench_load.py --worker ...`` in a fresh interpreter and return its result.

    Raises:
        RuntimeError: when the worker fails or prints no result; the message has the
            tail of its output.
    """
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_worker_env(),
        cwd=REPO_ROOT,
        preexec_fn=throttle.enter if throttle is not None else None,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    tail = (proc.stdout + proc.stderr)[-3000:]
    raise RuntimeError(f"worker {' '.join(args[:4])} failed (exit {proc.returncode}):\n{tail}")


def check_eviction(path: str) -> Dict[str, Any]:
    """Evict the file, then show that it left the cache: residency and a timed cold read.

    Reads the first 64 MiB once evicted and once cached; an eviction that works shows
    near-zero residency and (on most disks) a slower cold read.
    """
    n = min(64 << 20, os.path.getsize(path))
    procmem.warm_page_cache(path)
    before = page_cache_residency(path)
    evict_from_page_cache(path)
    after = page_cache_residency(path)
    cold = procmem.timed_read(path, n)
    warm = procmem.timed_read(path, n)
    procmem.warm_page_cache(path)
    if after is not None:
        works = after < 0.05
    else:
        works = cold > 1.5 * warm
    return {
        "residency_before": before,
        "residency_after_evict": after,
        "bytes_read": n,
        "cold_read_s": cold,
        "warm_read_s": warm,
        "cold_read_MBps": n / cold / 1e6,
        "warm_read_MBps": n / warm / 1e6,
        "works": works,
    }


def prepare_cache(path: str, state: str) -> Optional[float]:
    """Put the file in the wanted cache state; returns its page-cache residency (0..1).

    ``evicted_now`` starts warm: the worker's own eviction, the instant before its load,
    frees the pages (an eviction here would free them seconds earlier, while the worker
    starts, which is a settle of its own)."""
    if state in ("warm", "evicted_now"):
        procmem.warm_page_cache(path)
    else:
        evict_from_page_cache(path)
    return page_cache_residency(path)


# --------------------------------------------------------------------------- summary
def _med(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(
    runs: List[Dict[str, Any]], file_bytes: int, mem_ref_bytes: int
) -> List[Dict[str, Any]]:
    """Medians per case, cache state and class (and the worst transient over repeats)."""
    rows = []
    for case in CASES:
        for cache in CACHE_STATES:
            for klass in CLASSES:
                rs = [
                    r for r in runs if (r["case"], r["cache"], r["class"]) == (case, cache, klass)
                ]
                if not rs:
                    continue

                def col(key: str, rs=rs) -> List[float]:
                    return [r[key] for r in rs]

                row = {
                    "case": case,
                    "cache": cache,
                    "class": klass,
                    "repeats": len(rs),
                    "time_s": _med(col("time_s")),
                    "time_min_s": min(col("time_s")),
                    "time_max_s": max(col("time_s")),
                    "load_s": _med(col("load_s")),
                    "touch_s": _med(col("touch_s")),
                    "cpu_s": _med(col("cpu_s")),
                    "peak_rss_growth": _med(col("peak_rss_growth")),
                    "peak_anon_growth": _med(col("peak_anon_growth")),
                    "anon_growth_after": _med(col("anon_growth_after")),
                    "transient_anon": _med(col("transient_anon")),
                    "transient_anon_max": max(col("transient_anon")),
                    "peak_anon_growth_max": max(col("peak_anon_growth")),
                }
                if all("memcpy_s" in r for r in rs):
                    row["memcpy_s"] = _med(col("memcpy_s"))
                    row["time_over_memcpy"] = _med([r["time_s"] / r["memcpy_s"] for r in rs])
                if all("gpu_peak_growth" in r for r in rs):
                    row["gpu_peak_growth"] = _med(col("gpu_peak_growth"))
                row["transient_pct_file"] = 100.0 * row["transient_anon"] / file_bytes
                row["transient_max_pct_file"] = 100.0 * row["transient_anon_max"] / file_bytes
                row["peak_anon_pct_model"] = 100.0 * row["peak_anon_growth"] / mem_ref_bytes
                row["peak_anon_max_pct_model"] = 100.0 * row["peak_anon_growth_max"] / mem_ref_bytes
                rows.append(row)
    return rows


def _row(summary: List[Dict[str, Any]], case: str, cache: str, klass: str) -> Dict[str, Any]:
    for r in summary:
        if (r["case"], r["cache"], r["class"]) == (case, cache, klass):
            return r
    raise KeyError((case, cache, klass))


def summarize_sequential_reads(
    reads: List[Dict[str, Any]], cache: str = "evicted"
) -> Dict[str, Dict[str, Any]]:
    """Medians of the cold sequential reads of one cold state, per what was read (``file``
    or ``model``).

    Each read has a buffered pass and, where the file system allows it, an ``O_DIRECT``
    one. The floor of a case (``time_s``) is the faster of the two medians.
    """
    out = {}
    for what in ("file", "model"):
        rs = [r for r in reads if r["what"] == what and r.get("cache", "evicted") == cache]
        if not rs:
            continue
        row: Dict[str, Any] = {"repeats": len(rs), "bytes": rs[0]["bytes"]}
        passes = {"buffered": rs, "direct": [r["direct"] for r in rs if r.get("direct")]}
        for method, ps in passes.items():
            if not ps:
                continue
            times = [p["time_s"] for p in ps]
            row[method] = {
                "time_s": _med(times),
                "time_min_s": min(times),
                "time_max_s": max(times),
                "sys_s": _med([p["sys_s"] for p in ps]),
                "GBps": row["bytes"] / _med(times) / 1e9,
            }
        method = min((m for m in passes if m in row), key=lambda m: row[m]["time_s"])
        row.update(method=method, time_s=row[method]["time_s"], GBps=row[method]["GBps"])
        out[what] = row
    return out


def _target(name: str, value: float, limit: float, **extra: Any) -> Dict[str, Any]:
    return {"target": name, "value": value, "limit": limit, "pass": value <= limit, **extra}


def evaluate(
    summary: List[Dict[str, Any]],
    refs: Dict[str, Any],
    device: str,
    eviction_works: bool,
    opt_bytes: int,
    sequential: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Dict[str, Any]:
    """Ratios against the stock class and the physical floors, and the PASS/FAIL targets.

    Args:
        summary: rows from :func:`summarize`.
        refs: the references worker's result.
        device: the model's device.
        eviction_works: whether evicted rows really started from a cold cache.
        opt_bytes: bytes of optimizer state (moved in addition to the model on resume).
        sequential: per cold state, :func:`summarize_sequential_reads` of its reads.
    """
    ratios: Dict[str, float] = {}
    targets: List[Dict[str, Any]] = []
    gpu = device.startswith("cuda")
    sequential = sequential or {}
    model_bytes = refs["model_state_bytes"]
    memcpy = min(
        refs[k]
        for k in (
            "memcpy_params_median_s",
            "memcpy_flat_median_s",
            "memcpy_params_1thread_median_s",
        )
        if k in refs
    )
    for case in CASES:
        for cache in CACHE_STATES:
            try:
                ours, stock = (
                    _row(summary, case, cache, "ours"),
                    _row(summary, case, cache, "stock"),
                )
            except KeyError:
                continue
            ratio = ours["time_s"] / stock["time_s"]
            ratios[f"{case}/{cache}: time ours/stock"] = ratio
            ratios[f"{case}/{cache}: fastest repeat ours/stock"] = (
                ours["time_min_s"] / stock["time_min_s"]
            )
            ratios[f"{case}/{cache}: main-thread CPU ours/stock"] = ours["cpu_s"] / stock["cpu_s"]
            note = "" if cache == "warm" or eviction_works else " (eviction did not work)"
            if gpu:
                frac = ours["peak_anon_growth_max"] / model_bytes
                targets.append(
                    _target(
                        f"{case} host anon growth (worst repeat) / model, {cache}",
                        frac,
                        TRANSIENT_LIMIT,
                        percent=True,
                        stock_value=stock["peak_anon_growth_max"] / model_bytes,
                    )
                )
                moved = model_bytes + (opt_bytes if case == "resume" else 0)
                for kind in ("pinned", "pageable"):
                    h2d = refs[f"h2d_{kind}_median_s"] * moved / model_bytes
                    for klass, row in (("ours", ours), ("stock", stock)):
                        ratios[f"{case}/{cache}: {klass} time / {kind} H2D of its bytes"] = (
                            row["time_s"] / h2d
                        )
                if (case, cache) == ("model", "warm"):
                    h2d = refs["h2d_pinned_median_s"]
                    targets.append(
                        _target(
                            "model load (ours, warm) / pinned H2D of the model's bytes",
                            ours["time_s"] / h2d,
                            TARGET_VS_PINNED_H2D,
                            stock_value=stock["time_s"] / h2d,
                        )
                    )
                if case == "resume":
                    targets.append(
                        _target(
                            f"resume load time ours/stock, {cache}{note}",
                            ratio,
                            TARGET_GPU_RESUME_VS_STOCK,
                        )
                    )
                continue
            if (case, cache) in TARGETS_VS_STOCK:
                targets.append(
                    _target(
                        f"{case} load time ours/stock, {cache}{note}",
                        ratio,
                        TARGETS_VS_STOCK[(case, cache)],
                    )
                )
            pct = ours["transient_max_pct_file"]
            targets.append(
                _target(
                    f"{case} transient anon (worst repeat) / file, {cache}",
                    pct / 100.0,
                    TRANSIENT_LIMIT,
                    percent=True,
                    stock_value=stock["transient_max_pct_file"] / 100.0,
                )
            )
            for klass, row in (("ours", ours), ("stock", stock)):
                ratios[f"{case}/{cache}: {klass} time / memcpy (same process)"] = row.get(
                    "time_over_memcpy", row["time_s"] / memcpy
                )
            # The bytes a case needs: the model's tensors, or the whole file for a resume.
            floor = (sequential.get(cache) or {}).get("model" if case == "model" else "file")
            if cache in COLD_STATES and floor is not None:
                what = "the model's bytes" if case == "model" else "the file"
                for klass, row in (("ours", ours), ("stock", stock)):
                    ratios[f"{case}/{cache}: {klass} time / sequential read of {what}"] = (
                        row["time_s"] / floor["time_s"]
                    )
                targets.append(
                    _target(
                        f"{case} load (ours, {cache}) / sequential read of {what}, {cache}{note}",
                        ours["time_s"] / floor["time_s"],
                        TARGET_VS_SEQUENTIAL_READ,
                        stock_value=stock["time_s"] / floor["time_s"],
                    )
                )
    if not gpu:
        try:
            ours = _row(summary, "model", "warm", "ours")
        except KeyError:
            ours = None
        if ours is not None:
            factor = ours.get("time_over_memcpy", ours["time_s"] / memcpy)
            ratios["model/warm: ours time / memcpy (references worker)"] = ours["time_s"] / memcpy
            targets.append(
                _target(
                    "model load (ours, warm) / memcpy of the model's bytes",
                    factor,
                    MEMCPY_FACTOR,
                )
            )
    return {
        "ratios": ratios,
        "targets": targets,
        "all_pass": all(t["pass"] for t in targets),
        "memcpy_reference_s": memcpy,
    }


# --------------------------------------------------------------------------- driver
def _sanitized_command(argv: Sequence[str]) -> str:
    out, skip = [], False
    for a in argv:
        if skip:
            out.append("<path>")
            skip = False
            continue
        if a.startswith(("--ckpt=", "--out-dir=")):
            a = a.split("=", 1)[0] + "=<path>"
        out.append(a)
        if a in ("--ckpt", "--out-dir"):
            skip = True
    return " ".join(["python", "benchmarks/bench_load.py", *out])


def _progress(msg: str) -> None:
    print(msg, flush=True)


def profile_mode(args: argparse.Namespace, ckpt: str, common: List[str]) -> int:
    """Print cProfile's top entries for one warm load of ``args.profile`` with each class."""
    case = args.profile
    for klass in ("ours", "stock"):
        procmem.warm_page_cache(ckpt)
        res = run_worker(
            ["--worker", case, "--class", klass, *common, "--profile", "--no-verify"],
            args.timeout,
        )
        print(f"\n===== {klass}: {case} load, warm cache, {res['time_s']:.3f} s =====")
        print(res["profile"])
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the whole benchmark; returns 0 when it ran (targets failing included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return worker_main(argv)
    args = parse_args(argv)
    device = args.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print_error(
                f"--device {device} was asked for but CUDA is not available "
                f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}). "
                "Run on a GPU machine, or use --device cpu."
            )
            return EXIT_BAD_INPUT
    elif device != "cpu":
        print_error(f"--device must be 'cpu' or 'cuda:N', not {device!r}")
        return EXIT_BAD_INPUT
    warm_n = args.repeats or (2 if args.quick else 5)
    evicted_n = args.evicted_repeats or (1 if args.quick else 5)
    t_start = time.perf_counter()
    info = procmem.machine_info()
    tmp = tempfile.mkdtemp(prefix="d2ckpt-loadbench-")
    throttle: Optional[ReadThrottle] = None
    try:
        cfg, cfg_source = make_cfg("cpu")
        cfg_file = os.path.join(tmp, "config.yaml")
        with open(cfg_file, "w") as f:
            f.write(cfg.dump())
        ckpt = args.ckpt or os.path.join(tmp, "model_final.pth")
        generated, gen_s = False, 0.0
        if not os.path.isfile(ckpt):
            _progress("Writing the training checkpoint (model + SGD momentum) ...")
            t0 = time.perf_counter()
            out = make_checkpoint(cfg_file, os.path.join(tmp, "gen"))
            os.makedirs(os.path.dirname(os.path.abspath(ckpt)), exist_ok=True)
            shutil.move(out, ckpt)
            generated, gen_s = True, time.perf_counter() - t0
        file_bytes = os.path.getsize(ckpt)
        _progress(
            f"Checkpoint: {file_bytes / 1e6:.1f} MB ({'generated' if generated else 'reused'})"
        )
        common = ["--ckpt", ckpt, "--cfg-file", cfg_file, "--device", device]
        common += ["--save-dir", os.path.join(tmp, "save"), "--threads", str(args.threads)]
        common += ["--sample-ms", str(args.sample_ms)]
        if args.profile:
            return profile_mode(args, ckpt, common)
        if args.no_verify:
            common.append("--no-verify")
        ev = check_eviction(ckpt)
        _progress(
            "Eviction check: residency {} -> {} after POSIX_FADV_DONTNEED; first {} MiB read "
            "cold {:.0f} MB/s, warm {:.0f} MB/s: {}".format(
                _pct(ev["residency_before"]),
                _pct(ev["residency_after_evict"]),
                ev["bytes_read"] >> 20,
                ev["cold_read_MBps"],
                ev["warm_read_MBps"],
                "eviction works"
                if ev["works"]
                else "EVICTION DOES NOT WORK here: the 'evicted' rows are warm-cache runs",
            )
        )
        procmem.warm_page_cache(ckpt)
        _progress("References (memcpy of the model's bytes, file read, H2D) ...")
        refs = run_worker(["--worker", "refs", *common, "--repeats", "7"], args.timeout)
        ranges_file = os.path.join(tmp, "model_ranges.json")
        with open(ranges_file, "w") as f:
            json.dump(refs["model_ranges"], f)
        if args.throttle_mbps:
            try:
                throttle = ReadThrottle(ckpt, args.throttle_mbps).__enter__()
            except ThrottleError as e:
                print_error(f"--throttle-mbps {args.throttle_mbps:g}: {e}")
                return EXIT_BAD_INPUT
            _progress(
                f"Disk reads of every worker capped at {args.throttle_mbps:g} MB/s on device "
                "{}:{} (cgroup {})".format(*throttle.device, throttle.cgroup)
            )
        runs: List[Dict[str, Any]] = []
        reads: List[Dict[str, Any]] = []
        plan = []
        states = [("warm", warm_n)] + [(c, evicted_n) for c in COLD_STATES]
        states = [(c, n) for c, n in states if c in args.states]
        for cache, n in states:
            for rep in range(n):
                group = []
                for case in CASES:
                    order = CLASSES if rep % 2 == 0 else CLASSES[::-1]
                    group += [(cache, rep, case, klass) for klass in order]
                if cache in COLD_STATES:  # the floors, measured cold like the loads
                    floors = [(cache, rep, "seqread", what) for what in ("file", "model")]
                    group = floors + group if rep % 2 == 0 else group + floors
                plan += group
        for i, (cache, rep, case, klass) in enumerate(plan, 1):
            residency = prepare_cache(ckpt, cache)
            # A resumed job reads a file that left the page cache long ago; a load started
            # the instant after the eviction is faster here (see README: Cold).
            settle = (
                ["--not-before", repr(time.time() + args.settle_s)] if cache == "evicted" else []
            )
            if cache == "evicted_now":
                settle = ["--evict-first"]
            if case == "seqread":
                extra = ["--ranges", ranges_file, *settle] if klass == "model" else settle
                res = run_worker(["--worker", "seqread", *common, *extra], args.timeout, throttle)
                res.update(what=klass, repeat=rep, residency_at_start=residency, cache=cache)
                reads.append(res)
                direct = res.get("direct")
                _progress(
                    f"[{i:2d}/{len(plan)}] sequential read of the {klass}, {cache}, rep {rep}: "
                    f"buffered {res['time_s']:.3f} s ({res['GBps']:.2f} GB/s, system CPU "
                    f"{res['sys_s']:.2f} s), "
                    + (f"O_DIRECT {direct['time_s']:.3f} s" if direct else "no O_DIRECT")
                )
                continue
            res = run_worker(
                ["--worker", case, "--class", klass, *common, *settle], args.timeout, throttle
            )
            res.update(cache=cache, repeat=rep, residency_at_start=residency)
            ver = res.get("verify")
            if ver is not None and not ver["ok"]:
                raise RuntimeError(f"{klass} {case} loaded wrong values: {ver}")
            runs.append(res)
            _progress(
                f"[{i:2d}/{len(plan)}] {case:6s} {cache:7s} {klass:5s} rep {rep}: "
                f"{res['time_s']:.3f} s (load {res['load_s']:.3f} + touch {res['touch_s']:.3f}), "
                f"peak anon +{res['peak_anon_growth'] / 1e6:.0f} MB, "
                f"after +{res['anon_growth_after'] / 1e6:.0f} MB, residency {_pct(residency)}"
            )
        opt_bytes = max(r["optimizer_state_bytes"] for r in runs)
        gpu = device.startswith("cuda")
        mem_ref = refs["model_state_bytes"]
        summary = summarize(runs, file_bytes, mem_ref)
        sequential = {c: summarize_sequential_reads(reads, c) for c in COLD_STATES}
        verdict = evaluate(summary, refs, device, ev["works"], opt_bytes, sequential)
        if hasattr(os, "getloadavg"):
            info["loadavg_at_end"] = list(os.getloadavg())
        result = {
            "benchmark": "checkpoint load: EfficientDetectionCheckpointer vs DetectionCheckpointer",
            "model": "Faster R-CNN R50-FPN (" + cfg_source + ")",
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "command": _sanitized_command(argv),
            "device": device,
            "machine": info,
            "checkpoint": {
                "file_bytes": file_bytes,
                "model_state_bytes": refs["model_state_bytes"],
                "optimizer_state_bytes": opt_bytes,
                "generated": generated,
                "generate_s": gen_s,
            },
            "repeats": {"warm": warm_n, **{c: evicted_n for c in COLD_STATES}},
            "settings": {
                "worker_threads": args.threads or "torch default",
                "sample_ms": args.sample_ms,
                "settle_s": args.settle_s,
                "verify": not args.no_verify,
            },
            "eviction_check": ev,
            "throttle_read_MBps": args.throttle_mbps or None,
            "references": refs,
            "sequential_read": sequential,
            "sequential_read_runs": reads,
            "summary": summary,
            **verdict,
            "runs": runs,
            "total_s": time.perf_counter() - t_start,
        }
        os.makedirs(args.out_dir, exist_ok=True)
        stem = ("load_cuda" if gpu else "load_cpu") + (
            f"_disk{args.throttle_mbps:g}MBps" if args.throttle_mbps else ""
        )
        json_path = os.path.join(args.out_dir, stem + ".json")
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        print()
        print(load_report.text_report(result))
        if not args.no_plot:
            png = os.path.join(args.out_dir, stem + ".png")
            load_report.plot(result, png)
            print(f"\nWrote {json_path} and {png}")
        else:
            print(f"\nWrote {json_path}")
        print(f"Total {result['total_s']:.0f} s")
        return 0
    finally:
        if throttle is not None:
            throttle.__exit__()
        shutil.rmtree(tmp, ignore_errors=True)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


if __name__ == "__main__":
    sys.exit(main())
