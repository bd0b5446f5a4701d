"""YOLO (Ultralytics layout): a folder of images and one ``.txt`` label file per image.

Declared as::

    my_yolo: {FORMAT: yolo, IMAGE_ROOT: datasets/my/images/train, NAMES: [cat, dog]}
    my_yolo: {FORMAT: yolo, DATA_YAML: datasets/my/data.yaml, SPLIT: val}

Each label line is ``class cx cy w h`` with coordinates normalized to the image size, or
``class x1 y1 x2 y2 ...`` (a polygon, whose bounds become the box). Boxes are converted with
each image's real size, read from its header. An image without a label file is a
background image, as in Ultralytics. ``LABEL_ROOT`` defaults to ``IMAGE_ROOT`` with its last
``images`` path component replaced by ``labels``.
"""

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from ...errors import DatasetConfigError, DatasetValidationError
from ...report import ERROR, WARNING, ValidationReport
from ..base import DATASET_FORMAT_REGISTRY, DatasetFormat, RawDataset, check_names
from ..files import check_dir, check_file, header, read_text
from .box_table import BoxTable
from .labels import label_path, read_labels

__all__ = ["YOLO", "default_label_root"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".mpo")
_SPLITS = ("train", "val", "test")


def default_label_root(image_root: str) -> Optional[str]:
    """``image_root`` with its last ``images`` component replaced by ``labels``, or None."""
    parts = image_root.split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            return os.sep.join(parts[:i] + ["labels"] + parts[i + 1 :])
    return None


def _names_from_yaml(name: str, path: str, names: Any) -> List[str]:
    where = f"DATASETS.CUSTOM.{name}.DATA_YAML '{path}'"
    if isinstance(names, dict):
        keys = sorted(names, key=lambda k: (not isinstance(k, int), k))
        if keys != list(range(len(names))):
            raise DatasetConfigError(
                f"{where}: the keys of 'names' must be the class indices 0..{len(names) - 1}, "
                f"got {keys[:20]}. Renumber them."
            )
        names = [names[k] for k in keys]
    if not isinstance(names, list):
        raise DatasetConfigError(
            f"{where} has no 'names' list or {{index: name}} mapping (got {names!r}). Add "
            "names: [cat, dog, ...]."
        )
    return check_names(name, [str(n) if isinstance(n, (int, float)) else n for n in names])


def _resolve(name: str, spec: Mapping[str, Any]) -> Tuple[str, str, List[str]]:
    """IMAGE_ROOT, LABEL_ROOT and class names, reading DATA_YAML when it is given.

    ``spec`` is normalized: it holds NAMES and IMAGE_ROOT, or DATA_YAML and SPLIT.
    """
    if spec.get("DATA_YAML"):
        image_root, names = _from_data_yaml(name, spec)
    else:
        image_root, names = spec["IMAGE_ROOT"], spec["NAMES"]
    label_root = spec.get("LABEL_ROOT") or default_label_root(image_root)
    if label_root is None:
        raise DatasetConfigError(
            f"DATASETS.CUSTOM.{name}: IMAGE_ROOT '{image_root}' has no 'images' path "
            "component, so the label folder cannot be derived. Set "
            f"DATASETS.CUSTOM.{name}.LABEL_ROOT to the folder of .txt label files."
        )
    return image_root, label_root, names


def _from_data_yaml(name: str, spec: Mapping[str, Any]) -> Tuple[str, List[str]]:
    """IMAGE_ROOT (the spec's, else the SPLIT folder of DATA_YAML) and DATA_YAML's names."""
    path = spec["DATA_YAML"]
    cfg = _read_data_yaml(name, path)
    names = _names_from_yaml(name, path, cfg.get("names"))
    image_root = spec.get("IMAGE_ROOT")
    if image_root:
        return image_root, names
    split = spec["SPLIT"]
    entry = cfg.get(split)
    if not isinstance(entry, str) or entry.endswith(".txt"):
        raise DatasetConfigError(
            f"DATASETS.CUSTOM.{name}: DATA_YAML '{path}' gives {split}: {entry!r}; only "
            "a folder of images is supported. Set DATASETS.CUSTOM."
            f"{name}.IMAGE_ROOT to the images' folder."
        )
    base = os.path.join(os.path.dirname(path), str(cfg.get("path") or ""))
    return os.path.abspath(os.path.join(base, entry)), names


