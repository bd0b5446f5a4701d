"""Checks of a dataset's image records and image files.

Part of :func:`~d2_efficient_ckpt.data.checks.check_records`: image records with problems
are reported and dropped; image sizes come from the file headers
(:mod:`~d2_efficient_ckpt.data.image_headers`).
"""

import os
from typing import Any, Callable, Dict, List, Mapping, Set, Tuple

from ..image_headers import ImageInfo, read_image_infos
from ..report import ERROR
from .json_types import is_int, is_number

__all__ = ["check_images"]


def check_images(
    name: str,
    data: Dict[str, Any],
    image_root: str,
    check_sizes: bool,
    workers: int,
    add: Callable[..., None],
) -> Tuple[Dict[Any, Dict[str, Any]], Set[Any], bool]:
    """Check image records and files; drop the unusable ones.

    Args:
        name: the dataset name.
        data: the COCO-shaped dict (its image records are modified in place). An optional
            ``image_infos`` entry, ``{image id: ImageInfo}``, holds headers already read;
            it is removed.
        image_root: folder that relative ``file_name`` values are relative to.
        check_sizes: read every header (False: only images without a size; the others are
            only checked to be regular files).
        workers: header-reading processes (0: automatic).
        add: ``add(severity, title, fix, record, action)`` adds a report row.

    Returns:
        The kept images by id, every valid id seen (dropped ones included), and whether a
        record changed.
    """
    all_ids = {
        img.get("id")
        for img in data["images"]
        if isinstance(img, dict) and (is_int(img.get("id")) or isinstance(img.get("id"), str))
    }
    images = _check_image_records(data["images"], add)
    kept = list(images.values())
    need = [img for img in kept if check_sizes or not img.get("width")]
    # Headers a format reader already read along with its own files.
    known = data.pop("image_infos", None) or {}
    infos = _read_headers(name, need, known, image_root, workers)
    missing_fix = (
        f"restore the files under IMAGE_ROOT '{image_root}', or remove those images from the "
        "annotations."
    )
    unchecked = [img for img in kept if not (check_sizes or not img.get("width"))]
    _check_regular_files(unchecked, images, image_root, missing_fix, add)
    changed = _apply_headers(need, infos, images, missing_fix, add)
    if kept and not images:
        add(
            ERROR,
            "datasets whose images are all missing or unreadable",
            f"IMAGE_ROOT '{image_root}' is probably wrong: set it to the folder that "
            '"file_name" is relative to.',
            None,
            "none",
        )
    return images, all_ids, changed


def _check_image_records(records: List[Any], add: Callable[..., None]) -> Dict[Any, Dict[str, Any]]:
    """The usable image records by id, in order; the others are reported and dropped."""
    images: Dict[Any, Dict[str, Any]] = {}
    for i, img in enumerate(records):
        img_id = img.get("id") if isinstance(img, dict) else None
        if not (is_int(img_id) or isinstance(img_id, str)):
            add(
                ERROR,
                'images without an integer "id"',
                'give every image a unique "id".',
                f"images[{i}]: {img!r}"[:200],
                "dropped",
            )
            continue
        if img_id in images:
            add(
                ERROR,
                "duplicate image ids",
                'give every image a unique "id".',
                f"image id {img_id!r} (images[{i}])",
                "later ones dropped",
            )
            continue
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            add(
                ERROR,
                'images without a "file_name"',
                'set "file_name" to the image path relative to IMAGE_ROOT.',
                f"image id {img_id!r}",
                "dropped",
            )
            continue
        _check_size_fields(img, img_id, add)
        images[img_id] = img
    return images


def _check_size_fields(img: Dict[str, Any], img_id: Any, add: Callable[..., None]) -> None:
    # A bad size is no reason to drop the image: the file's header has the right one.
    for key in ("width", "height"):
        value = img.get(key)
        if value is not None and (not is_number(value) or value <= 0):
            add(
                ERROR,
                'images with a bad "width"/"height"',
                "store each image's pixel size as positive numbers (or remove them: they "
                "are then read from the file).",
                f"image id {img_id!r}: {key}={value!r}",
                "size read from the file",
            )
            img[key] = None


def _read_headers(
    name: str,
    need: List[Dict[str, Any]],
    known: Mapping[Any, ImageInfo],
    image_root: str,
    workers: int,
) -> List[ImageInfo]:
    """The header of each image of ``need``: from ``known``, else read from its file."""
    unread = iter(
        read_image_infos(
            [os.path.join(image_root, img["file_name"]) for img in need if img["id"] not in known],
            workers=workers,
            desc=f"checking images of {name}",
        )
    )
    return [known[img["id"]] if img["id"] in known else next(unread) for img in need]


def _check_regular_files(
    unchecked: List[Dict[str, Any]],
    images: Dict[Any, Dict[str, Any]],
    image_root: str,
    missing_fix: str,
    add: Callable[..., None],
) -> None:
    """Drop the images whose header is not read and whose file is not a regular file."""
    for img in unchecked:
        # Without header reads, still refuse anything that is not a regular file: a FIFO
        # would block a data-loader worker forever.
        path = os.path.join(image_root, img["file_name"])
        if not os.path.isfile(path):
            add(
                ERROR,
                "image files missing or not regular files",
                missing_fix,
                f"image id {img['id']!r}: '{img['file_name']}'",
                "dropped",
            )
            images.pop(img["id"])


def _apply_headers(
    need: List[Dict[str, Any]],
    infos: List[ImageInfo],
    images: Dict[Any, Dict[str, Any]],
    missing_fix: str,
    add: Callable[..., None],
) -> bool:
    """Drop unreadable images, take sizes from the headers; True when a record changed."""
    changed = False
    for img, info in zip(need, infos):
        record = f"image id {img['id']!r}: '{img['file_name']}'"
        if info.error == "file not found":
            add(ERROR, "image files not found", missing_fix, record, "dropped")
            images.pop(img["id"])
        elif info.error:
            add(
                ERROR,
                "unreadable image files",
                "replace each file with a complete image (JPEG/PNG), or remove it from the "
                "annotations.",
                f"{record} {info.error}",
                "dropped",
            )
            images.pop(img["id"])
        elif img.get("width") is None or img.get("height") is None:
            img["width"], img["height"] = info.width, info.height
            changed = True
        elif (round(img["width"]), round(img["height"])) != (info.width, info.height):
            add(
                ERROR,
                "image sizes that disagree with the file",
                "correct width/height in the annotations (the file's size is what detectron2 "
                "reads, after applying the EXIF orientation).",
                f"{record}: annotation {img['width']:g}x{img['height']:g}, file "
                f"{info.width}x{info.height}",
                "file's size used",
            )
            img["width"], img["height"] = info.width, info.height
            changed = True
    return changed
