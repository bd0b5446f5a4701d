"""Checkpoint save benchmark: ``EfficientDetectionCheckpointer.save`` against the stock class.

A Faster R-CNN R50-FPN with SGD momentum for every trainable parameter (a 333 MB training
checkpoint) is saved by detectron2's ``DetectionCheckpointer`` and by
``EfficientDetectionCheckpointer`` (synchronous, and with ``CHECKPOINT.SAVE.ASYNC``), side
by side in one process, with the disk's floors measured in the same rounds. Figures:

    blocked    how long ``save()`` blocks the caller (target: async <= 0.05x stock; on a
               GPU, <= 1.5x one pinned device-to-host copy of the state);
    durable    from ``save()`` until the file is fsynced, renamed, tagged and verified
               (target: sync <= 1.2x the floors: an fsynced sequential write of as many
               bytes plus an ``O_DIRECT`` read of them, the faster of 1 and 2 reads in
               flight, each round's own);
    training   wall time of N real training iterations (forward, backward, SGD step on
               synthetic images; by default the toy R18-FPN of ``make demo``) with a
               checkpoint every K iterations, against the same run without checkpoints
               (target: async within 1%). Ours asynchronous is set up as the Trainer sets
               it up: the weights and momenta are copied during the next forward and
               backward, and the optimizer step waits for the copy.

The training runs (none, stock, async, and with ``--with-sync`` ours synchronous) take turns
in each of ``--train-repeats`` rounds, each after an ``os.sync()`` (so that no run pays for
the writeback of the previous run's unsynced files), and the figures are medians over the
rounds: on a shared machine one iteration now and then takes several times its usual time,
and many short runs that take turns give a steadier median than a few long ones.

The default period, a checkpoint every 20 iterations, is still far more frequent than real
use (detectron2's configs save every 5000 iterations, minutes to hours), so the overhead it
measures is an upper bound; the report also gives the cost of one checkpoint in seconds of
training, from which the overhead of any other period follows. Checkpoints come after
iterations K/2, K/2 + K, ..., half a period out of phase, so that a run is a whole number of
periods that neither starts nor ends with a save, as in the middle of a long run; the last
write has half a period to finish, and the final ``wait()`` for it is timed too.

Run from the repository root (about 6 minutes on a quiet 2-core CPU):

    python benchmarks/bench_save.py
    python benchmarks/bench_save.py --device cuda:0      # model and optimizer on a GPU
    python benchmarks/bench_save.py --train-model r50 --with-sync

Results go to ``<out-dir>/save_<device>.json`` and ``save_<device>.png``.
"""

import argparse
import contextlib
import json
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import procmem  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from load_worker import make_cfg  # noqa: E402

from d2_efficient_ckpt import EfficientDetectionCheckpointer, add_efficient_ckpt_config  # noqa: E402

TARGETS = {
    "sync_durable_vs_floors": 1.2,  # x (fsynced write + direct read of the same bytes)
    "blocked_async_vs_stock": 0.05,
    "train_async_overhead": 0.01,
    "blocked_async_vs_d2h": 1.5,  # on a GPU: x the pinned device-to-host copy of the state
}
READ_BLOCK = 8 << 20
READ_DEPTHS = (1, 2)  # direct reads in flight for the read floor; the check uses 1
TOY_CONFIG = os.path.join(os.path.dirname(HERE), "configs", "toy", "faster_rcnn_R18_FPN_toy.yaml")


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
    p.add_argument(
        "--train-model",
        choices=("toy", "r50"),
        default="toy",
        help="model of the training runs: the toy R18-FPN config (default) or the R50-FPN",
    )
    p.add_argument("--skip-training", action="store_true", help="only the save timings")
    p.add_argument("--skip-saves", action="store_true", help="only the training runs")
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


def build_toy(device: str):
    """The toy R18-FPN of ``configs/toy`` (what ``make demo`` trains), its SGD optimizer with
    momentum, and its config."""
    from detectron2.config import get_cfg

    cfg = add_efficient_ckpt_config(get_cfg())
    cfg.merge_from_file(TOY_CONFIG)
    cfg.MODEL.DEVICE = device
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    return cfg, model, opt


