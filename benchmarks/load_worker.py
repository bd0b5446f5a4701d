"""The measured side of the load benchmark: one case in one fresh process.

``bench_load.py`` starts this module's :func:`worker_main` in a new interpreter for every
repeat, so that no page mapping, allocator cache or CUDA state carries over between
repeats. The worker builds the model (and the optimizer), then measures only the load,
verifies the result against the file, and prints one JSON line prefixed with
:data:`RESULT_MARKER`.
"""

import argparse
import cProfile
import gc
import io
import json
import mmap
import os
import pstats
import statistics
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import procmem

from d2_efficient_ckpt.checkpoint.storage.page_cache import evict_from_page_cache

RESULT_MARKER = "@@BENCH_RESULT@@ "
CASES = ("model", "resume")
CLASSES = ("stock", "ours")
ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"

__all__ = [
    "CASES",
    "CLASSES",
    "RESULT_MARKER",
    "make_cfg",
    "make_checkpoint",
    "model_byte_ranges",
    "worker_main",
]


# --------------------------------------------------------------------------- model and file
def make_cfg(device: str) -> Tuple[Any, str]:
    """The Faster R-CNN R50-FPN config, from the model zoo yaml when it can be found.

    Falls back to setting the same keys in code when ``detectron2.model_zoo`` cannot be
    imported (it needs ``pkg_resources``).

    Returns:
        A ``CfgNode`` with ``MODEL.DEVICE`` set to ``device`` and no initial weights, and
        where it came from.
    """
    from detectron2.config import get_cfg

    cfg = get_cfg()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from detectron2 import model_zoo

            cfg.merge_from_file(model_zoo.get_config_file(ZOO_CONFIG))
        source = "model zoo yaml " + ZOO_CONFIG
    except Exception:  # no pkg_resources, or a detectron2 built without the zoo configs
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
        cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.DEPTH = 50
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
        source = "built in code (model zoo unavailable)"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    return cfg, source


def _build(cfg_file: str, device: str, with_optimizer: bool):
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    optimizer = None
    if with_optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def make_checkpoint(cfg_file: str, out_dir: str, iteration: int = 89999) -> str:
    """Write a training checkpoint with SGD momentum for every trainable parameter.

    The model is built, one optimizer step is taken with random gradients (so every
    parameter in the optimizer gets a momentum buffer), and the stock
    ``DetectionCheckpointer`` saves ``model``, ``optimizer`` and ``iteration``.

    Returns:
        The path of ``model_final.pth`` in ``out_dir``.
    """
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    torch.manual_seed(0)
    model, optimizer = _build(cfg_file, "cpu", with_optimizer=True)
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    os.makedirs(out_dir, exist_ok=True)
    DetectionCheckpointer(model, out_dir, optimizer=optimizer).save(
        "model_final", iteration=iteration
    )
    return os.path.join(out_dir, "model_final.pth")


# --------------------------------------------------------------------------- measured load
def _checkpointer(klass: str, model, optimizer, save_dir: str):
    if klass == "stock":
        from detectron2.checkpoint import DetectionCheckpointer as cls
    else:
        from d2_efficient_ckpt import EfficientDetectionCheckpointer as cls
    extra = {"optimizer": optimizer} if optimizer is not None else {}
    return cls(model, save_dir, **extra)


def _touch_optimizer_state(optimizer) -> int:
    """Write every optimizer state tensor once, as the first ``step()`` would; returns bytes."""
    import torch

    nbytes = 0
    with torch.no_grad():
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    value.mul_(1)
                    nbytes += value.numel() * value.element_size()
    return nbytes


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _verify(model, optimizer, ckpt: str) -> Dict[str, Any]:
    """Compare the loaded model and optimizer state with the file, tensor by tensor."""
    import torch

    ref = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)
    sd = model.state_dict()
    compared = wrong = 0
    for key, value in ref["model"].items():
        if key in sd and sd[key].shape == value.shape:
            compared += 1
            if not torch.equal(sd[key].detach().cpu(), value):
                wrong += 1
    out = {"model_tensors_compared": compared, "model_tensors_wrong": wrong}
    if optimizer is not None:
        saved = ref["optimizer"]["state"]
        live = optimizer.state_dict()["state"]
        bad = sum(
            1
            for idx, entry in saved.items()
            if idx not in live
            or not torch.equal(live[idx]["momentum_buffer"].cpu(), entry["momentum_buffer"])
        )
        out.update(opt_states_saved=len(saved), opt_states_wrong=bad)
    out["ok"] = compared > 0 and wrong == 0 and out.get("opt_states_wrong", 0) == 0
    return out


