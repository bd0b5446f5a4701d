"""Boxes of many label files as arrays: what a YOLO folder of 100,000s of boxes is held in.

One Python dict per box costs about half a kilobyte and a slow per-box loop; a dataset of
millions of boxes then needs gigabytes before training starts. A :class:`BoxTable` keeps the
normalized boxes as columns instead. :func:`~d2_efficient_ckpt.data.checks.check_records`
converts them with each image's real size and tests them all at once
(:meth:`BoxTable.split`): the rows that every box check would pass unchanged stay in the
table, every other row becomes an ordinary annotation dict and goes through the same
per-annotation checks as any other format, and the rows those checks keep join the table
again (:meth:`BoxTable.merge`). The result, a :class:`CheckedBoxes`, is a sequence of
annotation dicts for whoever iterates it, and writes itself as COCO json in chunks.
"""

import json
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import orjson

__all__ = ["BoxTable", "CheckedBoxes"]

# Rows formatted per string when writing json: bounds the size of each string.
_JSON_ROWS = 20000


class BoxTable:
    """Normalized ``class cx cy w h`` rows of many label files, in file and line order.

    Args:
        image_ids: the id of each image the rows refer to (index = ``image_index``).
        records: how messages name each image's label file (same index).
        image_index: per row, the index of its image.
        lineno: per row, its line number in the label file.
        category: per row, the class index.
        boxes: per row, normalized center x, center y, width, height (``float64``, shape
            ``(rows, 4)``).
    """

    def __init__(
        self,
        image_ids: Sequence[Any],
        records: Sequence[str],
        image_index: np.ndarray,
        lineno: np.ndarray,
        category: np.ndarray,
        boxes: np.ndarray,
    ) -> None:
        self.image_ids = list(image_ids)
        self.records = list(records)
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self.lineno = np.asarray(lineno, dtype=np.int64)
        self.category = np.asarray(category, dtype=np.int64)
        # Taken as it is: often a view of the columns of a wider table.
        self.boxes = np.asarray(boxes, dtype=np.float64)
        self._clean = np.zeros(0, dtype=bool)
        self._xywh = np.zeros((0, 4))
        self._suspects: Dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.image_index)

    def annotation_id(self, row: int) -> str:
        """How messages name a row: ``<label file>:<line>``, as for any YOLO annotation."""
        return f"{self.records[self.image_index[row]]}:{self.lineno[row]}"

    def split(
        self, images: Mapping[Any, Dict[str, Any]], categories: Mapping[int, str]
    ) -> List[Dict[str, Any]]:
        """Convert every row with its image's size; return the rows that need a closer look.

        A row is clean when its image is kept, its class is known, and its pixel box is
        finite, has a positive width and height, and lies inside the image (with the same
        0.01 pixel slack as the per-annotation check). The arithmetic is the per-annotation
        check's, in the same order, so a clean row's box is bit for bit what that check
        would have produced.

        Args:
            images: the kept images by id, with their sizes.
            categories: the known category ids.

        Returns:
            The other rows of kept images, as annotation dicts with ``yolo_box``, in order.
            Rows of dropped images are left out silently (their image was reported).
        """
        n_images = len(self.image_ids)
        width = np.full(n_images, np.nan)
        height = np.full(n_images, np.nan)
        for k, img_id in enumerate(self.image_ids):
            img = images.get(img_id)
            if img is not None:
                width[k], height[k] = img["width"], img["height"]
        W, H = width[self.image_index], height[self.image_index]
        kept = ~np.isnan(W)
        cx, cy, bw, bh = self.boxes.T
        with np.errstate(all="ignore"):  # overflow and NaN are what the tests below find
            x, y = (cx - bw / 2) * W, (cy - bh / 2) * H
            w, h = bw * W, bh * H
            clean = (
                kept
                & np.isin(self.category, np.fromiter(categories, dtype=np.int64))
                & np.isfinite(x + y + w + h)
                & (w > 0)
                & (h > 0)
                & (x >= 0)
                & (y >= 0)
                & (x + w <= W + 0.01)
                & (y + h <= H + 0.01)
            )
        self._clean = clean
        self._xywh = np.stack([x, y, w, h], axis=1)
        rows = np.flatnonzero(kept & ~clean)
        self._suspects = {}
        out = []
        for r in rows.tolist():
            ann_id = self.annotation_id(r)
            self._suspects[ann_id] = r
            out.append(
                {
                    "id": ann_id,
                    "image_id": self.image_ids[self.image_index[r]],
                    "category_id": int(self.category[r]),
                    "iscrowd": 0,
                    "yolo_box": self.boxes[r].tolist(),
                }
            )
        return out

    def merge(self, kept: Sequence[Dict[str, Any]], n_annotated: Dict[Any, int]) -> "CheckedBoxes":
        """The clean rows and the ``kept`` annotation dicts of :meth:`split`, in row order.

        Args:
            kept: the annotations the per-annotation checks kept, each one returned by
                :meth:`split` (bbox and area set, possibly clipped).
            n_annotated: boxes per image id, counted by the per-annotation checks; the clean
                rows are added to it.

        Returns:
            The checked boxes, image ids as in :attr:`image_ids`, ids numbered from 1.
        """
        keep = self._clean.copy()
        xywh = self._xywh
        for ann in kept:
            r = self._suspects[ann["id"]]
            keep[r] = True
            xywh[r] = ann["bbox"]
        rows = np.flatnonzero(keep)
        xywh = xywh[rows]
        # The per-annotation check sets the same product for the rows it kept.
        area = xywh[:, 2] * xywh[:, 3]
        image_index = self.image_index[rows]
        counts = np.bincount(self.image_index[self._clean], minlength=len(self.image_ids))
        for k in np.flatnonzero(counts).tolist():
            img_id = self.image_ids[k]
            n_annotated[img_id] = n_annotated.get(img_id, 0) + int(counts[k])
        return CheckedBoxes(list(self.image_ids), image_index, self.category[rows], xywh, area)


