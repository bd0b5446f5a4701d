"""Pascal VOC: ``Annotations/*.xml``, ``ImageSets/Main/<SPLIT>.txt`` and ``JPEGImages/``.

Declared as::

    my_voc: {FORMAT: voc, ROOT: datasets/VOC2012, SPLIT: train, NAMES: [cat, dog]}

Boxes follow detectron2's ``load_voc_instances``: VOC's 1-based inclusive pixel indices
``xmin..xmax`` become ``x0 = xmin - 1``, ``x1 = xmax``. ``difficult`` objects are kept and
flagged (``"difficult": 1`` in the record). Without ``NAMES`` the classes are the object
names found in the XML files, sorted, and listed in the log.
"""

import logging
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import DatasetConfigError, DatasetValidationError
from ..report import ERROR, ValidationReport
from .base import DATASET_FORMAT_REGISTRY, DatasetFormat, RawDataset, check_names
from .files import check_dir, check_file, header, read_text

__all__ = ["VOC"]

logger = logging.getLogger(__name__)


def _split_file(spec: Mapping[str, Any]) -> str:
    split = spec["SPLIT"]
    if not split.endswith(".txt"):
        split += ".txt"
    return os.path.join(spec["ROOT"], "ImageSets", "Main", split)


def _text(node: Optional[ET.Element], path: str) -> Optional[str]:
    found = node.find(path) if node is not None else None
    return found.text.strip() if found is not None and found.text else None


