#!/usr/bin/env python
"""Dataset registration + validation against the plain baselines, on generated large sets.

Two datasets are generated once (tiny images, many records):

* COCO: 50k images, 500k boxes (10 per image), 80 categories with non-contiguous ids.
  Baseline: detectron2's ``load_coco_json`` on the same file.
* YOLO: the same 50k images in the Ultralytics layout, one label file per image.
  Baseline: reading every label file once and parsing its numbers.

Each measurement runs in a fresh process (imports done before the clock starts) and
reports wall time and peak resident memory above the process's memory after imports
(``VmHWM`` after resetting it). Ours is ``register_and_report`` with ``DATASETS.VALIDATION
error``: every image header is read (size, EXIF, truncation), every record is checked, the
evaluator's COCO json is written for YOLO, and nothing is cached from a previous run (a
fresh cache folder per repeat). Ours uses worker processes (``DATASETS.VALIDATION_WORKERS``,
default ``min(8, CPUs)``) for the image headers, for YOLO's label files and for the text of
YOLO's evaluator json; the baselines run in one process. So the memory figure is the main
process's, and the CPU time (this process plus its workers) is reported next to the wall
time: on a machine with no idle core the wall-time ratio approaches the CPU-time ratio.

Example:
    python benchmarks/bench_datasets.py                 # 50k images, 3 repeats
    python benchmarks/bench_datasets.py --images 5000   # a quick look

Writes ``benchmarks/results/datasets_cpu.json`` and ``datasets_cpu.png``; the targets are
ratio <= 1.5 for time and for peak memory.
"""

import argparse
import datetime
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import procmem

RESULT_MARKER = "RESULT "
TARGET = 1.5
CASES = {
    "coco": ("coco_baseline", "coco_ours"),
    "yolo": ("yolo_baseline", "yolo_ours"),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--boxes-per-image", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per method")
    p.add_argument("--data-dir", default="", help="keep the generated data here (reused)")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- data -----------------------------------------------------------------------------------


