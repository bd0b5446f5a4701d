"""Checkpoints on object storage: loads and saves against one real S3 server (SeaweedFS).

The script starts one SeaweedFS server (``weed mini`` on 127.0.0.1, signed requests, see
``tests/helpers/s3server.py``), saves a Faster R-CNN R50-FPN **training** checkpoint
(model weights plus SGD momentum for every trainable parameter, about 333 MB) into a bucket
with the plugin's own ``EfficientDetectionCheckpointer.save``, and measures, in rounds in
which the cases take turns (the order rotates from round to round):

Loads (each repeat a fresh process, forked from a server process that has only imported
torch, detectron2, boto3 and the plugin; model and optimizer built, and every client made
and warmed by one small GET, before the clock starts; the loaded state is compared with the
file after the first repeat of each case, ``--verify-all`` after every one):
    get_ranged       floor (a): the whole object into memory with concurrent ranged GETs
                     (boto3, the plugin's piece size and number of threads)
    get_single       floor (a): the whole object with one ``get_object()["Body"].read()``
    ours_weights     ``EfficientDetectionCheckpointer(model).load(url, checkpointables=[])``
    ours_resume      ``resume_or_load`` from the s3:// prefix: model + optimizer (``optimizer=``
                     registered), then every optimizer state tensor written once
    stock_weights    (b) ``download_file`` to a local file, then stock ``DetectionCheckpointer``
    stock_resume         ``.load(path, checkpointables=[])`` / ``.load(path)``, timed together
    s3torch_weights  (c) ``s3torchconnector.S3Checkpoint(...).reader(url)`` into ``torch.load``,
    s3torch_resume       then the stock checkpointer's model/optimizer steps (if installed)

Saves (one process, after ``os.sync()`` and ``--settle-s`` seconds of quiet each; a first
round, not reported, allocates the async snapshot buffers and makes the clients):
    ours_sync        ``save()`` with ``CHECKPOINT.SAVE.ASYNC False``: returns durable + verified
    ours_async       ``save()`` with ``ASYNC True``: blocking time, and until ``wait()`` returns
    ours_async_local the same to a local folder (the "as on disk" reference)
    stock_local      stock ``DetectionCheckpointer.save`` (``torch.save``) to a local folder
    upload_file      boto3 ``upload_file`` of the same bytes, default ``TransferConfig``
    upload_multipart boto3 ``upload_file`` with the plugin's part size and parts in flight

Targets (printed PASS/FAIL): weights-only fetches <= 55% of the object and takes <= 0.6x
the plain full download (the faster floor); a full resume <= 1.1x the plain full download;
a synchronous save until durable + verified <= 1.5x a plain upload (the faster one); the
async save blocks <= 1.25x as long as the same async save to a local disk.

Run from the repository root (about 6 minutes on a 2-core machine):

    python benchmarks/bench_s3.py --repeats 3
    python benchmarks/bench_s3.py --repeats 1 --settle-s 0          # a quick look
    python benchmarks/bench_s3.py --profile ours_weights            # py-spy of one load

On loopback the link costs nothing and the server shares the client's cores, so every byte
costs CPU time rather than link time. ``--link-mbps`` puts the server's port behind a link
of that rate (``tc htb``, root only, see ``netshape.py``), as a node reading from a store
over the network sees it:

    python benchmarks/bench_s3.py --repeats 3 --link-mbps 1000   # a 1 Gbit/s link

Results go to ``<out-dir>/s3_cpu.json`` (``s3_cpu_link<MBPS>.json`` with a link);
``benchmarks/README.md`` explains the figures.
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, HERE)

from netshape import ShapedPort  # noqa: E402 (the folder is on the path first)

RESULT_MARKER = "@@BENCH_S3_RESULT@@ "
READY_MARKER = "@@BENCH_S3_READY@@"
DONE_MARKER = "@@BENCH_S3_DONE@@ "
BUCKET = "d2ckpt-bench"
LOAD_PREFIX = "load"  # the checkpoint every load reads: s3://BUCKET/load/model_final.pth
OBJECT_NAME = "model_final.pth"
FLOOR_CASES = ("get_ranged", "get_single")
LOAD_CASES = FLOOR_CASES + (
    "ours_weights",
    "ours_resume",
    "stock_weights",
    "stock_resume",
    "s3torch_weights",
    "s3torch_resume",
)
SAVE_CASES = (
    "ours_sync",
    "ours_async",
    "ours_async_local",
    "stock_local",
    "upload_file",
    "upload_multipart",
)
TARGET_WEIGHTS_BYTES = 0.55  # of the object's bytes
TARGET_WEIGHTS_TIME = 0.6  # x the plain full download
TARGET_RESUME_TIME = 1.1  # x the plain full download
TARGET_SAVE_TIME = 1.5  # x the plain upload
TARGET_ASYNC_VS_DISK = 1.25  # x the async save's blocking time to a local disk
# The plugin's transfer settings (read from its S3 store where it has them): the floors and
# the comparable multipart upload use the same piece size and concurrency.
DEFAULT_PIECE, DEFAULT_READERS, DEFAULT_PART, DEFAULT_UPLOADS = 8 << 20, 8, 16 << 20, 4


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (the driver's, and the worker's hidden ones)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds of every case (median taken)")
    p.add_argument(
        "--settle-s",
        type=float,
        default=2.0,
        help="seconds of quiet after os.sync() before each timed save (0: back to back)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads in the workers (0: default)"
    )
    p.add_argument("--cases", default="", help="comma-separated subset of the load cases")
    p.add_argument("--no-save", action="store_true", help="skip the save cases")
    p.add_argument(
        "--verify-all",
        action="store_true",
        help="check the loaded state against the file after every repeat (default: the first)",
    )
    p.add_argument("--no-load", action="store_true", help="skip the load cases")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument(
        "--link-mbps",
        type=float,
        default=0,
        help="shape the server's port to this many Mbit/s each way (tc netem, root; 0: no)",
    )
    p.add_argument("--timeout", type=int, default=300, help="seconds per worker process")
    p.add_argument(
        "--profile",
        choices=[c for c in LOAD_CASES if c not in FLOOR_CASES] + list(FLOOR_CASES),
        default=None,
        help="instead of the benchmark, profile one load of this case (py-spy, all threads; "
        "cProfile of the main thread where py-spy is missing)",
    )
    p.add_argument("--profile-out", default=None, help="where the profile's raw output goes")
    # Internal: one measured case in a fresh process.
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ref", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cprofile", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# =========================================================================== shared helpers
def _url(prefix: str, name: str = "") -> str:
    return f"s3://{BUCKET}/{prefix}" + (f"/{name}" if name else "")


def plugin_transfer_settings() -> Dict[str, int]:
    """Piece size and threads of the plugin's ranged GETs, part size and parts in flight."""
    try:
        from d2_efficient_ckpt.checkpoint.storage import s3 as s3mod

        return {
            "piece": int(getattr(s3mod, "_PIECE", DEFAULT_PIECE)),
            "readers": int(getattr(s3mod, "_READERS", DEFAULT_READERS)),
            "part": int(getattr(s3mod, "_PART", DEFAULT_PART)),
            "uploads": int(getattr(s3mod, "_UPLOADS_IN_FLIGHT", DEFAULT_UPLOADS)),
        }
    except ImportError:
        return {
            "piece": DEFAULT_PIECE,
            "readers": DEFAULT_READERS,
            "part": DEFAULT_PART,
            "uploads": DEFAULT_UPLOADS,
        }


