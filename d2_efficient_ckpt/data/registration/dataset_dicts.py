"""Checked COCO-shaped data to detectron2's standard dataset dicts.

Used instead of detectron2's ``load_coco_json`` for every format: the data has passed
:func:`~d2_efficient_ckpt.data.checks.check_records`, so no record needs the assertions,
sorting or silent dropping ``load_coco_json`` applies, and VOC's ``difficult`` flag survives.
"""

import os
from typing import Any, Dict, List

from detectron2.structures import BoxMode

__all__ = ["to_dataset_dicts"]


def to_dataset_dicts(
    data: Dict[str, Any], image_root: str, id_map: Dict[int, int]
) -> List[Dict[str, Any]]:
    """Build one detectron2 record per image.

    Args:
        data: checked COCO-shaped dict (``images``, ``annotations``, ``categories``).
        image_root: folder that relative ``file_name`` values are relative to.
        id_map: category id in ``data`` -> contiguous class index.

    Returns:
        Records with ``file_name``, ``height``, ``width``, ``image_id`` and ``annotations``
        (``bbox`` in ``XYWH_ABS``, contiguous ``category_id``, ``iscrowd``, and
        ``segmentation`` / ``difficult`` where present), in the order of ``data["images"]``.
    """
    per_image: Dict[Any, List[Dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
    mode = BoxMode.XYWH_ABS
    for ann in data["annotations"]:
        obj = {
            "bbox": ann["bbox"],
            "bbox_mode": mode,
            "category_id": id_map[ann["category_id"]],
            "iscrowd": ann.get("iscrowd", 0),
        }
        if "segmentation" in ann:
            obj["segmentation"] = ann["segmentation"]
        if ann.get("difficult"):
            obj["difficult"] = 1
        per_image[ann["image_id"]].append(obj)
    return [
        {
            "file_name": os.path.join(image_root, img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "annotations": per_image[img["id"]],
        }
        for img in data["images"]
    ]