def _read_data_yaml(name: str, path: str) -> Dict[Any, Any]:
    """The mapping of an Ultralytics data.yaml."""
    check_file(name, "DATA_YAML", path, "an Ultralytics data.yaml")
    text, _ = read_text(name, "DATA_YAML", path)
    try:
        cfg = yaml.safe_load(text)
    except RecursionError:
        raise DatasetValidationError(
            f"{header(name)}: DATA_YAML '{path}' is nested too deeply to be a data.yaml. "
            "Fix the file: it needs only 'path', the split folders and 'names'."
        ) from None
    except yaml.YAMLError as e:
        raise DatasetValidationError(
            f"{header(name)}: DATA_YAML '{path}' is not valid YAML ({e}). Fix the file."
        ) from None
    if not isinstance(cfg, dict):
        raise DatasetValidationError(
            f"{header(name)}: DATA_YAML '{path}' is not a mapping with 'names' and the "
            "split folders. Point DATA_YAML at an Ultralytics data.yaml."
        )
    return cfg


def _list_images(image_root: str) -> List[str]:
    """Image paths relative to ``image_root``, sorted; special files included (checked later)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(image_root):
        rel_dir = os.path.relpath(dirpath, image_root)
        # A directory named like an image is listed (and reported), not searched.
        posing = [d for d in dirnames if d.lower().endswith(IMAGE_EXTENSIONS)]
        dirnames[:] = sorted(d for d in dirnames if d not in posing)
        for f in sorted(filenames + posing):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(f if rel_dir == "." else os.path.join(rel_dir, f))
    return found


def _orphan_labels(label_root: str, records: List[str]) -> List[str]:
    """Label files (relative to ``label_root``) other than the ``records`` of the images."""
    expected = set(records)
    orphans = []
    for dirpath, dirnames, filenames in os.walk(label_root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, label_root)
        for f in sorted(filenames):
            rel = f if rel_dir == "." else os.path.join(rel_dir, f)
            if f.endswith(".txt") and rel not in expected:
                orphans.append(rel)
    return orphans


@DATASET_FORMAT_REGISTRY.register()
class YOLO(DatasetFormat):
    """Ultralytics layout; keys ``IMAGE_ROOT``, ``LABEL_ROOT``, ``NAMES`` or ``DATA_YAML`` +
    ``SPLIT``."""

    REQUIRED_KEYS = ()
    OPTIONAL_KEYS = ("IMAGE_ROOT", "LABEL_ROOT", "NAMES", "DATA_YAML", "SPLIT")
    PATH_KEYS = ("IMAGE_ROOT", "LABEL_ROOT", "DATA_YAML")

    @classmethod
    def normalize(cls, name: str, spec: Mapping[str, Any]) -> Dict[str, Any]:
        """See :meth:`DatasetFormat.normalize`; also checks the key combinations."""
        out = super().normalize(name, {k: v for k, v in spec.items() if v not in (None, "")})
        where = f"DATASETS.CUSTOM.{name}"
        if ("NAMES" in out) == ("DATA_YAML" in out):
            raise DatasetConfigError(
                f"{where} needs exactly one of NAMES (a list of class names) and DATA_YAML (an "
                f"Ultralytics data.yaml, with SPLIT), got {sorted(set(out) - {'FORMAT'})}."
            )
        if "NAMES" in out:
            out["NAMES"] = check_names(name, out["NAMES"])
            if "IMAGE_ROOT" not in out:
                raise DatasetConfigError(
                    f"{where} is missing IMAGE_ROOT. Add it, e.g. {where}.IMAGE_ROOT: "
                    '"datasets/my_data/images/train".'
                )
        if "DATA_YAML" in out and out.get("SPLIT") not in _SPLITS:
            raise DatasetConfigError(
                f"{where}.SPLIT must be one of {list(_SPLITS)} with DATA_YAML, got "
                f"{out.get('SPLIT')!r}."
            )
        if "SPLIT" in out and "DATA_YAML" not in out:
            raise DatasetConfigError(
                f"{where}.SPLIT only selects a split of DATA_YAML; remove it or use DATA_YAML."
            )
        if "IMAGE_ROOT" in out and "LABEL_ROOT" not in out:
            if default_label_root(out["IMAGE_ROOT"]) is None:
                raise DatasetConfigError(
                    f"{where}: IMAGE_ROOT '{out['IMAGE_ROOT']}' has no 'images' path component, "
                    f"so the label folder cannot be derived. Set {where}.LABEL_ROOT to the "
                    "folder of .txt label files."
                )
        return out

    @classmethod
    def source_files(cls, name: str, spec: Dict[str, Any]) -> Optional[List[str]]:
        """See :meth:`DatasetFormat.source_files`."""
        try:
            image_root, label_root, _ = _resolve(name, spec)
        except (DatasetConfigError, DatasetValidationError):
            return None
        if not os.path.isdir(image_root):
            return None
        rels = _list_images(image_root)
        files = [spec["DATA_YAML"]] if spec.get("DATA_YAML") else []
        return (
            files
            + [os.path.join(image_root, r) for r in rels]
            + [label_path(label_root, r) for r in rels]
        )

    @classmethod
    def read(
        cls, name: str, spec: Dict[str, Any], report: ValidationReport, workers: int = 0
    ) -> RawDataset:
        """See :meth:`DatasetFormat.read`; also reads every image's header, in the same pass."""
        image_root, label_root, names = _resolve(name, spec)
        check_dir(name, "IMAGE_ROOT", image_root, "the folder of the images")
        if not os.path.isdir(label_root):
            raise DatasetValidationError(
                f"{header(name)}: the label folder '{label_root}' does not exist"
                + ("" if spec.get("LABEL_ROOT") else " (derived from IMAGE_ROOT)")
                + f". Set DATASETS.CUSTOM.{name}.LABEL_ROOT to the folder of .txt label files."
            )
        rels = _list_images(image_root)
        if not rels:
            raise DatasetValidationError(
                f"{header(name)}: IMAGE_ROOT '{image_root}' holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}). Point IMAGE_ROOT at the images' folder."
            )
        labels = read_labels(name, image_root, label_root, rels, len(names), workers)
        for _, lineno, message in labels.problems:
            if lineno == 0:
                report.add(
                    name,
                    ERROR,
                    "label files that are not regular files or not text",
                    "make each label file a UTF-8 text file, one 'class cx cy w h' per line.",
                    message,
                    action="image dropped",
                    source=label_root,
                )
            else:
                report.add(
                    name,
                    ERROR,
                    "malformed label lines",
                    f"write each line as 'class cx cy w h' with class in 0..{len(names) - 1} "
                    "and coordinates normalized to 0..1.",
                    message,
                    action="dropped",
                    source=label_root,
                )
        images = [
            {"id": rel, "file_name": rel, "width": None, "height": None}
            for rel, usable in zip(rels, labels.usable)
            if usable
        ]
        # Boxes stay arrays until the shared checks have the image sizes.
        table = BoxTable(
            rels,
            labels.records,
            labels.image_index,
            labels.lineno,
            labels.category,
            labels.boxes,
        )
        orphans = _orphan_labels(label_root, labels.records)
        if orphans and os.path.realpath(label_root) != os.path.realpath(image_root):
            p = report.add(
                name,
                WARNING,
                "label files without an image",
                f"put the images in IMAGE_ROOT '{image_root}' (same relative path, an image "
                "extension), or delete the label files.",
                action="ignored",
                source=label_root,
            )
            for rel in orphans[:100]:
                p.add(rel)
            p.count = len(orphans)
        data = {
            "images": images,
            "annotations": [],
            "box_table": table,
            "image_infos": {img["id"]: info for img, info in zip(images, labels.infos)},
            "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
            "renumber": True,
        }
        return RawDataset(data, image_root, label_root)