def floor_write(path: str, nbytes: int, block: memoryview) -> float:
    """Seconds of a sequential write of ``nbytes`` from memory, fsynced: what a durable copy
    of a checkpoint of that size costs at least."""
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = nbytes
        while left > 0:
            left -= os.write(fd, block[: min(left, len(block))])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def floor_write_direct(path: str, nbytes: int, block: mmap.mmap) -> float:
    """Seconds of an ``O_DIRECT`` sequential write of ``nbytes`` (rounded up to the block)
    from one aligned buffer, fsynced: the device's own write speed, with no page cache to
    fill. NaN where the file system refuses ``O_DIRECT``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except (OSError, AttributeError):
        return float("nan")
    start = time.perf_counter()
    try:
        for _ in range(-(-nbytes // len(block))):
            os.write(fd, block)
        os.fsync(fd)
    except OSError:
        return float("nan")
    finally:
        os.close(fd)
    return time.perf_counter() - start


def floor_read(path: str, depth: int) -> float:
    """Seconds of an ``O_DIRECT`` read of the whole file in 8 MiB blocks, ``depth`` reads in
    flight (1: one after the other); the page cache is neither used nor filled."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    size = os.fstat(fd).st_size
    blocks = -(-size // READ_BLOCK)
    buffers = [mmap.mmap(-1, READ_BLOCK) for _ in range(depth)]
    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(depth) as pool:
            list(
                pool.map(
                    lambda k: os.preadv(fd, [buffers[k % depth]], k * READ_BLOCK), range(blocks)
                )
            )
    finally:
        os.close(fd)
        for b in buffers:
            b.close()
    return time.perf_counter() - start


def d2h_copy_s(model, opt) -> float:
    """Seconds of one pinned device-to-host copy of every tensor of the state (GPU floor of
    the asynchronous save's blocking time); median of 3."""
    tensors = list(model.state_dict().values())
    for state in opt.state.values():
        tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    tensors = [t for t in tensors if t.is_cuda]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for h, t in zip(host, tensors):
            h.copy_(t, non_blocking=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
        if asynchronous:  # as the Trainer builds it (see _ours)
            ours[name].defer_until_step(model, opt)
    out: Dict[str, Any] = {k: [] for k in ("stock", "sync", "async", "sync_durable")}
    out["async_durable"] = []
    for depth in READ_DEPTHS:
        out[f"floor_read_qd{depth}"] = []
    out["floor_write"], out["floor_write_direct"] = [], []
    block = memoryview(bytearray(os.urandom(8 << 20)))
    aligned = mmap.mmap(-1, 8 << 20)
    aligned.write(bytes(block))
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
            if name == "async":  # what the next optimizer step would wait for at most
                ck.saver.wait_for_snapshot()
                copied = time.perf_counter() - start
            ck.wait()
            durable = time.perf_counter() - start
            if i > 0:
                out[f"{name}_durable"].append(durable)
                if name == "async":
                    out.setdefault("async_copied", []).append(copied)
                    out.setdefault("async_cpu", []).append(ck.saver.last_result.cpu_s)
                out[f"{name}_write"].append(ck.saver.last_result.write_s)
                out[f"{name}_verify"].append(ck.saver.last_result.verify_s)
        # The floors of the same round, measured the way the saves are: after the same
        # quiet, into a new file while the previous round's is still there.
        os.sync()
        time.sleep(settle_s)
        floor_path = os.path.join(directory, f"floor_{i}.bin")
        written = floor_write(floor_path, out["size"], block)
        reads = {d: floor_read(floor_path, d) for d in READ_DEPTHS}
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, f"floor_{i - 1}.bin"))
        os.sync()
        time.sleep(settle_s)
        direct_path = os.path.join(directory, "floor_direct.bin")
        written_direct = floor_write_direct(direct_path, out["size"], aligned)
        with contextlib.suppress(FileNotFoundError):
            os.remove(direct_path)
        if i == 0:
            out["async_first"] = blocked["async"]
            continue
        out["floor_write"].append(written)
        out["floor_write_direct"].append(written_direct)
        for d, t in reads.items():
            out[f"floor_read_qd{d}"].append(t)
        for name, value in blocked.items():
            out[name].append(value)
        print(
            "  " + ", ".join(f"{k} {v:.3f} s" for k, v in blocked.items()) + " blocked; "
            f"sync durable {out['sync_durable'][-1]:.3f} s; floors: fsynced write "
            f"{written:.3f} s (O_DIRECT {written_direct:.3f} s), direct read "
            + ", ".join(f"QD{d} {t:.3f} s" for d, t in reads.items()),
            flush=True,
        )
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(directory, f"floor_{repeats}.bin"))
    out["snapshot_bytes"] = ours["async"].saver._buffers.allocated_bytes
    if torch.cuda.is_available() and next(model.parameters()).is_cuda:
        out["d2h_s"] = d2h_copy_s(model, opt)
    return out