def make_client() -> Any:
    """A boto3 client from the standard AWS chain, configured as the plugin's store is.

    Same pool size, retries and checksum settings (``Content-MD5``-era: no CRC trailers),
    path-style addressing: the plain transfers differ from ours only in what they do.
    """
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        config=Config(
            max_pool_connections=32,
            retries={"max_attempts": 5, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


class RequestCounter:
    """Counts a boto3 client's requests by operation, and the bytes its GETs returned."""

    def __init__(self, client: Any):
        self.ops: Counter = Counter()
        self.get_bytes = 0
        self._lock = threading.Lock()
        client.meta.events.register("after-call.s3", self._after)

    def _after(self, parsed: Any = None, model: Any = None, **_: Any) -> None:
        with self._lock:
            self.ops[model.name] += 1
            if model.name == "GetObject" and isinstance(parsed, dict):
                self.get_bytes += int(parsed.get("ContentLength", 0) or 0)

    def reset(self) -> None:
        with self._lock:
            self.ops.clear()
            self.get_bytes = 0

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "ops": dict(self.ops),
                "gets": self.ops.get("GetObject", 0),
                "get_bytes": self.get_bytes,
            }


SERVER_PID_ENV = "BENCH_S3_SERVER_PID"


def server_cpu_s() -> float:
    """CPU seconds (user + system) the S3 server process has used so far; nan if unknown."""
    pid = os.environ.get(SERVER_PID_ENV)
    if not pid:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _med(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


# =========================================================================== worker side
def _build(with_optimizer: bool):
    """R50-FPN (model zoo config, CPU) and its SGD optimizer, as ``load_worker`` builds them."""
    import torch
    from detectron2.modeling import build_model
    from load_worker import make_cfg

    from d2_efficient_ckpt import add_efficient_ckpt_config

    cfg, _ = make_cfg("cpu")
    add_efficient_ckpt_config(cfg)
    model = build_model(cfg)
    optimizer = None
    if with_optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    return cfg, model, optimizer


def _warm(client: Any) -> None:
    """One small GET, so that every case starts with a client that has made a request."""
    client.get_object(Bucket=BUCKET, Key=f"{LOAD_PREFIX}/last_checkpoint")["Body"].read()


def _load_case(
    case: str, ref: str, work_dir: str, profile: Optional[str], verify: bool = True
) -> Dict[str, Any]:
    """Run one load case; returns its figures (time, bytes, requests, memory, check)."""
    import procmem

    url = _url(LOAD_PREFIX, OBJECT_NAME)
    key = f"{LOAD_PREFIX}/{OBJECT_NAME}"
    settings = plugin_transfer_settings()
    out: Dict[str, Any] = {"case": case}
    resume = case.endswith("_resume")
    prepared: Callable[[], Any]
    model = optimizer = None
    counter: Optional[RequestCounter] = None
    store = None

    if case in FLOOR_CASES:
        client = make_client()
        counter = RequestCounter(client)
        size = int(client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        _warm(client)

        if case == "get_ranged":
            from concurrent.futures import ThreadPoolExecutor

            piece, readers = settings["piece"], settings["readers"]
            pool = ThreadPoolExecutor(readers)
            out.update(piece=piece, threads=readers)

            def prepared() -> Any:
                buf = bytearray(size)
                view = memoryview(buf)

                def get(a: int) -> None:
                    b = min(a + piece, size)
                    body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={a}-{b - 1}")
                    view[a:b] = body["Body"].read()

                list(pool.map(get, range(0, size, piece)))
                return buf

        else:

            def prepared() -> Any:
                return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    else:
        import torch

        cfg, model, optimizer = _build(with_optimizer=resume)
        if case.startswith("ours"):
            from d2_efficient_ckpt import EfficientDetectionCheckpointer
            from d2_efficient_ckpt.checkpoint.storage.registry import store_for

            store = store_for(url)
            _warm(store.client)
            counter = RequestCounter(store.client)
            if resume:
                ck = EfficientDetectionCheckpointer(
                    model, _url(LOAD_PREFIX), cfg=cfg, optimizer=optimizer
                )

                def prepared() -> Any:
                    return ck.resume_or_load("", resume=True)

            else:
                ck = EfficientDetectionCheckpointer(model, cfg=cfg)

                def prepared() -> Any:
                    return ck.load(url, checkpointables=[])

        elif case.startswith("stock"):
            from detectron2.checkpoint import DetectionCheckpointer

            client = make_client()
            _warm(client)
            counter = RequestCounter(client)
            extra = {"optimizer": optimizer} if resume else {}
            ck = DetectionCheckpointer(model, **extra)
            local = os.path.join(work_dir, f"download-{os.getpid()}.pth")
            split: Dict[str, float] = {}

            def prepared() -> Any:
                t = time.perf_counter()
                client.download_file(BUCKET, key, local)
                split["download_s"] = time.perf_counter() - t
                result = ck.load(local) if resume else ck.load(local, checkpointables=[])
                split["load_s"] = time.perf_counter() - t - split["download_s"]
                return result

        else:  # s3torchconnector
            from detectron2.checkpoint import DetectionCheckpointer
            from s3torchconnector import S3Checkpoint, S3ClientConfig

            checkpoint = S3Checkpoint(
                region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                endpoint=os.environ["AWS_ENDPOINT_URL_S3"],
                s3client_config=S3ClientConfig(force_path_style=True),
            )
            with checkpoint.reader(_url(LOAD_PREFIX, "last_checkpoint")) as r:
                r.read()  # the warm-up GET
            stock = DetectionCheckpointer(model, **({"optimizer": optimizer} if resume else {}))

            def prepared() -> Any:
                # fvcore's Checkpointer.load, with the file read from the connector's stream.
                with checkpoint.reader(url) as reader:
                    data = torch.load(reader, map_location="cpu", weights_only=True)
                incompatible = stock._load_model(data)
                if incompatible is not None:
                    stock._log_incompatible_keys(incompatible)
                if resume:
                    optimizer.load_state_dict(data.pop("optimizer"))
                return data

    from load_worker import _touch_optimizer_state, _verify

    if counter is not None:
        counter.reset()
    if store is not None:
        store.fetched.update(requests=0, bytes=0)
    rss0 = procmem.read_status().get("VmRSS", 0)
    procmem.reset_peak_rss()
    cpu0, server0 = time.process_time(), server_cpu_s()
    profiler = None
    if profile == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    result = prepared()
    if resume:
        _touch_optimizer_state(optimizer)
    out["time_s"] = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    out["cpu_s"] = time.process_time() - cpu0  # every thread of the process
    out["server_cpu_s"] = server_cpu_s() - server0
    out["peak_rss_growth"] = procmem.read_status().get("VmHWM", 0) - rss0
    if counter is not None:
        out["requests"] = counter.snapshot()
    if store is not None:
        out["fetched"] = dict(store.fetched)
    if case.startswith("stock"):
        out.update(split)  # type: ignore[possibly-undefined]
        os.remove(local)  # type: ignore[possibly-undefined]
    if case in FLOOR_CASES:
        out["bytes"] = len(result)
        del result
    else:
        out["bytes"] = (
            out["fetched"]["bytes"]
            if "fetched" in out
            else out.get("requests", {}).get("get_bytes") or os.path.getsize(ref)
        )
        if resume and isinstance(result, dict):
            out["iteration"] = result.get("iteration")
        if verify:  # outside the clock; the first repeat of each case by default
            out["check"] = _verify(model, optimizer, ref)
        if case.startswith("ours") and getattr(ck, "last_report", None) is not None:
            out["report_path"] = getattr(ck.last_report, "path", None)
    if profiler is not None:
        import io
        import pstats

        for order in ("cumulative", "tottime"):
            s = io.StringIO()
            pstats.Stats(profiler, stream=s).sort_stats(order).print_stats(30)
            print(s.getvalue())
    return out


def _save_case_runner(args: argparse.Namespace) -> Dict[str, Any]:
    """All save rounds in one process: every case once per round, in rotating order."""
    import torch
    from boto3.s3.transfer import TransferConfig
    from detectron2.checkpoint import DetectionCheckpointer

    from d2_efficient_ckpt import EfficientDetectionCheckpointer
    from d2_efficient_ckpt.checkpoint.storage.registry import store_for

    settings = plugin_transfer_settings()
    cfg, model, optimizer = _build(with_optimizer=True)
    torch.manual_seed(0)
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    local_root = os.path.join(args.work_dir, "saves")
    os.makedirs(os.path.join(local_root, "stock"), exist_ok=True)

    def ours(directory: str, asynchronous: bool) -> Any:
        c = cfg.clone()
        c.CHECKPOINT.SAVE.ASYNC = asynchronous
        c.CHECKPOINT.SAVE.MAX_TO_KEEP = 1
        return EfficientDetectionCheckpointer(model, directory, cfg=c, optimizer=optimizer)

    cks = {
        "ours_sync": ours(_url("save-sync"), False),
        "ours_async": ours(_url("save-async"), True),
        "ours_async_local": ours(os.path.join(local_root, "async"), True),
    }
    stock = DetectionCheckpointer(model, os.path.join(local_root, "stock"), optimizer=optimizer)
    client = make_client()
    counter = RequestCounter(client)
    store_counter = RequestCounter(store_for(_url("save-sync")).client)
    configs = {
        "upload_file": TransferConfig(),
        "upload_multipart": TransferConfig(
            multipart_threshold=settings["part"],
            multipart_chunksize=settings["part"],
            max_concurrency=settings["uploads"],
        ),
    }
    out: Dict[str, Any] = {c: [] for c in SAVE_CASES}
    started = time.perf_counter()
    out["settings"] = settings
    out["defaults"] = {
        "chunk": TransferConfig().multipart_chunksize,
        "threads": TransferConfig().max_concurrency,
    }

    def run(case: str, i: int) -> Dict[str, Any]:
        cpu0, server0 = time.process_time(), server_cpu_s()
        row = run_one(case, i)
        row["cpu_s"] = time.process_time() - cpu0
        row["server_cpu_s"] = server_cpu_s() - server0
        return row

    def run_one(case: str, i: int) -> Dict[str, Any]:
        name = f"model_{i:07d}"
        start = time.perf_counter()
        if case in cks:
            ck = cks[case]
            store_counter.reset()
            ck.save(name, iteration=i)
            blocked = time.perf_counter() - start
            ck.wait()
            durable = time.perf_counter() - start
            res = ck.saver.last_result
            row = {
                "blocked_s": blocked,
                "durable_s": durable,
                "write_s": res.write_s,
                "verify_s": res.verify_s,
            }
            if case != "ours_async_local":
                row["requests"] = store_counter.snapshot()["ops"]
            return row
        if case == "stock_local":
            stock.save(name)
            blocked = time.perf_counter() - start
            previous = os.path.join(stock.save_dir, f"model_{i - 1:07d}.pth")
            if os.path.exists(previous):  # one file kept, as MAX_TO_KEEP 1 does for ours
                os.remove(previous)
            return {"blocked_s": blocked, "durable_s": None}
        counter.reset()
        client.upload_file(args.ref, BUCKET, f"plain/{case}.pth", Config=configs[case])
        blocked = time.perf_counter() - start
        return {"blocked_s": blocked, "durable_s": blocked, "requests": counter.snapshot()["ops"]}

    # Round 0 (not reported): the async snapshot buffers are allocated (the first async save
    # of each checkpointer), the store's client is made (it is one per process, shared by
    # the three of ours), the plain client's connection made.
    first = {}
    for case in ("ours_async", "ours_async_local"):
        first[case] = run(case, 0)["blocked_s"]
    client.put_object(Bucket=BUCKET, Key="plain/warm-up", Body=b"x")
    out["first_round_blocked_s"] = first
    for i in range(1, args.repeats + 1):
        k = (i - 1) % len(SAVE_CASES)
        order = SAVE_CASES[k:] + SAVE_CASES[:k]
        line = []
        for case in order:
            os.sync()
            time.sleep(args.settle_s)
            row = run(case, i)
            out[case].append(row)
            line.append(
                f"{case} {row['blocked_s']:.2f}"
                + (
                    f"/{row['durable_s']:.2f}"
                    if row.get("durable_s") and case.startswith("ours_async")
                    else ""
                )
            )
        print("  save round " + str(i) + ": " + ", ".join(line) + " s", flush=True)
    out["wall_s"] = time.perf_counter() - started
    out["object_size"] = os.path.getsize(args.ref)
    out["stock_file_size"] = os.path.getsize(
        os.path.join(stock.save_dir, f"model_{args.repeats:07d}.pth")
    )
    return out


def _make_checkpoint(args: argparse.Namespace) -> Dict[str, Any]:
    """Save the training checkpoint every load reads, with the plugin's own save."""
    import torch

    from d2_efficient_ckpt import EfficientDetectionCheckpointer

    torch.manual_seed(0)
    cfg, model, optimizer = _build(with_optimizer=True)
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ck = EfficientDetectionCheckpointer(model, _url(LOAD_PREFIX), cfg=cfg, optimizer=optimizer)
    start = time.perf_counter()
    ck.save("model_final", iteration=89999)
    elapsed = time.perf_counter() - start

    def nbytes(tensors: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    opt_bytes = sum(nbytes(s.values()) for s in optimizer.state.values())
    return {
        "save_s": elapsed,
        "model_bytes": nbytes(model.state_dict().values()),
        "optimizer_bytes": opt_bytes,
        "model_tensors": len(model.state_dict()),
    }


def zygote_main(args: argparse.Namespace) -> int:
    """A fork server for the measured loads: import once, fork a fresh child per load.

    Importing torch and detectron2 takes 5-12 s on the 2-core machine, more than most loads;
    each measured load runs in a child forked from this process before it made any client,
    model or tensor, so every child starts as a fresh process would (no heap, allocator
    cache, connection or S3 store carried over from an earlier load) without the imports.
    Reads one JSON command per line on stdin (``{"case": ..., "verify": bool}``); for each,
    the child prints its result line and this process prints :data:`DONE_MARKER` after it.
    """
    import traceback

    import boto3  # noqa: F401
    import procmem  # noqa: F401
    import torch
    from detectron2.checkpoint import DetectionCheckpointer  # noqa: F401
    from detectron2.modeling import build_model  # noqa: F401
    from load_worker import _verify  # noqa: F401

    from d2_efficient_ckpt import EfficientDetectionCheckpointer  # noqa: F401

    if importlib.util.find_spec("s3torchconnector") is not None:
        try:
            import s3torchconnector  # noqa: F401
        except Exception:  # noqa: BLE001 (the case reports its own failure)
            pass
    print(READY_MARKER, flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the measured process
            code = 1
            try:
                if args.threads > 0:
                    torch.set_num_threads(args.threads)
                result = _load_case(
                    command["case"], args.ref, args.work_dir, None, command.get("verify", True)
                )
                print(RESULT_MARKER + json.dumps(result), flush=True)
                code = 0
            except BaseException:  # noqa: BLE001 (reported to the driver, then exit)
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(DONE_MARKER + json.dumps({"status": status}), flush=True)
    return 0


def worker_main(args: argparse.Namespace) -> int:
    """Entry point of a worker process: run ``args.worker`` and print its result line."""
    import warnings

    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("d2_efficient_ckpt").setLevel(logging.WARNING)
    logging.getLogger("fvcore").setLevel(logging.WARNING)
    if args.worker == "zygote":
        return zygote_main(args)
    if args.worker not in FLOOR_CASES:
        import torch

        if args.threads > 0:
            torch.set_num_threads(args.threads)
    if args.worker == "make":
        result = _make_checkpoint(args)
    elif args.worker == "save":
        result = _save_case_runner(args)
    else:
        result = _load_case(
            args.worker, args.ref, args.work_dir, "cprofile" if args.cprofile else None
        )
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


# =========================================================================== driver side
def _worker_env(server_env: Dict[str, str]) -> Dict[str, str]:
    # Only the benchmark's server reaches the workers: no AWS_* variable of the machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server_env)
    env["PYTHONPATH"] = os.pathsep.join(
        [REPO_ROOT, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_worker(
    worker: str,
    args: argparse.Namespace,
    env: Dict[str, str],
    extra: Sequence[str] = (),
    prefix: Sequence[str] = (),
    timeout: Optional[int] = None,
) -> Dict[str, Any]:
    """Run ``bench_s3.py --worker WORKER`` in a fresh interpreter; returns its result.

    Raises:
        RuntimeError: the worker failed or printed no result (the message ends with the tail
            of its output).
    """
    cmd = list(prefix) + [sys.executable, os.path.abspath(__file__), "--worker", worker]
    cmd += ["--ref", args.ref, "--work-dir", args.work_dir, "--threads", str(args.threads)]
    cmd += ["--repeats", str(args.repeats), "--settle-s", str(args.settle_s), *extra]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout or args.timeout,
        env=env,
        cwd=REPO_ROOT,
    )
    if worker == "save":  # its per-round lines
        for line in proc.stdout.splitlines():
            if line.startswith("  save round"):
                print(line, flush=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
            result["_stdout"] = proc.stdout if "--cprofile" in extra else ""
            return result
    tail = (proc.stdout + proc.stderr)[-3000:]
    raise RuntimeError(f"worker {worker} failed (exit {proc.returncode}):\n{tail}")


class Zygote:
    """The driver's end of :func:`zygote_main`: one measured load per :meth:`run`."""

    def __init__(self, args: argparse.Namespace, env: Dict[str, str]):
        import queue

        self._errors = open(os.path.join(args.work_dir, "zygote.err"), "w+")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "zygote"]
        cmd += ["--ref", args.ref, "--work-dir", args.work_dir, "--threads", str(args.threads)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,  # its forked children are in its process group
        )
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._read_until(lambda line: line.startswith(READY_MARKER), args.timeout, "start")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def alive(self) -> bool:
        """Whether the fork server still runs."""
        return self.proc.poll() is None

    def _tail(self) -> str:
        if self._errors.closed:
            return ""
        self._errors.flush()
        self._errors.seek(0)
        return self._errors.read()[-3000:]

    def _read_until(self, stop: Callable[[str], bool], timeout: float, what: str) -> List[str]:
        import queue

        deadline = time.monotonic() + timeout
        seen: List[str] = []
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                tail = self._tail()
                self.close()
                raise RuntimeError(f"{what}: no answer within {timeout} s\n{tail}") from None
            if line is None:
                raise RuntimeError(f"{what}: the fork server exited\n{self._tail()}")
            seen.append(line)
            if stop(line):
                return seen

    def run(self, case: str, timeout: float, verify: bool = True) -> Dict[str, Any]:
        """One measured load of ``case`` in a fresh child; its result.

        Raises:
            RuntimeError: the child failed (the message ends with the tail of its errors).
        """
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"case": case, "verify": verify}) + "\n")
        self.proc.stdin.flush()
        lines = self._read_until(lambda line: line.startswith(DONE_MARKER), timeout, case)
        for line in lines:
            if line.startswith(RESULT_MARKER):
                return json.loads(line[len(RESULT_MARKER) :])
        raise RuntimeError(f"worker {case} failed:\n{self._tail()}")

    def close(self) -> None:
        """End the fork server (and any child of its group), by its process group id."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._errors.close()


def versions() -> Dict[str, Optional[str]]:
    """Versions of the clients, the server and the libraries involved."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in ("boto3", "botocore", "s3transfer", "urllib3", "torch", "detectron2"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    try:
        from importlib.metadata import version

        out["s3torchconnector"] = version("s3torchconnector")
    except Exception:  # noqa: BLE001
        out["s3torchconnector"] = None
    try:
        from tests.helpers.s3server import weed_binary

        text = subprocess.run(
            [weed_binary(), "version"], capture_output=True, text=True, timeout=30
        ).stdout
        out["seaweedfs"] = text.split()[2] if len(text.split()) > 2 else text.strip()
    except Exception:  # noqa: BLE001
        out["seaweedfs"] = None
    return out


def code_version() -> Dict[str, Any]:
    """The commit, whether the package has local changes, and a hash of the S3 store's source.

    The plugin is edited while benchmarks run; the figures belong to the code they measured.
    """
    import hashlib

    out: Dict[str, Any] = {}
    try:
        git = ["git", "-C", REPO_ROOT]
        out["commit"] = subprocess.run(
            git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        status = subprocess.run(
            git + ["status", "--porcelain", "--", "d2_efficient_ckpt"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        out["package_changed_files"] = len(status.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    source = os.path.join(REPO_ROOT, "d2_efficient_ckpt", "checkpoint", "storage", "s3.py")
    if os.path.exists(source):
        with open(source, "rb") as f:
            out["s3.py_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
    return out


def machine() -> Dict[str, Any]:
    """CPU count and model, memory, load average (no host names)."""
    import procmem

    info: Dict[str, Any] = {
        "cpu_model": procmem._cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_GB": round((procmem._mem_total() or 0) / 1e9, 1),
        "os": f"{platform.system()} {platform.release()}",
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def s3torch_status() -> Tuple[bool, str]:
    """Whether ``s3torchconnector`` can be imported, and a line saying so."""
    if importlib.util.find_spec("s3torchconnector") is None:
        return False, "s3torchconnector is not installed (pip install s3torchconnector): skipped"
    try:
        import s3torchconnector  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"s3torchconnector does not import ({e}): skipped"
    return True, "s3torchconnector " + versions().get("s3torchconnector", "?")


# --------------------------------------------------------------------------- summaries
LOAD_LABELS = {
    "get_ranged": "floor: ranged GETs into memory (boto3)",
    "get_single": "floor: one get_object().read() (boto3)",
    "ours_weights": "ours: load(url, checkpointables=[])",
    "ours_resume": "ours: resume_or_load (model + optimizer)",
    "stock_weights": "stock: download_file + load(path, checkpointables=[])",
    "stock_resume": "stock: download_file + load(path) (model + optimizer)",
    "s3torch_weights": "s3torchconnector reader + torch.load, weights",
    "s3torch_resume": "s3torchconnector reader + torch.load, model + optimizer",
}
SAVE_LABELS = {
    "ours_sync": "ours, sync, to S3",
    "ours_async": "ours, async, to S3",
    "ours_async_local": "ours, async, local disk",
    "stock_local": "stock torch.save, local disk",
    "upload_file": "boto3 upload_file, default TransferConfig",
    "upload_multipart": "boto3 upload_file, plugin's parts",
}


def summarize_loads(runs: Dict[str, List[Dict[str, Any]]], size: int) -> List[Dict[str, Any]]:
    """Medians per load case."""
    rows = []
    for case in LOAD_CASES:
        rs = runs.get(case) or []
        if not rs:
            continue
        row: Dict[str, Any] = {
            "case": case,
            "repeats": len(rs),
            "time_s": _med([r["time_s"] for r in rs]),
            "times_s": [round(r["time_s"], 3) for r in rs],
            "cpu_s": _med([r["cpu_s"] for r in rs]),
            "server_cpu_s": _med([r.get("server_cpu_s") for r in rs]),
            "bytes": _med([r["bytes"] for r in rs]),
            "gets": _med([r.get("requests", {}).get("gets") for r in rs if "requests" in r]),
            "peak_rss_growth": _med([r["peak_rss_growth"] for r in rs]),
            "check_ok": all(r.get("check", {}).get("ok", True) for r in rs),
        }
        row["bytes_pct"] = 100.0 * row["bytes"] / size
        if case.startswith("stock"):
            row["download_s"] = _med([r["download_s"] for r in rs])
            row["load_s"] = _med([r["load_s"] for r in rs])
        ops: Counter = Counter()
        for r in rs[:1]:
            ops.update(r.get("requests", {}).get("ops", {}))
        row["ops_first_repeat"] = dict(ops)
        rows.append(row)
    return rows


def summarize_saves(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Medians per save case."""
    rows = []
    for case in SAVE_CASES:
        rs = res.get(case) or []
        if not rs:
            continue
        durable = [r["durable_s"] for r in rs if r.get("durable_s") is not None]
        row = {
            "case": case,
            "repeats": len(rs),
            "blocked_s": _med([r["blocked_s"] for r in rs]),
            "blocked_all_s": [round(r["blocked_s"], 3) for r in rs],
            "durable_s": _med(durable) if durable else None,
            "durable_all_s": [round(v, 3) for v in durable],
            "cpu_s": _med([r.get("cpu_s") for r in rs]),
            "server_cpu_s": _med([r.get("server_cpu_s") for r in rs]),
        }
        if case.startswith("ours"):
            row["write_s"] = _med([r["write_s"] for r in rs])
            row["verify_s"] = _med([r["verify_s"] for r in rs])
        if rs[0].get("requests"):
            row["ops"] = rs[0]["requests"]
        rows.append(row)
    return rows


def _target(name: str, value: float, limit: float, **extra: Any) -> Dict[str, Any]:
    return {"target": name, "value": value, "limit": limit, "pass": value <= limit, **extra}


def evaluate(loads: List[Dict[str, Any]], saves: List[Dict[str, Any]], size: int) -> Dict[str, Any]:
    """The floors, the ratios against them and the PASS/FAIL targets."""
    by = {r["case"]: r for r in loads}
    sv = {r["case"]: r for r in saves}
    out: Dict[str, Any] = {"targets": [], "ratios": {}}
    floors = [by[c] for c in FLOOR_CASES if c in by]
    if floors:
        best = min(floors, key=lambda r: r["time_s"])
        out["download_floor"] = {
            "case": best["case"],
            "time_s": best["time_s"],
            "MBps": size / best["time_s"] / 1e6,
        }
        floor = best["time_s"]
        for case in LOAD_CASES:
            if case in by and case not in FLOOR_CASES:
                out["ratios"][f"{case} / plain full download"] = by[case]["time_s"] / floor
        if "ours_weights" in by:
            w = by["ours_weights"]
            out["targets"].append(
                _target(
                    "weights-only: bytes fetched / object",
                    w["bytes"] / size,
                    TARGET_WEIGHTS_BYTES,
                    percent=True,
                )
            )
            out["targets"].append(
                _target(
                    "weights-only: time / plain full download",
                    w["time_s"] / floor,
                    TARGET_WEIGHTS_TIME,
                )
            )
        if "ours_resume" in by:
            out["targets"].append(
                _target(
                    "full resume: time / plain full download",
                    by["ours_resume"]["time_s"] / floor,
                    TARGET_RESUME_TIME,
                )
            )
        for ours, other in (
            ("ours_weights", "stock_weights"),
            ("ours_resume", "stock_resume"),
            ("ours_weights", "s3torch_weights"),
            ("ours_resume", "s3torch_resume"),
        ):
            if ours in by and other in by:
                out["ratios"][f"{ours} / {other}"] = by[ours]["time_s"] / by[other]["time_s"]
    uploads = [sv[c] for c in ("upload_file", "upload_multipart") if c in sv]
    if uploads:
        best = min(uploads, key=lambda r: r["blocked_s"])
        out["upload_floor"] = {
            "case": best["case"],
            "time_s": best["blocked_s"],
            "MBps": size / best["blocked_s"] / 1e6,
        }
        if "ours_sync" in sv:
            out["targets"].append(
                _target(
                    "sync save until durable + verified / plain upload",
                    sv["ours_sync"]["durable_s"] / best["blocked_s"],
                    TARGET_SAVE_TIME,
                )
            )
        if "ours_async" in sv:
            out["ratios"]["async save until wait() / plain upload"] = (
                sv["ours_async"]["durable_s"] / best["blocked_s"]
            )
    if "ours_async" in sv and "ours_async_local" in sv:
        out["targets"].append(
            _target(
                "async save blocking, S3 / local disk",
                sv["ours_async"]["blocked_s"] / sv["ours_async_local"]["blocked_s"],
                TARGET_ASYNC_VS_DISK,
            )
        )
    if "ours_async" in sv and "stock_local" in sv:
        out["ratios"]["async save blocking to S3 / stock torch.save blocking (local)"] = (
            sv["ours_async"]["blocked_s"] / sv["stock_local"]["blocked_s"]
        )
    return out


def report(res: Dict[str, Any]) -> str:
    """The tables, as printed and as pasted into the README."""
    from tabulate import tabulate

    size = res["object"]["size"]
    mb = 1e6
    lines = []
    m, v = res["machine"], res["versions"]
    lines.append(
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), "
        f"{m['mem_total_GB']} GB, {m['os']}; load average at start {m.get('loadavg_at_start')}, "
        f"at end {res.get('loadavg_at_end')}"
    )
    lines.append("Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None))
    lines.append(
        f"Object: s3://{BUCKET}/{LOAD_PREFIX}/{OBJECT_NAME}, {size / mb:.1f} MB "
        f"(model tensors {res['object']['model_bytes'] / mb:.1f} MB = "
        f"{100 * res['object']['model_bytes'] / size:.1f}%, optimizer state "
        f"{res['object']['optimizer_bytes'] / mb:.1f} MB); repeats {res['args']['repeats']}; "
        f"plugin: {res['settings']['piece'] >> 20} MiB ranged GETs, {res['settings']['readers']} "
        f"threads; {res['settings']['part'] >> 20} MiB parts, {res['settings']['uploads']} in "
        "flight"
    )
    lines.append(f"Link: {res.get('link') or 'loopback, unshaped'}")
    lines.append(f"s3torchconnector: {res['s3torch']}")
    code = res.get("code", {})
    lines.append(
        f"Code: commit {code.get('commit')}, {code.get('package_changed_files')} changed files "
        f"in d2_efficient_ckpt/, s3.py sha256 {code.get('s3.py_sha256')}"
    )
    ev = res["evaluation"]
    floor = ev.get("download_floor", {}).get("time_s")
    if res["loads"]:
        table = []
        for r in res["loads"]:
            table.append(
                [
                    LOAD_LABELS[r["case"]],
                    f"{r['time_s']:.3f}",
                    ", ".join(f"{t:.2f}" for t in r["times_s"]),
                    f"{r['time_s'] / floor:.2f}x" if floor else "",
                    f"{r['bytes'] / mb:.1f} ({r['bytes_pct']:.1f}%)",
                    "" if r["gets"] != r["gets"] else f"{r['gets']:.0f}",
                    f"{r['cpu_s']:.2f} / {r['server_cpu_s']:.2f}",
                    f"{r['peak_rss_growth'] / mb:.0f}",
                    "ok" if r["check_ok"] else "WRONG",
                ]
            )
        lines.append("")
        lines.append(
            tabulate(
                table,
                headers=[
                    "load",
                    "median s",
                    "repeats s",
                    "vs plain download",
                    "MB fetched",
                    "GETs",
                    "CPU s: client / server",
                    "peak RSS +MB",
                    "check",
                ],
                tablefmt="github",
            )
        )
        for r in res["loads"]:
            if r["case"].startswith("ours"):
                ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops_first_repeat"].items()))
                lines.append(f"{r['case']} requests (first repeat): {ops}")
            if r["case"].startswith("stock"):
                lines.append(
                    f"{r['case']}: download_file {r['download_s']:.3f} s + load "
                    f"{r['load_s']:.3f} s (medians)"
                )
    if res["saves"]:
        table = []
        up = ev.get("upload_floor", {}).get("time_s")
        for r in res["saves"]:
            durable = r["durable_s"]
            table.append(
                [
                    SAVE_LABELS[r["case"]],
                    f"{r['blocked_s']:.3f}",
                    ", ".join(f"{t:.2f}" for t in r["blocked_all_s"]),
                    "never fsynced" if durable is None else f"{durable:.3f}",
                    ""
                    if durable is None or not up or r["case"].endswith("local")
                    else f"{durable / up:.2f}x",
                    f"{r['write_s']:.2f} / {r['verify_s']:.2f}" if "write_s" in r else "",
                    f"{r['cpu_s']:.2f} / {r['server_cpu_s']:.2f}",
                ]
            )
        lines.append("")
        lines.append(
            tabulate(
                table,
                headers=[
                    "save",
                    "blocked s (median)",
                    "blocked, repeats s",
                    "until durable s",
                    "vs plain upload",
                    "ours: write / check s",
                    "CPU s: client / server",
                ],
                tablefmt="github",
            )
        )
    lines.append("")
    lines.append("Targets:")
    for t in ev["targets"]:
        value = f"{100 * t['value']:.1f}%" if t.get("percent") else f"{t['value']:.2f}x"
        limit = f"{100 * t['limit']:.0f}%" if t.get("percent") else f"{t['limit']:.2f}x"
        lines.append(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {value} (<= {limit})")
    if ev.get("download_floor"):
        f = ev["download_floor"]
        lines.append(
            f"Plain full download: {f['case']}, {f['time_s']:.3f} s ({f['MBps']:.0f} MB/s)"
        )
    if ev.get("upload_floor"):
        f = ev["upload_floor"]
        lines.append(f"Plain upload: {f['case']}, {f['time_s']:.3f} s ({f['MBps']:.0f} MB/s)")
    for k, val in ev["ratios"].items():
        lines.append(f"  {k}: {val:.2f}x")
    return "\n".join(lines)


# --------------------------------------------------------------------------- profiling
def profile_one(args: argparse.Namespace, env: Dict[str, str]) -> None:
    """One load of ``args.profile`` under py-spy (every thread), summarized.

    Two recordings, each of a fresh worker: busy samples only (where CPU time goes) and with
    ``--idle`` (where wall time goes: waiting for a GET, for the GIL, for a future). Only
    the timed region counts: the main thread inside the measured call, and the S3 threads.
    """
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    base = args.profile_out or os.path.join(args.work_dir, args.profile)
    if not os.access(pyspy, os.X_OK):
        print("py-spy not found: cProfile of the main thread instead (pip install py-spy)")
        res = run_worker(args.profile, args, env, extra=["--cprofile"])
        print(res.pop("_stdout", ""))
        print(json.dumps(res, indent=1))
        return
    for mode, flags in (("busy", []), ("wall", ["--idle"])):
        raw = f"{base}.pyspy-{mode}.txt"
        prefix = [
            pyspy,
            "record",
            "--format",
            "raw",
            "--threads",
            "--rate",
            str(PYSPY_HZ),
            "--nonblocking",
            *flags,
            "-o",
            raw,
            "--",
        ]
        res = run_worker(args.profile, args, env, prefix=prefix)
        res.pop("_stdout", None)
        print(
            f"== {mode} ({'with' if flags else 'without'} idle samples): "
            f"load {res['time_s']:.3f} s, CPU {res['cpu_s']:.2f} s, "
            f"{res.get('requests', {}).get('gets', '?')} GETs, {res['bytes'] / 1e6:.1f} MB"
        )
        print(summarize_pyspy(raw))
        print(f"raw stacks (py-spy --format raw, with thread names): {raw}\n")


PYSPY_HZ = 200


def _in_timed_region(frames: List[str]) -> bool:
    """A sample of the measured call: the main thread inside ``prepared``, or a worker thread."""
    if "MainThread" in frames[0]:
        return any(f.split(" (")[0].endswith("prepared") for f in frames[1:])
    return "):" in frames[0]  # a named thread other than the main one (pools, the S3 readers)


def summarize_pyspy(path: str, top: int = 25) -> str:
    """Samples by thread, and the functions with the most own and inclusive samples."""
    threads: Counter = Counter()
    leaves: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            if not _in_timed_region(frames):
                continue
            n = int(count)
            total += n
            name = frames[0].split("): ", 1)[-1]
            threads[re.sub(r"_\d+$", "_N", name)] += n
            leaves[frames[-1]] += n
            for fr in set(frames[1:]):
                inclusive[fr] += n
    if not total:
        return "py-spy: no samples in the timed region"
    out = [
        f"py-spy: {total} samples in the timed region ({PYSPY_HZ} Hz: "
        f"{total / PYSPY_HZ:.2f} thread-seconds)"
    ]
    out.append("by thread:")
    out += [f"  {n:6d} {100 * n / total:5.1f}%  {t}" for t, n in threads.most_common(12)]
    out.append("own samples (top functions):")
    out += [f"  {n:6d} {100 * n / total:5.1f}%  {fr}" for fr, n in leaves.most_common(top)]
    out.append("inclusive samples:")
    out += [f"  {n:6d} {100 * n / total:5.1f}%  {fr}" for fr, n in inclusive.most_common(top)]
    return "\n".join(out)


# --------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    from tests.helpers.s3server import ADMIN, SeaweedServer

    started = time.perf_counter()
    info = {
        "machine": machine(),
        "versions": versions(),
        "code": code_version(),
        "settings": plugin_transfer_settings(),
    }
    print(json.dumps(info["machine"]), flush=True)
    print(json.dumps(info["versions"]), flush=True)
    s3torch_ok, s3torch_line = s3torch_status()
    cases = [c for c in (args.cases.split(",") if args.cases else LOAD_CASES) if c]
    unknown = set(cases) - set(LOAD_CASES)
    if unknown:
        print(f"unknown cases: {sorted(unknown)}; known: {', '.join(LOAD_CASES)}")
        return 2
    if not s3torch_ok:
        cases = [c for c in cases if not c.startswith("s3torch")]
    print(s3torch_line, flush=True)

    work_dir = tempfile.mkdtemp(prefix="d2ckpt-bench-s3-")
    args.work_dir = work_dir
    args.ref = os.path.join(work_dir, "reference.pth")
    server = SeaweedServer(identities=[ADMIN])
    zygote: Optional[Zygote] = None
    link: Optional[ShapedPort] = None

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # the finally below stops the server

    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        server.make_bucket(BUCKET)
        if args.link_mbps:
            link = ShapedPort(server.ports["s3.port"], args.link_mbps).start()
            info["link"] = link.describe()
            print(f"Link: {info['link']}", flush=True)
        env = _worker_env(server.env())
        env[SERVER_PID_ENV] = str(server.pid)
        print(f"SeaweedFS at {server.endpoint} (pid {server.pid})", flush=True)
        # The fork server imports while the checkpoint is made (its children need both).
        zygote = None if args.profile or args.no_load else Zygote(args, env)
        made = run_worker("make", args, env)
        client = server.client()
        key = f"{LOAD_PREFIX}/{OBJECT_NAME}"
        client.download_file(BUCKET, key, args.ref)
        size = os.path.getsize(args.ref)
        print(
            f"checkpoint saved by ours to s3://{BUCKET}/{key}: {size / 1e6:.1f} MB "
            f"(first save, with imports warm: {made['save_s']:.2f} s)",
            flush=True,
        )
        if args.profile:
            profile_one(args, env)
            return 0

        runs: Dict[str, List[Dict[str, Any]]] = {c: [] for c in cases}
        s3torch_error = None
        for i in range(args.repeats if not args.no_load else 0):
            k = i % len(cases)
            order = cases[k:] + cases[:k]
            for case in order:
                if case.startswith("s3torch") and s3torch_error is not None:
                    continue
                try:
                    assert zygote is not None
                    r = zygote.run(case, args.timeout, verify=i == 0 or args.verify_all)
                except RuntimeError as e:
                    if not case.startswith("s3torch"):
                        raise
                    s3torch_error = str(e).strip().splitlines()[-1][:300]
                    if zygote is None or not zygote.alive:  # it timed out: a new one
                        zygote = Zygote(args, env)
                    print(f"  s3torchconnector failed, skipped from now on: {s3torch_error}")
                    continue
                runs[case].append(r)
                print(
                    f"  [{time.perf_counter() - started:4.0f} s] round {i + 1} {case}: "
                    f"{r['time_s']:.3f} s, "
                    f"{r['bytes'] / 1e6:.1f} MB, {r.get('requests', {}).get('gets', '?')} GETs",
                    flush=True,
                )
        if zygote is not None:
            zygote.close()
            zygote = None
        if s3torch_error is not None:
            s3torch_line += f"; failed against this server: {s3torch_error}"
        save_res: Dict[str, Any] = {}
        if not args.no_save:
            save_res = run_worker("save", args, env, timeout=max(args.timeout, 900))
            save_res.pop("_stdout", None)
    finally:
        if zygote is not None:
            zygote.close()
        if link is not None:
            link.remove()
        server.stop()
        shutil.rmtree(work_dir, ignore_errors=True)

    loads = summarize_loads(runs, size)
    saves = summarize_saves(save_res) if save_res else []
    res = {
        "date": datetime.date.today().isoformat(),
        # Paths relative to the repository: a result file names no machine's folders.
        "args": {
            k: (os.path.relpath(v, REPO_ROOT) if k == "out_dir" else v)
            for k, v in vars(args).items()
            if k not in ("worker", "ref", "work_dir")
        },
        **info,
        "s3torch": s3torch_line,
        "object": {"size": size, **made},
        "loads": loads,
        "saves": saves,
        "raw": {"loads": runs, "saves": save_res},
        "wall_s": time.perf_counter() - started,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
    }
    res["evaluation"] = evaluate(loads, saves, size)
    text = report(res)
    print()
    print(text)
    print(f"\n(whole run {res['wall_s']:.0f} s)")
    os.makedirs(args.out_dir, exist_ok=True)
    name = f"s3_cpu_link{args.link_mbps:g}.json" if args.link_mbps else "s3_cpu.json"
    path = os.path.join(args.out_dir, name)
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(f"results: {os.path.relpath(path, REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