def _tiny_jpeg(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 40, 40)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def generate(root: str, n_images: int, per_image: int) -> Dict[str, Any]:
    """Write the COCO and YOLO datasets under ``root`` unless a matching one is there."""
    stamp = os.path.join(root, "params.json")
    params = {"images": n_images, "per_image": per_image, "version": 1}
    if os.path.isfile(stamp) and json.load(open(stamp)) == params:
        return params
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(0)
    W, H = 64, 48
    jpeg = _tiny_jpeg(W, H)
    coco_images = os.path.join(root, "coco", "images")
    yolo_images = os.path.join(root, "yolo", "images", "train")
    yolo_labels = os.path.join(root, "yolo", "labels", "train")
    for d in (coco_images, yolo_images, yolo_labels):
        os.makedirs(d)
    cat_ids = [i * 3 + 1 for i in range(80)]  # non-contiguous, as COCO's own
    images, annotations = [], []
    for i in range(n_images):
        file_name = f"{i:06d}.jpg"
        for d in (coco_images, yolo_images):
            with open(os.path.join(d, file_name), "wb") as f:
                f.write(jpeg)
        images.append({"id": i + 1, "file_name": file_name, "width": W, "height": H})
        lines = []
        for _ in range(per_image):
            w, h = rng.uniform(2, W / 2), rng.uniform(2, H / 2)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            cat = rng.randrange(80)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat_ids[cat],
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
            lines.append(
                f"{cat} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}\n"
            )
        with open(os.path.join(yolo_labels, f"{i:06d}.txt"), "w") as f:
            f.write("".join(lines))
    categories = [{"id": c, "name": f"class_{c}"} for c in cat_ids]
    with open(os.path.join(root, "coco", "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    with open(stamp, "w") as f:
        json.dump(params, f)
    return params


# -- workers --------------------------------------------------------------------------------


def _cfg(root: str, fmt: str, cache: str):
    from detectron2.config import get_cfg

    from d2_efficient_ckpt.config import add_efficient_ckpt_config

    cfg = add_efficient_ckpt_config(get_cfg())
    cfg.OUTPUT_DIR = ""
    cfg.DATASETS.CACHE_DIR = cache
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    if fmt == "coco":
        entry = {
            "FORMAT": "coco",
            "ANN_FILE": os.path.join(root, "coco", "instances.json"),
            "IMAGE_ROOT": os.path.join(root, "coco", "images"),
        }
    else:
        entry = {
            "FORMAT": "yolo",
            "IMAGE_ROOT": os.path.join(root, "yolo", "images", "train"),
            "NAMES": [f"class_{i * 3 + 1}" for i in range(80)],
        }
    cfg.DATASETS.CUSTOM["big"] = type(cfg)(entry)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("big",), ()
    return cfg


def _read_labels(label_dir: str) -> List[List[List[float]]]:
    """Read and parse every label file once, keeping the numbers: the YOLO baseline."""
    labels = []
    for f in sorted(os.listdir(label_dir)):
        with open(os.path.join(label_dir, f)) as fh:
            labels.append([[float(v) for v in line.split()] for line in fh.read().splitlines()])
    return labels


def worker(method: str, root: str) -> None:
    import logging

    from detectron2.data.datasets import load_coco_json

    from d2_efficient_ckpt.data import register_and_report

    logging.disable(logging.WARNING)
    cache = tempfile.mkdtemp(prefix="bench_ds_cache_")
    cfg = _cfg(root, method.split("_")[0], cache) if method.endswith("ours") else None
    base = procmem.read_status()["VmRSS"]
    procmem.reset_peak_rss()
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if method == "coco_baseline":
        count = sum(
            len(r["annotations"])
            for r in load_coco_json(
                os.path.join(root, "coco", "instances.json"), os.path.join(root, "coco", "images")
            )
        )
    elif method == "yolo_baseline":
        count = sum(map(len, _read_labels(os.path.join(root, "yolo", "labels", "train"))))
    else:
        _, report, scanned = register_and_report(cfg)
        assert report.clean, report.table()
        count = scanned["big"].summary["annotations"]
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    peak = procmem.read_status()["VmHWM"] - base
    shutil.rmtree(cache, ignore_errors=True)
    result = {"seconds": seconds, "cpu_seconds": cpu, "peak_bytes": peak, "boxes": count}
    print(RESULT_MARKER + json.dumps(result))


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_worker(method: str, root: str) -> Dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--data-dir", root],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    raise RuntimeError(f"{method} failed:\n{out.stderr[-3000:]}")


# -- report ---------------------------------------------------------------------------------


def _chart(results: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    fmts = list(results["formats"])
    for ax, key, label in (
        (axes[0], "time_ratio", "time, ours / baseline"),
        (axes[1], "memory_ratio", "peak memory, ours / baseline"),
    ):
        values = [results["formats"][f][key] for f in fmts]
        ax.bar(fmts, values, color=["#4c72b0" if v <= TARGET else "#c44e52" for v in values])
        ax.axhline(TARGET, color="black", linestyle="--", linewidth=1)
        ax.text(len(fmts) - 0.5, TARGET, f" target {TARGET}", va="bottom", ha="right")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom")
        ax.set_title(label)
        ax.set_ylim(0, max(values + [TARGET]) * 1.25)
    fig.suptitle(
        f"Register + validate, {results['params']['images']:,} images, "
        f"{results['params']['images'] * results['params']['per_image']:,} boxes"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.data_dir)
        return 0
    root = args.data_dir or os.path.join(tempfile.gettempdir(), "d2ec_bench_datasets")
    start = time.perf_counter()
    params = generate(root, args.images, args.boxes_per_image)
    print(
        f"data in {root} ({time.perf_counter() - start:.1f}s to generate or check); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results: Dict[str, Any] = {
        "params": params,
        "machine": procmem.machine_info() if hasattr(procmem, "machine_info") else {},
        "date": datetime.date.today().isoformat(),
        # Other work on the machine slows both sides, and takes the cores ours' workers use.
        "load_average_at_start": os.getloadavg()[0],
        "formats": {},
    }
    rows: List[List[Any]] = []
    for fmt, (baseline, ours) in CASES.items():
        runs: Dict[str, List[Dict[str, Any]]] = {baseline: [], ours: []}
        for _ in range(args.repeats):
            for method in (baseline, ours):  # interleaved, so drift hits both
                runs[method].append(run_worker(method, root))
        med = {
            m: {
                "seconds": statistics.median(r["seconds"] for r in rs),
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
                "peak_bytes": statistics.median(r["peak_bytes"] for r in rs),
                "boxes": rs[0]["boxes"],
                "raw": rs,
            }
            for m, rs in runs.items()
        }
        time_ratio = med[ours]["seconds"] / med[baseline]["seconds"]
        mem_ratio = med[ours]["peak_bytes"] / max(med[baseline]["peak_bytes"], 1)
        results["formats"][fmt] = {
            "baseline": med[baseline],
            "ours": med[ours],
            "time_ratio": time_ratio,
            "cpu_ratio": med[ours]["cpu_seconds"] / med[baseline]["cpu_seconds"],
            "memory_ratio": mem_ratio,
            "pass": time_ratio <= TARGET and mem_ratio <= TARGET,
        }
        rows.append(
            [
                fmt,
                f"{med[baseline]['seconds']:.2f} s",
                f"{med[ours]['seconds']:.2f} s",
                f"{time_ratio:.2f}",
                f"{med[baseline]['peak_bytes'] / 2**20:.0f} MB",
                f"{med[ours]['peak_bytes'] / 2**20:.0f} MB",
                f"{mem_ratio:.2f}",
            ]
        )
    header = [
        "format",
        "baseline",
        "ours",
        "time ratio",
        "baseline peak",
        "ours peak",
        "memory ratio",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    for fmt, r in results["formats"].items():
        verdict = "pass" if r["pass"] else "FAIL"
        ratios = f"time {r['time_ratio']:.2f}, memory {r['memory_ratio']:.2f}"
        cpu = (
            f"CPU {r['baseline']['cpu_seconds']:.2f} s against {r['ours']['cpu_seconds']:.2f} s "
            f"with workers, ratio {r['cpu_ratio']:.2f}"
        )
        print(f"{fmt}: {ratios} (<= {TARGET}: {verdict}); {cpu}")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "datasets_cpu.json"), "w") as f:
        json.dump(results, f, indent=1)
    _chart(results, os.path.join(args.out_dir, "datasets_cpu.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
