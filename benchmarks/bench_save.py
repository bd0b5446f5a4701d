"""Checkpoint save benchmark: ``EfficientDetectionCheckpointer.save`` against the stock class.

A Faster R-CNN R50-FPN with SGD momentum for every trainable parameter (a 333 MB training
checkpoint) is saved by detectron2's ``DetectionCheckpointer`` and by
``EfficientDetectionCheckpointer`` (synchronous, and with ``CHECKPOINT.SAVE.ASYNC``), side
by side in one process. Figures:

    blocked    how long ``save()`` blocks the caller (target: async <= 0.1x stock);
    durable    from ``save()`` until the file is fsynced, renamed, tagged and verified,
               against the disk's measured write bandwidth (fsynced sequential write);
    training   wall time of N real training iterations (forward, backward, SGD step on
               synthetic images) with a checkpoint every K iterations, against the same
               run without checkpoints (target: async within 5%).

The training runs (none, stock, async, and with ``--with-sync`` ours synchronous) take turns
in each of ``--train-repeats`` rounds, each after an ``os.sync()`` (so that no run pays for
the writeback of the previous run's unsynced files), and the figures are medians over the
rounds: on a shared machine one iteration now and then takes several times its usual time,
and many short runs that take turns give a steadier median than a few long ones.

The default period, a checkpoint every 20 iterations (about 12 s of training on 2 CPU
cores), is still far more frequent than real use (detectron2's configs save every 5000
iterations, minutes to hours), so the overhead it measures is an upper bound; the report
also gives the cost of one checkpoint in seconds of training, from which the overhead of
any other period follows. A period of a few iterations would mostly measure how fast saves
can follow each other rather than what one costs a training run. Checkpoints come after
iterations K/2, K/2 + K, ..., half a period out of phase, so that a run is a whole number of
periods that neither starts nor ends with a save, as in the middle of a long run; the last
write has half a period to finish, and the final ``wait()`` for it is timed too. The default
run is one period (20 iterations, a checkpoint after the 10th), so that many short runs can
take turns. A run that ends exactly at a checkpoint pays that save's whole write once more
(once per run, not per period).

Run from the repository root (about 4 minutes on a quiet 2-core CPU):

    python benchmarks/bench_save.py
    python benchmarks/bench_save.py --device cuda:0      # model and optimizer on a GPU
    python benchmarks/bench_save.py --iters 20 --every 10 --train-repeats 5 --with-sync

Results go to ``<out-dir>/save_<device>.json`` and ``save_<device>.png``.
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from load_worker import make_cfg  # noqa: E402

from d2_efficient_ckpt import EfficientDetectionCheckpointer, add_efficient_ckpt_config  # noqa: E402

TARGETS = {"blocked_async_vs_stock": 0.1, "train_async_overhead": 0.05}


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda:N'")
    p.add_argument("--repeats", type=int, default=5, help="saves per class for 'blocked'")
    p.add_argument("--iters", type=int, default=20, help="training iterations per run")
    p.add_argument("--every", type=int, default=20, help="checkpoint period in iterations")
    p.add_argument(
        "--train-repeats", type=int, default=5, help="rounds of training runs (median taken)"
    )
    p.add_argument("--size", type=int, default=128, help="synthetic image side in pixels")
    p.add_argument(
        "--settle-s",
        type=float,
        default=5.0,
        help="seconds of quiet before each save timed for 'blocked' (see blocked_times)",
    )
    p.add_argument("--with-sync", action="store_true", help="also train with sync saves")
    p.add_argument("--dir", default=None, help="where checkpoints go (default: a temp dir)")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def build(device: str):
    """R50-FPN, its SGD optimizer with momentum for every parameter, and its config."""
    cfg, _ = make_cfg(device)
    add_efficient_ckpt_config(cfg)
    # Without pretrained weights, FrozenBN is an identity and activations overflow through
    # 50 layers; trainable BN keeps the synthetic training finite (same checkpoint size).
    cfg.MODEL.RESNETS.NORM = "BN"
    # Fewer sampled proposals make a CPU step affordable; the checkpoint is unchanged.
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    opt.zero_grad()
    return cfg, model, opt


def disk_bandwidth(directory: str, nbytes: int) -> float:
    """Bytes per second of an fsynced sequential write of ``nbytes`` (best of 2)."""
    block = os.urandom(8 << 20)
    best = 0.0
    for i in range(2):
        path = os.path.join(directory, f"bandwidth_{i}.bin")
        start = time.perf_counter()
        with open(path, "wb") as f:
            left = nbytes
            while left > 0:
                left -= f.write(block[: min(left, len(block))])
            f.flush()
            os.fsync(f.fileno())
        best = max(best, nbytes / (time.perf_counter() - start))
        os.remove(path)
    return best


def blocked_times(
    cfg, model, opt, directory: str, repeats: int, settle_s: float = 5.0
) -> Dict[str, Any]:
    """Seconds each ``save()`` blocks, and (ours) seconds until durable.

    The three classes take turns within each repeat, so that a busy moment of a shared
    machine falls on all of them alike, and each save starts after ``os.sync()``: the stock
    save leaves its file to the kernel's writeback, which would otherwise slow the fsync of
    the save after it. Each class keeps one file (ours with ``MAX_TO_KEEP 1``, stock's
    previous file deleted here), so every save finds the page cache that the deletion just
    before it freed. Without that, the save after a deletion writes 334 MB into the page
    cache 3-5x faster than one after none (0.17 s against 0.55-0.9 s for the stock save on
    the 2-core virtual machine here, likely because memory not recently in use must first
    be backed by the host), and which class follows a deletion would decide the ratio.

    In a training run saves are minutes apart, and memory freed in between has long gone
    back to the host when the next save comes. So each save waits ``settle_s`` seconds after
    the ``os.sync()`` (the same settle time as the cold loads of ``bench_load.py``); with
    ``--settle-s 0`` every save meets memory freed a moment before, the stock save's best
    case.
    """
    stock = DetectionCheckpointer(model, os.path.join(directory, "stock"), optimizer=opt)
    os.makedirs(stock.save_dir, exist_ok=True)
    ours = {}
    for name, asynchronous in (("sync", False), ("async", True)):
        c = cfg.clone()
        c.CHECKPOINT.SAVE.ASYNC = asynchronous
        c.CHECKPOINT.SAVE.MAX_TO_KEEP = 1
        ours[name] = EfficientDetectionCheckpointer(
            model, os.path.join(directory, name), cfg=c, optimizer=opt
        )
    out: Dict[str, Any] = {k: [] for k in ("stock", "sync", "async", "sync_durable")}
    out["async_durable"] = []
    for name in ours:  # the write (serialize, fsync, rename) and the check, apart
        out[f"{name}_write"], out[f"{name}_verify"] = [], []
    for i in range(repeats + 1):  # round 0: the first async save allocates its buffers
        os.sync()  # each save starts with no writeback of an earlier one in the way
        time.sleep(settle_s)
        start = time.perf_counter()
        stock.save(f"model_{i:07d}")
        blocked = {"stock": time.perf_counter() - start}
        if i == 0:
            out["size"] = os.path.getsize(os.path.join(stock.save_dir, "model_0000000.pth"))
        else:  # as MAX_TO_KEEP 1 does for ours
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(stock.save_dir, f"model_{i - 1:07d}.pth"))
        for name, ck in ours.items():
            os.sync()
            time.sleep(settle_s)
            start = time.perf_counter()
            ck.save(f"model_{i:07d}", iteration=i)
            blocked[name] = time.perf_counter() - start
            ck.wait()
            durable = time.perf_counter() - start
            if i > 0:
                out[f"{name}_durable"].append(durable)
                out[f"{name}_write"].append(ck.saver.last_result.write_s)
                out[f"{name}_verify"].append(ck.saver.last_result.verify_s)
        if i == 0:
            out["async_first"] = blocked["async"]
            continue
        for name, value in blocked.items():
            out[name].append(value)
        print(
            "  " + ", ".join(f"{k} {v:.3f} s" for k, v in blocked.items()) + " blocked",
            flush=True,
        )
    out["snapshot_bytes"] = ours["async"].saver._buffers.allocated_bytes
    return out


def synthetic_batch(device: str, size: int, n: int = 2) -> List[Dict[str, Any]]:
    """``n`` random images with three boxes each, in detectron2's input format."""
    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(n):
        img = (torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
        inst = Instances((size, size))
        xy = torch.rand(3, 2, generator=g) * size * 0.6
        inst.gt_boxes = Boxes(torch.cat([xy, xy + size * 0.3], dim=1))
        inst.gt_classes = torch.randint(0, 80, (3,), generator=g)
        batch.append({"image": img, "instances": inst, "height": size, "width": size})
    return batch


def train_run(model, opt, batch, iters: int, every: int, save) -> Tuple[float, float]:
    """Wall time of ``iters`` training steps, calling ``save(it)`` every ``every`` steps
    half a period out of phase, up to the end of the final ``save.wait()``; and the seconds
    of that final wait."""
    model.train()
    start = time.perf_counter()
    with EventStorage(0):  # detectron2's losses log into it
        for it in range(iters):
            losses = model(batch)
            sum(losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
            if save is not None and (it + 1) % every == every // 2:
                save(it)
    waited = time.perf_counter()
    if save is not None and hasattr(save, "wait"):
        save.wait()
    if model.pixel_mean.is_cuda:
        torch.cuda.synchronize()
    end = time.perf_counter()
    return end - start, end - waited


class _Saver:
    def __init__(self, ck):
        self.ck = ck
        if hasattr(ck, "wait"):
            self.wait = ck.wait

    def __call__(self, it: int) -> None:
        self.ck.save(f"model_{it:07d}", iteration=it)


def training(cfg, model, opt, directory: str, args) -> Dict[str, Any]:
    """Wall times of the same training with no, stock, (sync) and async checkpoints.

    The variants take turns in each round; each run starts after ``os.sync()``.
    """
    batch = synthetic_batch(args.device, args.size)
    train_run(model, opt, batch, 2, 0, None)  # warm-up: allocator, autograd graph
    makers = {
        "none": lambda: None,
        "stock": lambda: _Saver(
            DetectionCheckpointer(model, _fresh(directory, "t_stock"), optimizer=opt)
        ),
        "async": lambda: _Saver(_ours(cfg, model, opt, _fresh(directory, "t_async"), True)),
    }
    if args.with_sync:
        makers["sync"] = lambda: _Saver(_ours(cfg, model, opt, _fresh(directory, "t_sync"), False))
    runs: Dict[str, List[float]] = {k: [] for k in makers}
    final_wait: Dict[str, List[float]] = {k: [] for k in makers}
    for r in range(args.train_repeats):
        for name, make in makers.items():
            save = make()
            os.sync()
            wall, waited = train_run(model, opt, batch, args.iters, args.every, save)
            runs[name].append(wall)
            final_wait[name].append(waited)
            print(
                f"  round {r + 1}: training with {name:5s} checkpoints: {wall:.2f} s"
                + (f" (final wait {waited:.2f} s)" if name in ("async", "sync") else ""),
                flush=True,
            )
    return {"runs": runs, "final_wait": final_wait}


def _fresh(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def _ours(cfg, model, opt, directory: str, asynchronous: bool):
    c = cfg.clone()
    c.CHECKPOINT.SAVE.ASYNC = asynchronous
    c.CHECKPOINT.SAVE.MAX_TO_KEEP = 2  # as a long run would, so the disk does not fill
    return EfficientDetectionCheckpointer(model, directory, cfg=c, optimizer=opt)


def n_saves(iters: int, every: int) -> int:
    """How many checkpoints :func:`train_run` takes in ``iters`` iterations."""
    return sum(1 for it in range(iters) if (it + 1) % every == every // 2)


def _med(b: Dict[str, Any], key: str) -> float:
    return statistics.median(b[key]) if b.get(key) else float("nan")


def train_medians(res: Dict[str, Any]) -> Dict[str, float]:
    """Median wall time of each training variant over the rounds."""
    return {k: statistics.median(v) for k, v in res["training"]["runs"].items()}


def report(res: Dict[str, Any]) -> str:
    """Markdown tables of the result, with ratios and target verdicts."""
    b, t = res["blocked"], train_medians(res)
    runs, waits = res["training"]["runs"], res["training"]["final_wait"]
    med = {k: statistics.median(b[k]) for k in ("stock", "sync", "async")}
    dur = {k: statistics.median(b[f"{k}_durable"]) for k in ("sync", "async")}
    size, bw = b["size"], res["disk_bytes_per_s"]
    floor = size / bw
    ratio = med["async"] / med["stock"]
    # Rounds take turns, so the ratio within a round shares the machine's load of the moment.
    per_round = statistics.median(a / s for a, s in zip(b["async"], b["stock"]))
    lines = [
        f"R50-FPN + SGD momentum, {size / 1e6:.0f} MB, device {res['device']}; "
        f"disk (fsynced write) {bw / 1e6:.0f} MB/s, so {floor:.2f} s is the floor for "
        f"one durable copy. Each timed save after {res.get('settle_s', 0):g} s of quiet.",
        "",
        "| save | blocks the caller | ratio to stock | until durable + verified |",
        "| --- | --- | --- | --- |",
        f"| stock `DetectionCheckpointer.save` | {med['stock']:.3f} s | 1.00x | never fsynced |",
        f"| ours, sync | {med['sync']:.3f} s | {med['sync'] / med['stock']:.2f}x | "
        f"{dur['sync']:.3f} s ({dur['sync'] / floor:.1f}x the disk floor) |",
        f"| ours, async | {med['async']:.3f} s | **{ratio:.3f}x** | "
        f"{dur['async']:.3f} s ({dur['async'] / floor:.1f}x the disk floor) |",
        "",
        "Of the time until durable (medians, sync / async): serializing, writing and fsyncing "
        f"{_med(b, 'sync_write'):.3f} / {_med(b, 'async_write'):.3f} s "
        f"({_med(b, 'async_write') / floor:.1f}x the disk floor for async), reading it back "
        f"from the device and comparing {_med(b, 'sync_verify'):.3f} / "
        f"{_med(b, 'async_verify'):.3f} s.",
        "",
        f"Median of the per-round ratios async/stock: {per_round:.3f}x. First async save "
        f"(allocates the {b['snapshot_bytes'] / 1e6:.0f} MB snapshot buffers once): "
        f"{b['async_first']:.3f} s.",
        "",
        f"| {res['iters']} training iterations, checkpoint every {res['every']} "
        f"| wall time, median of {len(runs['none'])} | per round (s) | overhead vs none "
        "| training time one checkpoint costs |",
        "| --- | --- | --- | --- | --- |",
    ]
    saves = n_saves(res["iters"], res["every"])
    for k in t:
        over = t[k] / t["none"] - 1
        each = ", ".join(f"{x:.2f}" for x in runs[k])
        cost = f"{(t[k] - t['none']) / saves:.2f} s" if k != "none" and saves else ""
        lines.append(f"| {k} | {t[k]:.2f} s | {each} | {over * 100:+.1f}% | {cost} |")
    over_async = t["async"] / t["none"] - 1
    paired = statistics.median(a / n - 1 for a, n in zip(runs["async"], runs["none"]))
    lines += [
        "",
        f"Median of the per-round overheads async/none: {paired * 100:+.1f}%. Final wait() "
        f"for the last async write: median {statistics.median(waits['async']):.2f} s. One "
        f"iteration takes {t['none'] / res['iters']:.2f} s without checkpoints; a checkpoint "
        "every K iterations costs (training time one checkpoint costs) / (K x that).",
        "",
        f"blocked async/stock = {ratio:.3f} (target <= {TARGETS['blocked_async_vs_stock']}): "
        f"{'PASS' if ratio <= TARGETS['blocked_async_vs_stock'] else 'FAIL'}",
        f"training overhead async = {over_async * 100:+.1f}% (target <= "
        f"{TARGETS['train_async_overhead'] * 100:.0f}%): "
        f"{'PASS' if over_async <= TARGETS['train_async_overhead'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def plot(res: Dict[str, Any], path: str) -> None:
    """Two bar charts: time blocked per save, and training wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, t = res["blocked"], train_medians(res)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["stock", "sync", "async"]
    vals = [statistics.median(b[k]) for k in names]
    ax1.bar(names, vals, color=["#999999", "#4c72b0", "#55a868"])
    ax1.set_ylabel("seconds")
    ax1.set_title(f"save() blocks training (R50-FPN + SGD, {b['size'] / 1e6:.0f} MB)")
    for i, v in enumerate(vals):
        ax1.text(i, v, f"{v:.3f}", ha="center", va="bottom")
    names = list(t)
    vals = [t[k] for k in names]
    colors = {"none": "#cccccc", "stock": "#999999", "sync": "#4c72b0", "async": "#55a868"}
    ax2.bar(names, vals, color=[colors[k] for k in names])
    ax2.set_title(f"{res['iters']} iterations, checkpoint every {res['every']} (s, median)")
    for i, v in enumerate(vals):
        ax2.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} needs CUDA, and torch sees no GPU.")
        return 2
    directory = args.dir or tempfile.mkdtemp(prefix="bench_save_")
    os.makedirs(directory, exist_ok=True)
    try:
        cfg, model, opt = build(args.device)
        print("measuring disk bandwidth ...", flush=True)
        bw = disk_bandwidth(directory, 256 << 20)
        print("measuring save() ...", flush=True)
        blocked = blocked_times(cfg, model, opt, directory, args.repeats, args.settle_s)
        print("measuring training ...", flush=True)
        train = training(cfg, model, opt, directory, args)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    res = {
        "device": args.device,
        "iters": args.iters,
        "every": args.every,
        "threads": torch.get_num_threads(),
        "settle_s": args.settle_s,
        "disk_bytes_per_s": bw,
        "blocked": blocked,
        "training": train,
    }
    text = report(res)
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    tag = "cpu" if args.device == "cpu" else "cuda"
    with open(os.path.join(args.out_dir, f"save_{tag}.json"), "w") as f:
        json.dump(res, f, indent=1)
    if not args.no_plot:
        plot(res, os.path.join(args.out_dir, f"save_{tag}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