def synthetic_batch(device: str, size: int, n: int = 2, classes: int = 80) -> List[Dict[str, Any]]:
    """``n`` random images with three boxes each, in detectron2's input format."""
    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(n):
        img = (torch.rand(3, size, size, generator=g) * 255).to(torch.uint8)
        inst = Instances((size, size))
        xy = torch.rand(3, 2, generator=g) * size * 0.6
        inst.gt_boxes = Boxes(torch.cat([xy, xy + size * 0.3], dim=1))
        inst.gt_classes = torch.randint(0, classes, (3,), generator=g)
        batch.append({"image": img, "instances": inst, "height": size, "width": size})
    return batch


def train_run(model, opt, batch, iters: int, every: int, save) -> Tuple[float, float, float]:
    """Wall time of ``iters`` training steps, calling ``save(it)`` every ``every`` steps
    half a period out of phase, up to the end of the final ``save.wait()``; the seconds of
    that final wait; and the run's excess over its own typical iteration (wall time minus
    ``iters`` times the median iteration of the run, the save's included), which a drift of
    the machine's speed between runs does not move."""
    model.train()
    start = time.perf_counter()
    steps = []
    with EventStorage(0):  # detectron2's losses log into it
        for it in range(iters):
            t = time.perf_counter()
            losses = model(batch)
            sum(losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
            if save is not None and (it + 1) % every == every // 2:
                save(it)
            steps.append(time.perf_counter() - t)
    waited = time.perf_counter()
    if save is not None and hasattr(save, "wait"):
        save.wait()
    if model.pixel_mean.is_cuda:
        torch.cuda.synchronize()
    end = time.perf_counter()
    wall = end - start
    return wall, end - waited, wall - iters * statistics.median(steps) if steps else 0.0


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
    if args.train_model == "toy":  # the demo's model, images and batch size
        size = cfg.INPUT.MAX_SIZE_TRAIN
        batch = synthetic_batch(
            args.device, size, cfg.SOLVER.IMS_PER_BATCH, cfg.MODEL.ROI_HEADS.NUM_CLASSES
        )
    else:
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
    excesses: Dict[str, List[float]] = {k: [] for k in makers}
    names = list(makers)
    for r in range(args.train_repeats):
        # Each round starts with another variant: on a shared machine whose speed drifts,
        # a fixed order would charge the drift within a round to the variants run last.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            save = makers[name]()
            os.sync()
            wall, waited, excess = train_run(model, opt, batch, args.iters, args.every, save)
            runs[name].append(wall)
            final_wait[name].append(waited)
            excesses[name].append(excess)
            print(
                f"  round {r + 1}: training with {name:5s} checkpoints: {wall:.2f} s"
                + (f" (final wait {waited:.2f} s)" if name in ("async", "sync") else ""),
                flush=True,
            )
    return {"runs": runs, "final_wait": final_wait, "excess": excesses}


def _fresh(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def _ours(cfg, model, opt, directory: str, asynchronous: bool):
    c = cfg.clone()
    c.CHECKPOINT.SAVE.ASYNC = asynchronous
    c.CHECKPOINT.SAVE.MAX_TO_KEEP = 2  # as a long run would, so the disk does not fill
    ck = EfficientDetectionCheckpointer(model, directory, cfg=c, optimizer=opt)
    if asynchronous:  # as the Trainer does: the copy overlaps the next forward and backward
        ck.defer_until_step(model, opt)
    return ck


def n_saves(iters: int, every: int) -> int:
    """How many checkpoints :func:`train_run` takes in ``iters`` iterations."""
    return sum(1 for it in range(iters) if (it + 1) % every == every // 2)


def _med(b: Dict[str, Any], key: str) -> float:
    return statistics.median(b[key]) if b.get(key) else float("nan")


def train_medians(res: Dict[str, Any]) -> Dict[str, float]:
    """Median wall time of each training variant over the rounds."""
    return {k: statistics.median(v) for k, v in res["training"]["runs"].items()}


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def save_report(res: Dict[str, Any]) -> List[str]:
    """The save tables: blocking, durable time, and the floors of the same rounds."""
    b = res["blocked"]
    med = {k: statistics.median(b[k]) for k in ("stock", "sync", "async")}
    dur = {k: statistics.median(b[f"{k}_durable"]) for k in ("sync", "async")}
    size = b["size"]
    write = _med(b, "floor_write")
    reads = {d: _med(b, f"floor_read_qd{d}") for d in READ_DEPTHS}
    # Per round: the floor is that round's write plus its faster read.
    floors = [
        w + min(b[f"floor_read_qd{d}"][i] for d in READ_DEPTHS)
        for i, w in enumerate(b["floor_write"])
    ]
    vs_floor = statistics.median(d / f for d, f in zip(b["sync_durable"], floors))
    # The device alone: an O_DIRECT write fills no page cache (see README: the two floors).
    direct_floors = [
        w + min(b[f"floor_read_qd{d}"][i] for d in READ_DEPTHS)
        for i, w in enumerate(b.get("floor_write_direct", []))
    ]
    vs_device = (
        statistics.median(d / f for d, f in zip(b["sync_durable"], direct_floors))
        if direct_floors
        else float("nan")
    )
    ratio = med["async"] / med["stock"]
    per_round = statistics.median(a / s for a, s in zip(b["async"], b["stock"]))
    lines = [
        f"R50-FPN + SGD momentum, {size / 1e6:.0f} MB, device {res['device']}; each timed save "
        f"and each floor after {res.get('settle_s', 0):g} s of quiet, medians of "
        f"{len(b['stock'])} rounds.",
        "",
        "| save | blocks the caller | ratio to stock | until durable + verified |",
        "| --- | --- | --- | --- |",
        f"| stock `DetectionCheckpointer.save` | {med['stock']:.3f} s | 1.00x | never fsynced |",
        f"| ours, sync | {med['sync']:.3f} s | {med['sync'] / med['stock']:.2f}x | "
        f"{dur['sync']:.3f} s ({vs_floor:.2f}x the floors) |",
        f"| ours, async | {med['async']:.3f} s | **{ratio:.3f}x** | {dur['async']:.3f} s |",
        "",
        f"Floors in the same rounds: fsynced sequential write of {size / 1e6:.0f} MB "
        f"{write:.3f} s ({size / write / 1e6:.0f} MB/s), the same with O_DIRECT "
        f"{_med(b, 'floor_write_direct'):.3f} s; O_DIRECT read "
        + ", ".join(f"{reads[d]:.3f} s with {d} in flight" for d in READ_DEPTHS)
        + ". Of ours (sync / async): serialize, write, fsync "
        f"{_med(b, 'sync_write'):.3f} / {_med(b, 'async_write'):.3f} s; read back and compare "
        f"{_med(b, 'sync_verify'):.3f} / {_med(b, 'async_verify'):.3f} s.",
        "",
        "Of the async save, the weights and momenta are copied after save() returns, "
        "beside the next forward and backward (the Trainer's pipelined snapshot): all of the "
        f"copy was done {_med(b, 'async_copied'):.3f} s after save() was called, which is "
        "the most the next optimizer step can wait for it. The writer thread's CPU time "
        f"for one save: {_med(b, 'async_cpu'):.3f} s.",
        "",
        f"Median of the per-round ratios async/stock: {per_round:.3f}x. First async save "
        f"(allocates the {b['snapshot_bytes'] / 1e6:.0f} MB snapshot buffers once): "
        f"{b['async_first']:.3f} s.",
        "",
        f"sync durable / (write + read floor) = {vs_floor:.2f} (target <= "
        f"{TARGETS['sync_durable_vs_floors']}): "
        f"{_verdict(vs_floor, TARGETS['sync_durable_vs_floors'])}; against the device's "
        f"own floors (O_DIRECT write + read): {vs_device:.2f}",
        f"blocked async/stock = {ratio:.3f} (target <= {TARGETS['blocked_async_vs_stock']}): "
        f"{_verdict(ratio, TARGETS['blocked_async_vs_stock'])}",
    ]
    if "d2h_s" in b:
        gpu = med["async"] / b["d2h_s"]
        lines.append(
            f"blocked async / pinned D2H copy of the state ({b['d2h_s']:.3f} s) = {gpu:.2f} "
            f"(target <= {TARGETS['blocked_async_vs_d2h']}): "
            f"{_verdict(gpu, TARGETS['blocked_async_vs_d2h'])}"
        )
    return lines


def training_report(res: Dict[str, Any]) -> List[str]:
    """The training table: wall time with no, stock, (sync) and async checkpoints."""
    tr = res["training"]
    t = train_medians(res)
    runs, waits = tr["runs"], tr["final_wait"]
    what = "toy R18-FPN" if tr.get("model") == "toy" else "R50-FPN"
    lines = [
        f"| {what} ({tr.get('checkpoint_mb', 0):.0f} MB of weights and momenta), "
        f"{res['iters']} iterations, checkpoint every {res['every']} "
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
    excess = tr.get("excess")
    if excess:
        # Within each run: wall time over the run's own median iteration; what checkpoints
        # add to that over the run without them, per round, against the run's wall time.
        within = {
            k: statistics.median(
                (e - n) / w for e, n, w in zip(excess[k], excess["none"], runs["none"])
            )
            for k in excess
            if k != "none"
        }
        lines += [
            "",
            f"Within-run measure (wall time minus {res['iters']} x the run's median "
            "iteration, that of the run without checkpoints subtracted, over its wall time; "
            "median of the rounds): "
            + ", ".join(f"{k} {v * 100:+.1f}%" for k, v in within.items())
            + ".",
        ]
    lines += [
        "",
        f"Median of the per-round overheads async/none: {paired * 100:+.1f}%. Final wait() "
        f"for the last async write: median {statistics.median(waits['async']):.2f} s. One "
        f"iteration takes {t['none'] / res['iters']:.2f} s without checkpoints.",
        "",
        f"training overhead async = {over_async * 100:+.1f}% (target <= "
        f"{TARGETS['train_async_overhead'] * 100:.0f}%): "
        f"{_verdict(over_async, TARGETS['train_async_overhead'])}",
    ]
    return lines


def report(res: Dict[str, Any]) -> str:
    """Markdown tables of the result, with ratios and target verdicts."""
    lines = save_report(res) if res.get("blocked") else []
    if res.get("training"):
        lines += [""] + training_report(res)
    return "\n".join(lines)


def plot(res: Dict[str, Any], path: str) -> None:
    """Two bar charts: time blocked per save, and training wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = res["blocked"]
    t = train_medians(res) if res.get("training") else {}
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
        blocked: Dict[str, Any] = {}
        if not args.skip_saves:
            print("measuring save() ...", flush=True)
            blocked = blocked_times(cfg, model, opt, directory, args.repeats, args.settle_s)
        train: Dict[str, Any] = {}
        if not args.skip_training:
            if args.train_model == "toy":
                del model, opt  # the R50 state is not needed any more
                cfg, model, opt = build_toy(args.device)
            train_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) * 2
            print(f"measuring training ({args.train_model}) ...", flush=True)
            train = training(cfg, model, opt, directory, args)
            train["model"] = args.train_model
            train["checkpoint_mb"] = train_bytes / 1e6
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    res = {
        "machine": procmem.machine_info(),
        "device": args.device,
        "iters": args.iters,
        "every": args.every,
        "threads": torch.get_num_threads(),
        "settle_s": args.settle_s,
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
