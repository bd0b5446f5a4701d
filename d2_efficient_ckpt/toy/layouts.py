"""The toy dataset's Pascal VOC and YOLO layouts, written from its COCO json.

Images are hard links to the COCO layout's JPEGs (copies across file systems), so the
three layouts hold the same pixels and the same boxes.
"""

import os
import shutil
from typing import Any, Dict, List
from xml.sax.saxutils import escape

__all__ = ["write_voc", "write_yolo"]


def _link(src: str, dst: str) -> None:
    # A hard link costs no space; a copy is the fallback across file systems.
    if os.path.lexists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _voc_xml(file_id: str, size: int, objects: List[Dict[str, Any]]) -> str:
    lines = [
        "<annotation>",
        f"  <filename>{escape(file_id)}.jpg</filename>",
        f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
    ]
    for obj in objects:
        x, y, w, h = obj["bbox"]
        # VOC pixel indices are 1-based and inclusive.
        box = (int(x) + 1, int(y) + 1, int(x + w), int(y + h))
        lines += [
            "  <object>",
            f"    <name>{escape(obj['name'])}</name>",
            "    <difficult>0</difficult>",
            "    <bndbox><xmin>{}</xmin><ymin>{}</ymin>".format(*box[:2])
            + "<xmax>{}</xmax><ymax>{}</ymax></bndbox>".format(*box[2:]),
            "  </object>",
        ]
    return "\n".join(lines + ["</annotation>", ""])


def write_voc(out_dir: str, split: str, coco: Dict[str, Any], size: int, image_root: str) -> None:
    """Write one split under ``out_dir/voc``: an XML file per image, the split file, the images.

    Args:
        out_dir: the toy dataset's folder.
        split: ``"train"`` or ``"val"``; VOC ids are ``<split>_<image stem>``.
        coco: the split's COCO json, as written.
        size: width and height of every image.
        image_root: the folder of the split's COCO images, linked into ``JPEGImages/``.
    """
    root = os.path.join(out_dir, "voc")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_image: Dict[int, List[Dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(
            {"bbox": ann["bbox"], "name": names[ann["category_id"]]}
        )
    ids = []
    for img in coco["images"]:
        file_id = f"{split}_{os.path.splitext(img['file_name'])[0]}"
        ids.append(file_id)
        _link(
            os.path.join(image_root, img["file_name"]),
            os.path.join(root, "JPEGImages", f"{file_id}.jpg"),
        )
        with open(os.path.join(root, "Annotations", f"{file_id}.xml"), "w") as f:
            f.write(_voc_xml(file_id, size, per_image.get(img["id"], [])))
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))


def write_yolo(out_dir: str, split: str, coco: Dict[str, Any], size: int, image_root: str) -> None:
    """Write one split under ``out_dir/yolo``: a label file per image, the images, data.yaml.

    Args:
        out_dir: the toy dataset's folder.
        split: ``"train"`` or ``"val"``, the folder under ``images/`` and ``labels/``.
        coco: the split's COCO json, as written; class ``k`` is category id ``k + 1``.
        size: width and height of every image (boxes are normalized by it).
        image_root: the folder of the split's COCO images, linked into ``images/<split>``.
    """
    root = os.path.join(out_dir, "yolo")
    images, labels = os.path.join(root, "images", split), os.path.join(root, "labels", split)
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    lines: Dict[int, List[str]] = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        lines.setdefault(ann["image_id"], []).append(
            f"{ann['category_id'] - 1} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} "
            f"{w / size:.6f} {h / size:.6f}\n"
        )
    for img in coco["images"]:
        _link(os.path.join(image_root, img["file_name"]), os.path.join(images, img["file_name"]))
        stem = os.path.splitext(img["file_name"])[0]
        with open(os.path.join(labels, f"{stem}.txt"), "w") as f:
            f.write("".join(lines.get(img["id"], [])))
    names = "".join(f"  {c['id'] - 1}: {c['name']}\n" for c in coco["categories"])
    with open(os.path.join(root, "data.yaml"), "w") as f:
        f.write(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}")
