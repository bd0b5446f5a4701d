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
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, cast

from ..errors import DatasetConfigError, DatasetValidationError
from ..report import ERROR, ValidationReport
from .base import DATASET_FORMAT_REGISTRY, DatasetFormat, RawDataset, check_names
from .files import check_dir, check_file, header, read_text

__all__ = ["VOC"]

logger = logging.getLogger(__name__)

# Adds one report row: ``add(title, fix, record, action="dropped")``.
_Add = Callable[..., None]
# An annotation and the class name of its object, before the name becomes a category id.
_Object = Tuple[Dict[str, Any], str]


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
        if out.get("NAMES") is not None:
            out["NAMES"] = check_names(name, out["NAMES"])
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

        def add(title: str, fix: str, record: str, action: str = "dropped") -> None:
            report.add(name, ERROR, title, fix, record, action=action, source=split_file)

        images, objects = _read_annotations(root, ids, add)
        names = _class_names(name, spec.get("NAMES"), objects, split_file)
        category = {n: i + 1 for i, n in enumerate(names)}
        data = {
            "images": images,
            "annotations": _with_categories(name, objects, category, add),
            "categories": [{"id": i, "name": n} for n, i in category.items()],
            "source_ids": {i: n for n, i in category.items()},
            "renumber": True,
        }
        return RawDataset(data, root, split_file)


def _read_annotations(
    root: str, ids: List[str], add: _Add
) -> Tuple[List[Dict[str, Any]], List[_Object]]:
    """The image record and the objects of every id of the split with a readable XML file."""
    images: List[Dict[str, Any]] = []
    objects: List[_Object] = []
    seen = set()
    for image_id in ids:
        if image_id in seen:
            add("ids listed twice in the split file", "list every image once.", image_id)
            continue
        seen.add(image_id)
        xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
        tree = _parse_xml(xml_path, add)
        if tree is None:
            continue
        images.append(_image_record(image_id, tree))
        objects += _objects(image_id, xml_path, tree, add)
    return images, objects


def _parse_xml(xml_path: str, add: _Add) -> Optional[ET.Element]:
    """The root element of an annotation file, or None (reported) when there is none."""
    if not os.path.lexists(xml_path):
        add(
            "images without an annotation file",
            "add Annotations/<id>.xml for each id of the split file, or remove the id.",
            f"'{xml_path}'",
        )
        return None
    if not os.path.isfile(xml_path):
        # Checked before opening: reading a FIFO blocks forever.
        add(
            "annotation files that are not regular files",
            "replace each with a VOC XML file (it is a directory, FIFO or device).",
            f"'{xml_path}'",
        )
        return None
    try:
        with open(xml_path, "rb") as f:
            return ET.fromstring(f.read())
    except (ET.ParseError, OSError) as e:
        add(
            "unreadable annotation XML files",
            "fix or regenerate the XML file (it must be well-formed VOC XML).",
            f"'{xml_path}': {e}",
        )
        return None


def _image_record(image_id: str, tree: ET.Element) -> Dict[str, Any]:
    image: Dict[str, Any] = {
        "id": image_id,
        "file_name": os.path.join("JPEGImages", f"{image_id}.jpg"),
    }
    for key in ("width", "height"):
        value = _number(_text(tree, f"size/{key}"))
        # A missing or zero size (common in converted sets) is read from the file.
        image[key] = value if value and value > 0 else None
    return image


def _objects(image_id: str, xml_path: str, tree: ET.Element, add: _Add) -> List[_Object]:
    """The ``<object>`` entries of one file with a ``<name>``, as annotations in pixels."""
    out: List[_Object] = []
    for k, obj in enumerate(tree.findall("object")):
        cls_name = _text(obj, "name")
        if not cls_name:
            add(
                "objects without a <name>",
                "give every <object> a <name> with its class.",
                f"'{xml_path}' object {k + 1}",
            )
            continue
        ann = {
            "id": f"{image_id}.xml object {k + 1}",
            "image_id": image_id,
            "bbox": _bbox(obj),
            "iscrowd": 0,
        }
        if _text(obj, "difficult") == "1":
            ann["difficult"] = 1
        out.append((ann, cls_name))
    return out


def _bbox(obj: ET.Element) -> Any:
    """``[x, y, w, h]`` of an object's ``<bndbox>``, or its texts when one is no number.

    The texts (None where a tag is missing) fail the shared box check, which reports them.
    """
    corners = ("xmin", "ymin", "xmax", "ymax")
    box = [_number(_text(obj, f"bndbox/{t}")) for t in corners]
    if any(v is None for v in box):
        return [_text(obj, f"bndbox/{t}") for t in corners]
    xmin, ymin, xmax, ymax = cast(List[float], box)
    return [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]


def _class_names(
    name: str, names: Optional[List[str]], objects: List[_Object], split_file: str
) -> List[str]:
    """``NAMES``, or the sorted class names of the objects when it is not given (logged)."""
    if names is not None:
        return names
    found = sorted({cls_name for _, cls_name in objects})
    if not found:
        raise DatasetValidationError(
            f"{header(name)}: no <object> with a <name> in the XML files of split "
            f"'{split_file}', so the classes are unknown. Set "
            f"DATASETS.CUSTOM.{name}.NAMES: [...] or annotate the images."
        )
    logger.info(
        f"Dataset '{name}': no NAMES given; the {len(found)} classes found in its XML "
        f"files, sorted: {', '.join(found)}"
    )
    return found


def _with_categories(
    name: str, objects: List[_Object], category: Dict[str, int], add: _Add
) -> List[Dict[str, Any]]:
    """The annotations with their ``category_id``; objects of other classes are dropped."""
    annotations = []
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
    return annotations
