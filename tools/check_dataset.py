#!/usr/bin/env python
"""Check the datasets a config trains and tests on, without building a model.

Runs the same registration and validation as training (every dataset of DATASETS.TRAIN and
DATASETS.TEST), prints the report, and writes it to OUTPUT_DIR/dataset_report.json.

Examples:
    python tools/check_dataset.py --config-file configs/toy/faster_rcnn_R18_FPN_toy_voc.yaml
    python tools/check_dataset.py --config-file my.yaml --json > report.json
    python tools/check_dataset.py --config-file my.yaml --draw 8 --out output/gt

Exit status: 0 when no problems are found (info rows such as images without annotations do
not count), 1 when problems are found (errors or applied fixes), 2 on bad input (a config or
dataset that cannot be read at all), 3 on an internal error.
"""

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from tabulate import tabulate

from d2_efficient_ckpt.config_utils import load_config
from d2_efficient_ckpt.data import check_dataset_names, register_and_report
from d2_efficient_ckpt.data.registration import REPORT_FILE
from d2_efficient_ckpt.errors import report_exception

EXIT_CLEAN = 0
EXIT_PROBLEMS = 1


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="yaml config")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.add_argument(
        "--draw",
        type=int,
        default=0,
        metavar="N",
        help="write N images per dataset with their ground-truth boxes and class names",
    )
    parser.add_argument(
        "--out", default="", help="folder for --draw (default: OUTPUT_DIR/dataset_check)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def draw(names: List[str], count: int, out_dir: str) -> List[str]:
    """Draw ``count`` records of each dataset with detectron2's Visualizer; returns the files."""
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name in names:
        meta = MetadataCatalog.get(name)
        for i, record in enumerate(DatasetCatalog.get(name)[:count]):
            image = read_image(record["file_name"], format="RGB")
            drawn = Visualizer(image, metadata=meta).draw_dataset_dict(record)
            stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
            path = os.path.join(out_dir, f"{name}_{i:03d}_{stem}.jpg")
            cv2.imwrite(path, drawn.get_image()[:, :, ::-1])
            written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config_file, args.opts)
    # Collect every problem and register with the fixes applied, whatever the config says:
    # checking is the point of this tool.
    cfg.DATASETS.VALIDATE = True
    cfg.DATASETS.VALIDATION = "warn"
    _, report, scanned = register_and_report(cfg, raise_on_errors=False)
    check_dataset_names(cfg)
    if not scanned:
        print(
            "note: nothing to check: no dataset of DATASETS.TRAIN/TEST is declared under "
            "DATASETS.CUSTOM.",
            file=sys.stderr,
        )
    drawn = []
    if args.draw > 0:
        out_dir = args.out or os.path.join(cfg.OUTPUT_DIR, "dataset_check")
        drawn = draw(list(scanned), args.draw, out_dir)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        rows = [
            [n, s["images"], s["annotations"], s["images_with_annotations"], s["classes"]]
            for n, s in report.summaries.items()
        ]
        print(tabulate(rows, headers=["dataset", "images", "boxes", "annotated images", "classes"]))
        print()
        print(report.table())
        if report.problems():
            print()
            print(report.describe())
        if cfg.OUTPUT_DIR:
            print(f"\nReport written to {os.path.join(cfg.OUTPUT_DIR, REPORT_FILE)}")
        for path in drawn:
            print(f"drew {path}")
    return EXIT_CLEAN if report.clean else EXIT_PROBLEMS


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # The report is printed here; the package's own log lines would repeat it.
    package_logger = logging.getLogger("d2_efficient_ckpt")
    level = package_logger.level
    package_logger.setLevel(logging.ERROR)
    try:
        return run(args)
    except Exception as e:  # bad input as one line (exit 2), a bug with its traceback (3)
        return report_exception(e)
    finally:
        package_logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
