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

import math
import os
import stat
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from .errors import DatasetConfigError, DatasetValidationError
from .formats import DATASET_FORMAT_REGISTRY, DatasetFormat, RawDataset
from .report import ERROR, WARNING, ValidationReport
from .sources import check_dir, check_file, header, read_text
from .voc import check_names

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
    """IMAGE_ROOT, LABEL_ROOT and class names, reading DATA_YAML when it is given."""
    image_root = spec.get("IMAGE_ROOT")
    names = spec.get("NAMES")
    if spec.get("DATA_YAML"):
        path = spec["DATA_YAML"]
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
        names = _names_from_yaml(name, path, cfg.get("names"))
        if not image_root:
            split = spec["SPLIT"]
            entry = cfg.get(split)
            if not isinstance(entry, str) or entry.endswith(".txt"):
                raise DatasetConfigError(
                    f"DATASETS.CUSTOM.{name}: DATA_YAML '{path}' gives {split}: {entry!r}; only "
                    "a folder of images is supported. Set DATASETS.CUSTOM."
                    f"{name}.IMAGE_ROOT to the images' folder."
                )
            base = os.path.join(os.path.dirname(path), str(cfg.get("path") or ""))
            image_root = os.path.abspath(os.path.join(base, entry))
    label_root = spec.get("LABEL_ROOT") or default_label_root(image_root)
    if label_root is None:
        raise DatasetConfigError(
            f"DATASETS.CUSTOM.{name}: IMAGE_ROOT '{image_root}' has no 'images' path "
            "component, so the label folder cannot be derived. Set "
            f"DATASETS.CUSTOM.{name}.LABEL_ROOT to the folder of .txt label files."
        )
    return image_root, label_root, names


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


def _orphan_labels(label_root: str, rels: List[str]) -> List[str]:
    """Label files (relative to ``label_root``) that belong to no listed image."""
    expected = {os.path.splitext(r)[0] + ".txt" for r in rels}
    orphans = []
    for dirpath, dirnames, filenames in os.walk(label_root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, label_root)
        for f in sorted(filenames):
            rel = f if rel_dir == "." else os.path.join(rel_dir, f)
            if f.endswith(".txt") and rel not in expected:
                orphans.append(rel)
    return orphans


def _label_path(label_root: str, rel: str) -> str:
    # String operations: this runs once per image of sets with 100,000s of images.
    dot = rel.rfind(".")
    return f"{label_root}{os.sep}{rel[:dot] if dot > rel.rfind(os.sep) else rel}.txt"


def _parse_boxes(text: str, num_classes: int) -> Optional[List[Tuple[int, int, List[float]]]]:
    """All lines of a label file of plain 'class cx cy w h' lines at once, or None.

    The fast path for the common case; None (any other layout, any bad value) sends the
    file through :func:`_parse_line`, which says what is wrong with which line.
    """
    lines = text.splitlines()
    tokens = text.split()
    if len(tokens) != 5 * sum(1 for line in lines if line.strip()):
        return None
    try:
        values = list(map(float, tokens))
    except ValueError:
        return None
    if not math.isfinite(sum(values)):
        return None
    out = []
    k = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line.split()) != 5:
            return None
        cls = values[k]
        if cls != int(cls) or not 0 <= cls < num_classes:
            return None
        out.append((lineno, int(cls), values[k + 1 : k + 5]))
        k += 5
    return out


def _parse_line(line: str, num_classes: int) -> Tuple[Any, Any, str]:
    """(class index, normalized cxcywh, "") or (None, None, why the line is unusable)."""
    parts = line.split()
    try:
        values = list(map(float, parts))
    except ValueError:
        return None, None, "not numbers"
    if not math.isfinite(sum(values)):
        return None, None, "not finite numbers"
    cls = values[0]
    if cls != int(cls) or not 0 <= cls < num_classes:
        return None, None, f"class {parts[0]} is not in 0..{num_classes - 1}"
    coords = values[1:]
    if len(coords) == 4:
        return int(cls), coords, ""
    if len(coords) >= 6 and len(coords) % 2 == 0:  # a polygon: its bounds are the box
        xs, ys = coords[0::2], coords[1::2]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return int(cls), [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], ""
    return None, None, f"{len(parts)} values (expected 'class cx cy w h' or a polygon)"


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
            + [_label_path(label_root, r) for r in rels]
        )

    @classmethod
    def read(cls, name: str, spec: Dict[str, Any], report: ValidationReport) -> RawDataset:
        """See :meth:`DatasetFormat.read`."""
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
        images: List[Dict[str, Any]] = []
        annotations: List[Dict[str, Any]] = []
        for rel in rels:
            label = _label_path(label_root, rel)
            record = label[len(label_root) + 1 :]  # relative to LABEL_ROOT, for messages
            text, why = _read_label(name, label)
            if why:
                report.add(
                    name,
                    ERROR,
                    "label files that are not regular files or not text",
                    "make each label file a UTF-8 text file, one 'class cx cy w h' per line.",
                    f"{record}: {why}",
                    action="image dropped",
                    source=label_root,
                )
                continue
            images.append({"id": rel, "file_name": rel, "width": None, "height": None})
            fast = _parse_boxes(text, len(names))
            if fast is not None:
                annotations.extend(
                    {
                        "id": f"{record}:{lineno}",
                        "image_id": rel,
                        "category_id": cls_idx,
                        "yolo_box": box,
                        "iscrowd": 0,
                    }
                    for lineno, cls_idx, box in fast
                )
                continue
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                cls_idx, box, why = _parse_line(line, len(names))
                if box is None:
                    report.add(
                        name,
                        ERROR,
                        "malformed label lines",
                        f"write each line as 'class cx cy w h' with class in 0..{len(names) - 1} "
                        "and coordinates normalized to 0..1.",
                        f"{record}:{lineno}: {line.strip()[:60]!r} ({why})",
                        action="dropped",
                        source=label_root,
                    )
                    continue
                annotations.append(
                    {
                        "id": f"{record}:{lineno}",
                        "image_id": rel,
                        "category_id": cls_idx,
                        "yolo_box": box,
                        "iscrowd": 0,
                    }
                )
        orphans = _orphan_labels(label_root, rels)
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
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
            "renumber": True,
        }
        return RawDataset(data, image_root, label_root)


def _read_label(name: str, path: str) -> Tuple[str, str]:
    """(text, "") of a label file, ("", "") when there is none, or ("", why it is unusable)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "", ""  # a background image, as in Ultralytics
    except OSError as e:
        return "", f"cannot stat ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        # Checked before opening: reading a FIFO blocks forever.
        return "", "not a regular file (a directory, FIFO or device)"
    try:
        return read_text(name, "LABEL_ROOT", path)[0], ""
    except DatasetValidationError as e:
        return "", str(e).split(": ", 1)[-1].split(" Re-save")[0]
