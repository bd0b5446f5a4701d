"""Cold-read strategies compared: how the loader should read a checkpoint off the disk.

Reads the first half of a file (what a weights-only load of a training checkpoint needs)
and the whole file (a full resume) into one preallocated, pre-faulted destination, each
repeat in a fresh process started after the file was evicted from the page cache and a
settle time (see ``README.md``, "Cold reads"), with each strategy:

    buffered   8 MiB ``pread`` calls in file order, the kernel's normal read-ahead
    willneed   what the loader does: ``POSIX_FADV_WILLNEED`` for 8 MiB chunks from a
               second thread, and 4 MiB ``pread`` calls into the destination on a
               descriptor without read-ahead
    direct     ``O_DIRECT``, 16 MiB requests into a bounce buffer, then copied out
    direct2    the same from two threads, so two requests are in flight

Run from the repository root (about 3 minutes on a 2-core machine):

    python benchmarks/read_strategies.py --ckpt benchmarks/results/r50_fpn_train.pth

Prints the median, minimum and maximum time of each strategy and part, and its system
CPU time (where the kernel's cost of filling the page cache shows).
"""

import argparse
import ctypes
import json
import mmap
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from load_worker import wait_until  # noqa: E402

from d2_efficient_ckpt.checkpoint.storage.page_cache import evict_from_page_cache  # noqa: E402

STRATEGIES = ("buffered", "willneed", "direct", "direct2")
PARTS = {"half": "first half (weights only)", "whole": "whole file (resume)"}
_MARK = "@@READ@@ "


def _read(path: str, strategy: str, nbytes: int, dst: memoryview) -> None:
    if strategy == "buffered":
        fd = os.open(path, os.O_RDONLY)
        try:
            for start in range(0, nbytes, 8 << 20):
                _pread_into(fd, dst, start, min(8 << 20, nbytes - start))
        finally:
            os.close(fd)
    elif strategy == "willneed":
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

        def advise() -> None:
            afd = os.open(path, os.O_RDONLY)
            for start in range(0, nbytes, 8 << 20):
                os.posix_fadvise(afd, start, min(8 << 20, nbytes - start), os.POSIX_FADV_WILLNEED)
            os.close(afd)

        thread = threading.Thread(target=advise)
        thread.start()
        try:
            for start in range(0, nbytes, 4 << 20):
                _pread_into(fd, dst, start, min(4 << 20, nbytes - start))
        finally:
            thread.join()
            os.close(fd)
    else:
        workers = 2 if strategy == "direct2" else 1
        threads = [
            threading.Thread(target=_direct, args=(path, nbytes, dst, i, workers))
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _pread_into(fd: int, dst: memoryview, start: int, n: int) -> None:
    done = 0
    while done < n:
        got = os.preadv(fd, [dst[start + done : start + n]], start + done)
        if got <= 0:
            raise EOFError("the file ended early")
        done += got


def _direct(path: str, nbytes: int, dst: memoryview, index: int, workers: int) -> None:
    chunk = 16 << 20
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    bounce = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    view = memoryview(bounce)
    try:
        for i, start in enumerate(range(0, nbytes, chunk)):
            if i % workers != index:
                continue
            n = min(chunk, nbytes - start)
            os.preadv(fd, [view[: -(-n // 4096) * 4096]], start)
            dst[start : start + n] = view[:n]
    finally:
        view.release()
        bounce.close()
        os.close(fd)


def worker(path: str, strategy: str, part: str, not_before: float) -> Dict[str, float]:
    """One timed read in this process; the destination is faulted in before the clock."""
    nbytes = os.path.getsize(path) // (2 if part == "half" else 1)
    buf = (ctypes.c_char * nbytes)()
    dst = memoryview(buf).cast("B")
    dst[::4096] = b"\1" * len(dst[::4096])
    wait_until(not_before)
    t0, o0 = time.perf_counter(), os.times()
    _read(path, strategy, nbytes, dst)
    t1, o1 = time.perf_counter(), os.times()
    return {"time_s": t1 - t0, "sys_s": o1.system - o0.system, "bytes": nbytes}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every strategy on both parts, ``--rounds`` times, alternating; print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="the file to read (e.g. a training checkpoint)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settle-s", type=float, default=5.0, help="seconds after the eviction")
    p.add_argument("--worker", nargs=3, metavar=("STRATEGY", "PART", "NOT_BEFORE"))
    args = p.parse_args(argv)
    if args.worker:
        strategy, part, not_before = args.worker
        out = worker(args.ckpt, strategy, part, float(not_before))
        print(_MARK + json.dumps(out), flush=True)
        return 0
    if not os.path.isfile(args.ckpt):
        print(f"error: --ckpt {args.ckpt}: no such file. Write one with bench_load.py --ckpt.")
        return 2
    results: Dict[tuple, List[Dict[str, float]]] = {}
    for rnd in range(args.rounds):
        for part in PARTS:
            for strategy in STRATEGIES if rnd % 2 == 0 else STRATEGIES[::-1]:
                evict_from_page_cache(args.ckpt)
                cmd = [sys.executable, os.path.abspath(__file__), "--ckpt", args.ckpt]
                cmd += ["--worker", strategy, part, repr(time.time() + args.settle_s)]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                line = next((x for x in proc.stdout.splitlines() if x.startswith(_MARK)), None)
                if line is None:
                    print(f"{strategy} {part} failed:\n{proc.stderr[-2000:]}")
                    return 1
                r = json.loads(line[len(_MARK) :])
                results.setdefault((part, strategy), []).append(r)
                ms = r["time_s"] * 1e3
                print(f"round {rnd} {part:5s} {strategy:8s} {ms:6.0f} ms", flush=True)
    rows = []
    for (part, strategy), rs in results.items():
        times = [r["time_s"] for r in rs]
        med = statistics.median(times)
        rows.append(
            [
                PARTS[part],
                strategy,
                len(rs),
                f"{med * 1e3:.0f}",
                f"{min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}",
                f"{rs[0]['bytes'] / med / 1e9:.2f}",
                f"{statistics.median(r['sys_s'] for r in rs):.2f}",
            ]
        )
    rows.sort()
    headers = ["read", "strategy", "n", "median ms", "min-max ms", "GB/s", "sys s"]
    print()
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    if hasattr(os, "getloadavg"):
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