def _number(text: Optional[str]) -> Optional[float]:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@DATASET_FORMAT_REGISTRY.register()
class VOC(DatasetFormat):
    """Pascal VOC layout; keys ``ROOT``, ``SPLIT`` and optional ``NAMES``."""

    REQUIRED_KEYS = ("ROOT", "SPLIT")
    OPTIONAL_KEYS = ("NAMES",)
    PATH_KEYS = ("ROOT",)

    @classmethod
    def normalize(cls, name: str, spec: Mapping[str, Any]) -> Dict[str, Any]:
        """See :meth:`DatasetFormat.normalize`; also checks ``SPLIT`` and ``NAMES``."""
        out = super().normalize(name, spec)
        if not isinstance(out["SPLIT"], str):
            raise DatasetConfigError(
                f"DATASETS.CUSTOM.{name}.SPLIT must be the name of a file in "
                f"ImageSets/Main/, e.g. train, got {out['SPLIT']!r}."
            )
        names = check_names(name, out.get("NAMES"))
        if names is not None:
            out["NAMES"] = names
        return out

    @classmethod
    def _ids(cls, name: str, spec: Dict[str, Any]) -> List[str]:
        root = spec["ROOT"]
        check_dir(
            name, "ROOT", root, "a VOC folder with Annotations/, ImageSets/Main/ and JPEGImages/"
        )
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            if not os.path.isdir(os.path.join(root, sub)):
                raise DatasetValidationError(
                    f"{header(name)}: ROOT '{root}' has no {sub}/ folder, so it is not a VOC "
                    f"folder. Set DATASETS.CUSTOM.{name}.ROOT to the folder that holds "
                    "Annotations/, ImageSets/Main/ and JPEGImages/ (e.g. VOCdevkit/VOC2012)."
                )
        split_file = _split_file(spec)
        try:
            check_file(name, "SPLIT", split_file, "a split file in ImageSets/Main/")
        except DatasetValidationError as e:
            available = sorted(
                f[:-4] for f in os.listdir(os.path.dirname(split_file)) if f.endswith(".txt")
            )
            raise DatasetValidationError(f"{e} Split files there: {available[:20]}.") from None
        text, _ = read_text(name, "SPLIT", split_file)
        # Class-specific split files have "<id> <flag>" lines; the id comes first.
        return [line.split()[0] for line in text.splitlines() if line.strip()]

    @classmethod
    def source_files(cls, name: str, spec: Dict[str, Any]) -> Optional[List[str]]:
        """See :meth:`DatasetFormat.source_files`."""
        try:
            ids = cls._ids(name, spec)
        except DatasetValidationError:
            return None  # read() raises it again, with the same message
        root = spec["ROOT"]
        return [_split_file(spec)] + [
            p
            for i in ids
            for p in (
                os.path.join(root, "Annotations", f"{i}.xml"),
                os.path.join(root, "JPEGImages", f"{i}.jpg"),
            )
        ]

    @classmethod
    def read(
        cls, name: str, spec: Dict[str, Any], report: ValidationReport, workers: int = 0
    ) -> RawDataset:
        """See :meth:`DatasetFormat.read`."""
        root = spec["ROOT"]
        ids = cls._ids(name, spec)
        split_file = _split_file(spec)
        images: List[Dict[str, Any]] = []
        annotations: List[Dict[str, Any]] = []
        objects: List[Tuple[Dict[str, Any], str]] = []  # (annotation, class name)
        seen = set()

        def add(title: str, fix: str, record: str, action: str = "dropped") -> None:
            report.add(name, ERROR, title, fix, record, action=action, source=split_file)

        for image_id in ids:
            if image_id in seen:
                add("ids listed twice in the split file", "list every image once.", image_id)
                continue
            seen.add(image_id)
            xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
            if not os.path.lexists(xml_path):
                add(
                    "images without an annotation file",
                    "add Annotations/<id>.xml for each id of the split file, or remove the id.",
                    f"'{xml_path}'",
                )
                continue
            if not os.path.isfile(xml_path):
                # Checked before opening: reading a FIFO blocks forever.
                add(
                    "annotation files that are not regular files",
                    "replace each with a VOC XML file (it is a directory, FIFO or device).",
                    f"'{xml_path}'",
                )
                continue
            try:
                with open(xml_path, "rb") as f:
                    tree = ET.fromstring(f.read())
            except (ET.ParseError, OSError) as e:
                add(
                    "unreadable annotation XML files",
                    "fix or regenerate the XML file (it must be well-formed VOC XML).",
                    f"'{xml_path}': {e}",
                )
                continue
            rel = os.path.join("JPEGImages", f"{image_id}.jpg")
            image = {"id": image_id, "file_name": rel}
            for key in ("width", "height"):
                value = _number(_text(tree, f"size/{key}"))
                # A missing or zero size (common in converted sets) is read from the file.
                image[key] = value if value and value > 0 else None
            images.append(image)
            for k, obj in enumerate(tree.findall("object")):
                ann_id = f"{image_id}.xml object {k + 1}"
                cls_name = _text(obj, "name")
                if not cls_name:
                    add(
                        "objects without a <name>",
                        "give every <object> a <name> with its class.",
                        f"'{xml_path}' object {k + 1}",
                    )
                    continue
                box = [_number(_text(obj, f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
                if any(v is None for v in box):
                    bbox: Any = [
                        _text(obj, f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")
                    ]
                else:
                    xmin, ymin, xmax, ymax = box
                    bbox = [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]
                ann = {"id": ann_id, "image_id": image_id, "bbox": bbox, "iscrowd": 0}
                if _text(obj, "difficult") == "1":
                    ann["difficult"] = 1
                objects.append((ann, cls_name))

        names = spec.get("NAMES")
        if names is None:
            names = sorted({cls_name for _, cls_name in objects})
            if not names:
                raise DatasetValidationError(
                    f"{header(name)}: no <object> with a <name> in the XML files of split "
                    f"'{split_file}', so the classes are unknown. Set "
                    f"DATASETS.CUSTOM.{name}.NAMES: [...] or annotate the images."
                )
            logger.info(
                f"Dataset '{name}': no NAMES given; the {len(names)} classes found in its XML "
                f"files, sorted: {', '.join(names)}"
            )
        category = {n: i + 1 for i, n in enumerate(names)}
        for ann, cls_name in objects:
            if cls_name not in category:
                add(
                    "objects whose class is not in NAMES",
                    f"add the class to DATASETS.CUSTOM.{name}.NAMES or fix the <name>.",
                    f"{ann['id']}: '{cls_name}'",
                )
                continue
            ann["category_id"] = category[cls_name]
            annotations.append(ann)
        data = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in category.items()],
            "source_ids": {i: n for n, i in category.items()},
            "renumber": True,
        }
        return RawDataset(data, root, split_file)