def memcpy_model_bytes(model, repeats: int = 5) -> List[float]:
    """Times of copying every model tensor into one preallocated, pre-faulted flat buffer.

    This is the floor for a load into an existing CPU model: the same bytes, the same
    tensor sizes, one copy each, no file involved.
    """
    import torch

    tensors = [t.detach() for t in model.state_dict().values()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    flat = torch.empty(nbytes, dtype=torch.uint8, device=tensors[0].device)
    flat.fill_(0)
    views, offset = [], 0
    for t in tensors:
        n = t.numel() * t.element_size()
        views.append(flat[offset : offset + n].view(t.dtype).view(t.shape))
        offset += n
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for dst, src in zip(views, tensors):
            dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return times


def _profile_text(prof: cProfile.Profile, limit: int = 25) -> str:
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return buf.getvalue()


def run_case(
    case: str,
    klass: str,
    ckpt: str,
    cfg_file: str,
    device: str,
    save_dir: str,
    verify: bool = True,
    profile: bool = False,
    sample_interval: float = 0.001,
    not_before: float = 0.0,
    evict_first: bool = False,
) -> Dict[str, Any]:
    """Build the model, then time one ``load`` of ``ckpt`` and record its memory.

    Args:
        case: ``"model"`` (``load(path, checkpointables=[])``) or ``"resume"``
            (``load(path)`` with the optimizer registered, then every state tensor written).
        klass: ``"stock"`` (``DetectionCheckpointer``) or ``"ours"``.
        ckpt: the checkpoint file.
        cfg_file: a full config dump of the model.
        device: ``"cpu"`` or ``"cuda:N"``.
        save_dir: the checkpointer's (unused) save directory.
        verify: compare the result with the file after measuring.
        profile: run the load under cProfile and return the top entries.
        sample_interval: seconds between memory samples; 0 samples only at start and end.
        not_before: wall-clock time (``time.time()``) before which the load must not start.
        evict_first: evict the file from the page cache (``POSIX_FADV_DONTNEED``) the
            instant before the load, with no time to settle.

    Returns:
        Timings in seconds and memory figures in bytes (see the README for each).
    """
    import torch

    model, optimizer = _build(cfg_file, device, with_optimizer=(case == "resume"))
    checkpointer = _checkpointer(klass, model, optimizer, save_dir)
    gpu = device.startswith("cuda")
    if gpu:  # create the context and the copy machinery outside the measurement
        torch.ones(1 << 20).to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_base = torch.cuda.memory_allocated()
    gc.collect()
    wait_until(not_before)
    if evict_first:
        evict_from_page_cache(ckpt)
    base = procmem.read_status()
    hwm_reset = procmem.reset_peak_rss()
    base = procmem.read_status()
    prof = cProfile.Profile() if profile else None
    with procmem.MemorySampler(sample_interval) as sampler:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        if case == "model":
            extra = checkpointer.load(ckpt, checkpointables=[])
        else:
            extra = checkpointer.load(ckpt)
        _sync(device)
        t1 = time.perf_counter()
        touched = _touch_optimizer_state(optimizer) if optimizer is not None else 0
        _sync(device)
        t2 = time.perf_counter()
        c2 = time.thread_time()
        if prof is not None:
            prof.disable()
        sampler.sample()
        leftover = sorted(map(str, extra))
        del extra
        gc.collect()
    after = procmem.read_status()
    result: Dict[str, Any] = {
        "case": case,
        "class": klass,
        "device": device,
        "threads": torch.get_num_threads(),
        "time_s": t2 - t0,
        "load_s": t1 - t0,
        "touch_s": t2 - t1,
        "cpu_s": c2 - c0,
        "base_rss": base["VmRSS"],
        "base_anon": base["RssAnon"],
        "peak_rss_growth": (after["VmHWM"] if hwm_reset else sampler.peak_rss) - base["VmRSS"],
        "peak_rss_growth_sampled": sampler.peak_rss - base["VmRSS"],
        "peak_anon_growth": sampler.peak_anon - base["RssAnon"],
        "anon_growth_after": after["RssAnon"] - base["RssAnon"],
        "rss_growth_after": after["VmRSS"] - base["VmRSS"],
        "hwm_reset": hwm_reset,
        "samples": sampler.samples,
        "optimizer_state_bytes": touched,
        "model_state_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "unconsumed_entries": leftover,
    }
    result["transient_anon"] = result["peak_anon_growth"] - result["anon_growth_after"]
    if not gpu:  # the same process's memcpy of the model's bytes, for a paired ratio
        result["memcpy_s"] = statistics.median(memcpy_model_bytes(model))
    if gpu:
        result["gpu_peak_growth"] = torch.cuda.max_memory_allocated() - gpu_base
    if prof is not None:
        result["profile"] = _profile_text(prof)
    if verify:
        result["verify"] = _verify(model, optimizer, ckpt)
    return result


# --------------------------------------------------------------------------- references
def _median_time(fn, repeats: int, sync_device: Optional[str] = None) -> List[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync_device:
            _sync(sync_device)
        times.append(time.perf_counter() - t0)
    return times


def run_references(ckpt: str, cfg_file: str, device: str, repeats: int) -> Dict[str, Any]:
    """Time the copies a load cannot beat: memcpy of the model's bytes, file read, H2D.

    * ``memcpy_params``: every model tensor copied into a preallocated flat buffer;
    * ``memcpy_flat``: one ``copy_`` of a tensor as large as the model;
    * ``read_file``: the whole checkpoint read into a preallocated buffer (page cache);
    * on CUDA, ``h2d_pinned`` / ``h2d_pageable``: one host-to-device copy of the model's
      size from pinned / ordinary memory.

    Returns:
        Each reference's raw times (``<name>_s``) and its median, plus byte counts.
    """
    import torch

    model, _ = _build(cfg_file, "cpu", with_optimizer=False)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    flat = torch.empty(nbytes, dtype=torch.uint8)
    flat.fill_(0)
    src_flat = torch.empty(nbytes, dtype=torch.uint8)
    src_flat.fill_(1)
    out: Dict[str, Any] = {"model_state_bytes": nbytes, "file_bytes": os.path.getsize(ckpt)}
    out["memcpy_params_s"] = memcpy_model_bytes(model, repeats + 1)[1:]
    out["memcpy_flat_s"] = _median_time(lambda: flat.copy_(src_flat), repeats + 1)[1:]
    threads = torch.get_num_threads()
    out["threads"] = threads
    if threads > 1:  # many small parallel regions suffer most when cores are busy
        torch.set_num_threads(1)
        out["memcpy_params_1thread_s"] = memcpy_model_bytes(model, repeats + 1)[1:]
        torch.set_num_threads(threads)
    fbuf = torch.empty(os.path.getsize(ckpt), dtype=torch.uint8)
    fbuf.fill_(0)
    fview = memoryview(fbuf.numpy())

    def read_file() -> None:
        with open(ckpt, "rb", buffering=0) as f:
            got = 0
            while got < len(fview):
                n = f.readinto(fview[got:])
                if not n:
                    break
                got += n

    out["read_file_s"] = _median_time(read_file, repeats + 1)[1:]
    if device.startswith("cuda"):
        dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
        pinned = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        pinned.fill_(1)
        dst.copy_(src_flat)
        torch.cuda.synchronize()
        out["h2d_pinned_s"] = _median_time(lambda: dst.copy_(pinned), repeats + 1, device)[1:]
        out["h2d_pageable_s"] = _median_time(lambda: dst.copy_(src_flat), repeats + 1, device)[1:]
        out["gpu_name"] = torch.cuda.get_device_name(torch.device(device))
    for key in [k for k in out if k.endswith("_s")]:
        out[key[:-2] + "_median_s"] = statistics.median(out[key])
    out["model_ranges"] = model_byte_ranges(ckpt)
    out["model_range_bytes"] = sum(n for _, n in out["model_ranges"])
    return out


def model_byte_ranges(ckpt: str) -> List[Tuple[int, int]]:
    """The merged ``(offset, length)`` file ranges that hold the model's tensors.

    What a weights-only load must read at least, found with the package's own parser (it
    reads the archive's directory and pickle, not the tensor bytes).
    """
    from d2_efficient_ckpt.checkpoint.formats.registry import open_checkpoint

    opened = open_checkpoint(ckpt)
    model, _ = opened.split_model()
    ranges = opened.mapping.ranges(model.values())
    del model, opened
    gc.collect()
    return ranges


def wait_until(not_before: float) -> None:
    """Sleep until the wall-clock time ``not_before`` (``time.time()``), if it is ahead."""
    delay = not_before - time.time()
    if delay > 0:
        time.sleep(delay)


_DIRECT_ALIGN = 4096  # O_DIRECT offsets and lengths: a multiple of the logical block size


def _sequential_pass(
    ckpt: str, ranges: List[Tuple[int, int]], chunk: int, direct: bool
) -> Dict[str, Any]:
    """One timed pass over ``ranges`` with ``chunk``-sized reads into one reused buffer."""
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    if direct:  # block-aligned ranges (a few KiB more) for the page-aligned buffer
        ranges = [
            (o - o % _DIRECT_ALIGN, -(-(o % _DIRECT_ALIGN + n) // _DIRECT_ALIGN) * _DIRECT_ALIGN)
            for o, n in ranges
        ]
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    view = memoryview(buf)
    view[::4096] = b"\0" * len(view[::4096])  # fault the buffer in before timing
    fd = os.open(ckpt, flags)
    try:
        t0, o0 = time.perf_counter(), os.times()
        total = 0
        for offset, length in ranges:
            done = 0
            while done < length:
                got = os.preadv(fd, [view[: min(chunk, length - done)]], offset + done)
                if got <= 0:
                    break  # the end of the file (an aligned range may run past it)
                done += got
            total += done
        t1, o1 = time.perf_counter(), os.times()
    finally:
        os.close(fd)
        view.release()
        buf.close()
    return {
        "time_s": t1 - t0,
        "bytes": total,
        "user_s": o1.user - o0.user,
        "sys_s": o1.system - o0.system,
        "GBps": total / (t1 - t0) / 1e9,
    }


def run_sequential_read(
    ckpt: str,
    ranges: List[Tuple[int, int]],
    chunk: int = 8 << 20,
    not_before: float = 0.0,
    evict_first: bool = False,
) -> Dict[str, Any]:
    """The disk's sequential read of ``ranges``: the floor of a load that needs those bytes.

    Two passes, each front to back with large ``pread`` calls into one reused buffer and
    nothing else (no parsing, no destination memory to fault in):

    * ``direct``: with ``O_DIRECT`` and 64 MiB requests, past the page cache, so the disk
      alone sets the pace; it leaves the page cache as it found it, cold;
    * ``buffered``: then through the page cache with the kernel's normal read-ahead, as
      ordinary reads go.

    Returns:
        The buffered pass's wall time, bytes and the process's user and system CPU time,
        and the direct pass's under ``"direct"`` (``None`` where ``O_DIRECT`` is refused).
    """
    wait_until(not_before)
    if evict_first:
        evict_from_page_cache(ckpt)
    try:
        # Large requests: the block layer splits them, so many are in flight at once.
        direct: Optional[Dict[str, Any]] = _sequential_pass(ckpt, ranges, 64 << 20, direct=True)
    except (OSError, AttributeError):  # no O_DIRECT on this platform or file system
        direct = None
    if evict_first:  # the buffered pass right after an eviction too
        evict_from_page_cache(ckpt)
    result = _sequential_pass(ckpt, ranges, chunk, direct=False)
    result["direct"] = direct
    return result


# --------------------------------------------------------------------------- entry point
def worker_main(argv: Sequence[str]) -> int:
    """Parse the worker's arguments, run one case and print its JSON result line.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(prog="bench_load.py --worker")
    parser.add_argument("--worker", required=True, choices=CASES + ("refs", "seqread"))
    parser.add_argument(
        "--ranges",
        default="",
        help="seqread: a JSON file of [[offset, length], ...] (default: the whole file)",
    )
    parser.add_argument("--class", dest="klass", choices=CLASSES, default="ours")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--cfg-file", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save-dir", required=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--sample-ms", type=float, default=1.0)
    parser.add_argument(
        "--not-before", type=float, default=0.0, help="time.time() before which not to start"
    )
    parser.add_argument(
        "--evict-first", action="store_true", help="evict the file the instant before the load"
    )
    args = parser.parse_args(list(argv))
    warnings.filterwarnings("ignore")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"--device {args.device}: CUDA is not available here.", file=sys.stderr)
            return 3
    if args.worker == "refs":
        result = run_references(args.ckpt, args.cfg_file, args.device, args.repeats)
    elif args.worker == "seqread":
        ranges = [[0, os.path.getsize(args.ckpt)]]
        if args.ranges:
            with open(args.ranges) as f:
                ranges = json.load(f)
        result = run_sequential_read(
            args.ckpt,
            [tuple(r) for r in ranges],
            not_before=args.not_before,
            evict_first=args.evict_first,
        )
    else:
        result = run_case(
            args.worker,
            args.klass,
            args.ckpt,
            args.cfg_file,
            args.device,
            args.save_dir,
            verify=not args.no_verify,
            profile=args.profile,
            sample_interval=args.sample_ms / 1e3,
            not_before=args.not_before,
            evict_first=args.evict_first,
        )
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0
