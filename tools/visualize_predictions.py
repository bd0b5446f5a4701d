#!/usr/bin/env python
"""Draw a trained model's predicted boxes on a few images of the first test dataset.

Example:
    python tools/visualize_predictions.py --config-file configs/toy/faster_rcnn_R18_FPN_toy.yaml \
        --num-images 6 --output output/toy/predictions MODEL.WEIGHTS output/toy/model_final.pth
"""

import argparse
import os

import cv2
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from d2_efficient_ckpt import build_checkpointer
from d2_efficient_ckpt.config_utils import load_config
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.data.errors import DatasetConfigError
from d2_efficient_ckpt.errors import exit_on_user_error


class _Predictor(DefaultPredictor):
    """DefaultPredictor, loading weights through the configured checkpointer."""

    def __init__(self, cfg):
        # The stock class would load MODEL.WEIGHTS with DetectionCheckpointer; blank it.
        stock = cfg.clone()
        stock.defrost()
        stock.MODEL.WEIGHTS = ""
        super().__init__(stock)
        build_checkpointer(cfg, self.model).load(cfg.MODEL.WEIGHTS)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--output", required=True, help="directory for the drawn images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    setup_logger(name="d2_efficient_ckpt")
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.score_threshold
    prepare_datasets(cfg)
    cfg.freeze()
    if not cfg.DATASETS.TEST:
        raise DatasetConfigError(
            "DATASETS.TEST is empty: name a dataset to draw predictions on, e.g. "
            "DATASETS.TEST \"('toy_val',)\" on the command line."
        )
    name = cfg.DATASETS.TEST[0]
    predictor = _Predictor(cfg)
    metadata = MetadataCatalog.get(name)
    os.makedirs(args.output, exist_ok=True)
    records = DatasetCatalog.get(name)[: args.num_images]
    for rec in records:
        image = read_image(rec["file_name"], format=cfg.INPUT.FORMAT)
        with torch.no_grad():
            instances = predictor(image)["instances"].to("cpu")
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        drawn = Visualizer(rgb, metadata=metadata, scale=2.0).draw_instance_predictions(instances)
        out = os.path.join(args.output, os.path.basename(rec["file_name"]))
        out = os.path.splitext(out)[0] + ".jpg"
        cv2.imwrite(out, drawn.get_image()[:, :, ::-1])
        print(f"{out}: {len(instances)} boxes")
    print(f"Saved {len(records)} images with predicted boxes to {args.output}")


if __name__ == "__main__":
    exit_on_user_error(main)
