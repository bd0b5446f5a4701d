#!/usr/bin/env python
"""Generate the synthetic shapes dataset used by configs/toy, in COCO, VOC and YOLO layouts.

Example:
    python tools/make_toy_dataset.py --out datasets/toy --num-train 400 --num-val 60
    python tools/make_toy_dataset.py --out datasets/toy --formats coco   # COCO only

Running it again with the same parameters does nothing (a manifest.json records them);
pass --force to regenerate.
"""

import argparse
import sys
import time

from d2_efficient_ckpt.errors import EXIT_BAD_INPUT, print_error
from d2_efficient_ckpt.toy import FORMATS, TOY_CATEGORIES, generate_toy_dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a deterministic synthetic detection dataset in COCO, Pascal VOC "
        "and YOLO layouts: squares, circles and triangles on dark, noisy images."
    )
    parser.add_argument("--out", default="datasets/toy", help="output folder")
    parser.add_argument("--num-train", type=int, default=400, help="training images")
    parser.add_argument("--num-val", type=int, default=60, help="validation images")
    parser.add_argument("--size", type=int, default=256, help="image width and height (px)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (non-negative)")
    parser.add_argument(
        "--formats",
        nargs="+",
        default=list(FORMATS),
        choices=FORMATS,
        help="layouts to write (COCO is always written; the others link its images)",
    )
    parser.add_argument(
        "--force", action="store_true", help="regenerate even if the same parameters exist"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        result = generate_toy_dataset(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            size=args.size,
            seed=args.seed,
            force=args.force,
            formats=args.formats,
        )
    except ValueError as e:
        print_error(str(e))
        return EXIT_BAD_INPUT
    if result.skipped:
        print(
            f"{args.out} already holds the toy dataset for {result.params}; nothing written "
            "(use --force to regenerate)."
        )
    else:
        print(
            f"Wrote the toy dataset to {args.out} in {time.perf_counter() - start:.1f}s "
            f"({args.size}x{args.size} JPEGs, seed {args.seed}):"
        )
    for name, split in result.splits.items():
        print(
            f"  {name:5s}: {split.num_images:4d} images, {split.num_annotations:5d} boxes  "
            f"ANN_FILE {split.ann_file}  IMAGE_ROOT {split.image_root}"
        )
        for fmt, keys in split.layouts.items():
            print(f"         {fmt}: " + "  ".join(f"{k} {v}" for k, v in keys.items()))
    print(f"  classes: {', '.join(c['name'] for c in TOY_CATEGORIES)} (category ids 1..3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