class CheckedBoxes:
    """Checked boxes in pixels (``XYWH_ABS``): a sequence of COCO annotation dicts.

    Iterating yields ``{"id", "image_id", "category_id", "iscrowd", "bbox", "area"}`` per
    box, ids numbered from 1; :meth:`json_chunks` writes the same as json text.
    """

    def __init__(
        self,
        image_ids: List[Any],
        image_index: np.ndarray,
        category: np.ndarray,
        xywh: np.ndarray,
        area: np.ndarray,
    ) -> None:
        self.image_ids = image_ids
        self.image_index = image_index
        self.category = category
        self.xywh = xywh
        self.area = area

    def __len__(self) -> int:
        return len(self.image_index)

    def renumber_images(self, new_ids: Mapping[Any, int]) -> None:
        """Replace the image ids (e.g. file names) by ``new_ids[old id]``."""
        self.image_ids = [new_ids.get(i) for i in self.image_ids]

    def _rows(
        self, start: int, stop: int, ids: Sequence[Any]
    ) -> Iterator[Tuple[int, Any, int, List[float], float]]:
        return zip(
            range(start + 1, stop + 1),
            [ids[k] for k in self.image_index[start:stop].tolist()],
            self.category[start:stop].tolist(),
            self.xywh[start:stop].tolist(),
            self.area[start:stop].tolist(),
        )

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for start in range(0, len(self), _JSON_ROWS):
            rows = self._rows(start, start + _JSON_ROWS, self.image_ids)
            for ann_id, img_id, cat, bbox, area in rows:
                yield {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": cat,
                    "iscrowd": 0,
                    "bbox": bbox,
                    "area": area,
                }

    def json_chunks(self) -> Iterator[str]:
        """The boxes as the comma-separated json objects of a COCO ``annotations`` list.

        The objects are those of :meth:`__iter__`, in pieces of at most ``_JSON_ROWS``. The
        floats are written by orjson, straight from the arrays: the shortest text that reads
        back as the same double, as ``repr`` finds, several times faster than ``repr`` for
        millions of them (exponents are spelled ``1e-5`` where ``repr`` writes ``1e-05``).
        """
        ids = [str(i) if type(i) is int else json.dumps(i) for i in self.image_ids]
        for start in range(0, len(self), _JSON_ROWS):
            stop = start + _JSON_ROWS
            boxes = _float_texts(self.xywh[start:stop])
            areas = _float_texts(self.area[start:stop])
            yield ",".join(
                [
                    f'{{"id":{i},"image_id":{ids[k]},"category_id":{c},"iscrowd":0,'
                    f'"bbox":[{box}],"area":{area}}}'
                    for i, k, c, box, area in zip(
                        range(start + 1, stop + 1),
                        self.image_index[start:stop].tolist(),
                        self.category[start:stop].tolist(),
                        boxes,
                        areas,
                    )
                ]
            )


def _float_texts(values: np.ndarray) -> List[str]:
    """json text of each row of a 2-d array (``"x,y,..."``) or of each value of a 1-d one."""
    text = orjson.dumps(np.ascontiguousarray(values), option=orjson.OPT_SERIALIZE_NUMPY)
    if values.ndim == 2:
        return text[2:-2].decode().split("],[")
    return text[1:-1].decode().split(",")
