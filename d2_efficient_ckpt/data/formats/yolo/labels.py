"""Reading and parsing YOLO label files: one ``class cx cy w h`` (or a polygon) per line.

A YOLO folder has one small label file per image, often 100,000s of them, so the common case
is made cheap: files are read with plain file descriptors, and files whose every line is
five numeric fields are parsed a chunk of files at a time, all their numbers in one NumPy
text parse and the class and range tests as array operations. A file with anything else
(another layout, a bad number, an unknown class, a byte-order mark) goes through
:func:`parse_line` line by line, which says what is wrong with which line, and keeps the
good ones. Both ways give the same boxes. Each image's header is read in the same pass
(:func:`read_labels`), in worker processes for large folders.
"""

import math
import os
import re
import stat
import warnings
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ...errors import DatasetValidationError
from ...image_headers import ImageInfo, read_image_info
from ...parallel import map_chunks
from ..files import read_text

__all__ = ["Labels", "label_path", "parse_line", "read_labels"]

# Images per chunk: one worker task, and one text parse of its label files.
_CHUNK = 2000
# A file of lines of exactly five fields of number characters, '\n' or '\r\n' line ends, no
# blank lines: its n-th line is the n-th group of five numbers. Any other text (letters
# such as "nan", other separators, blank lines) takes the line-by-line path.
_FIELD = r"[-+.0-9eE]+"
_FIELDS5 = rf"[ \t]*{_FIELD}(?:[ \t]+{_FIELD}){{4}}[ \t]*"
_FIVE_FIELD_LINES = re.compile(rf"(?:{_FIELDS5}\r?\n)*(?:{_FIELDS5})?")
# Values no larger than this cannot overflow in the sums of the finiteness tests.
_HUGE = 1e300
# Byte-order marks (UTF-8/16/32): such files are decoded by read_text.
_BOM_STARTS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")

# (image index, line number or 0, message) of an unusable label file or a malformed line.
_Problem = Tuple[int, int, str]
# (image index, line number, class index, cx, cy, w, h) of one box.
_Row = Tuple[float, ...]
# What one chunk of images gives: label file names, usable flags, problems, box rows, headers.
_Chunk = Tuple[List[str], List[bool], List[_Problem], np.ndarray, List[ImageInfo]]


class Labels(NamedTuple):
    """What the label files of a list of images hold."""

    #: Per image: its label file relative to LABEL_ROOT, as messages name it.
    records: List[str]
    #: Per image: False when its label file is unusable (the image is dropped).
    usable: List[bool]
    #: ``(image index, line number or 0, message)`` in image and line order: a label file
    #: that is unusable (line 0) or a malformed line (the message names it).
    problems: List[Tuple[int, int, str]]
    #: Per box: image index, line number, class index, normalized cx, cy, w, h.
    image_index: np.ndarray
    lineno: np.ndarray
    category: np.ndarray
    boxes: np.ndarray
    #: The header of each image whose label file is usable, in image order.
    infos: List[ImageInfo]


def label_path(label_root: str, rel: str) -> str:
    """The label file of the image at ``rel`` (relative to IMAGE_ROOT)."""
    # String operations: this runs once per image of sets with 100,000s of images.
    dot = rel.rfind(".")
    return f"{label_root}{os.sep}{rel[:dot] if dot > rel.rfind(os.sep) else rel}.txt"


def parse_line(line: str, num_classes: int) -> Tuple[Any, Any, str]:
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


def read_label(name: str, path: str) -> Tuple[str, str]:
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
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.read(fd, st.st_size + 1)
            while len(raw) > st.st_size:  # grown since the stat: read the rest
                more = os.read(fd, 1 << 16)
                if not more:
                    break
                raw += more
        finally:
            os.close(fd)
        if not raw.startswith(_BOM_STARTS):
            return raw.decode("utf-8"), ""
    except (OSError, UnicodeDecodeError):
        pass  # read_text says what is wrong, in its words
    try:
        return read_text(name, "LABEL_ROOT", path)[0], ""
    except DatasetValidationError as e:
        return "", str(e).split(": ", 1)[-1].split(" Re-save")[0]


def _parse_slow(
    k: int, text: str, num_classes: int, record: str, out: List[_Row], problems: List[_Problem]
) -> None:
    """Parse one label file line by line: each good line to ``out``, each bad to ``problems``."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cls_idx, box, why = parse_line(line, num_classes)
        if box is None:
            problems.append((k, lineno, f"{record}:{lineno}: {line.strip()[:60]!r} ({why})"))
        else:
            out.append((k, lineno, cls_idx, *box))


def _numbers(text: str, expected: int) -> Optional[np.ndarray]:
    """The ``expected`` numbers of whitespace-separated fields of ``[-+.0-9eE]``, or None.

    NumPy's text parser is Python's own ``float`` parsing, minus the per-field objects. A
    field it cannot read whole stops it early (one that is two numbers, like ``1-2``, stops
    it as well, for want of a separator), so exactly ``expected`` numbers mean every field
    was one number, the one ``float`` reads.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # NumPy < 2.3 warns, then stops
        try:
            values = np.fromstring(text, dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    return values if len(values) == expected else None


def _parse_chunk(
    items: Sequence[Tuple[int, str]],
    num_classes: int,
    records: Sequence[str],
    problems: List[_Problem],
    start: int,
) -> np.ndarray:
    """Rows ``(image index, line, class, cx, cy, w, h)`` of the label texts ``items``.

    ``items`` are ``(k, text)`` of the chunk's k-th image, named ``records[k]``; image
    indices in the rows and ``problems`` are ``start + k``.
    """
    texts: List[str] = []
    fast: List[Tuple[int, int, str]] = []  # (image index, lines, text)
    slow: List[Tuple[int, str]] = []
    for k, text in items:
        if not text:
            continue
        if _FIVE_FIELD_LINES.fullmatch(text) is None:
            slow.append((k, text))
            continue
        texts.append(text)
        fast.append((k, text.count("\n") + (not text.endswith("\n")), text))
    values = _numbers(" ".join(texts), 5 * sum(n for _, n, _ in fast))
    if values is None:
        # Some file has a field that is no number: find which, file by file.
        kept, values_list = [], []
        for k, n, text in fast:
            try:
                numbers = list(map(float, text.split()))
            except ValueError:
                slow.append((k, text))
                continue
            values_list += numbers
            kept.append((k, n, text))
        fast, values = kept, np.array(values_list, dtype=np.float64)
    table = values.reshape(-1, 5)
    counts = np.array([n for _, n, _ in fast], dtype=np.int64)
    image_index = np.repeat(np.array([k for k, _, _ in fast], dtype=np.int64), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    lineno = np.arange(len(table), dtype=np.int64) - starts + 1
    cls = table[:, 0]
    with np.errstate(invalid="ignore"):
        good = (
            (np.abs(table) <= _HUGE).all(axis=1)
            & (cls == np.floor(cls))
            & (cls >= 0)
            & (cls < num_classes)
        )
    if not good.all():
        # A file with any bad line is parsed line by line, which names the line.
        bad = set(image_index[~good].tolist())
        slow += [(k, text) for k, _, text in fast if k in bad]
        keep = ~np.isin(image_index, np.fromiter(bad, dtype=np.int64))
        table, image_index, lineno = table[keep], image_index[keep], lineno[keep]
    rows = np.column_stack([image_index + start, lineno, table])
    if slow:
        extra: List[_Row] = []
        for k, text in sorted(slow, key=lambda item: item[0]):
            _parse_slow(start + k, text, num_classes, records[k], extra, problems)
        if extra:
            # Boxes are kept in file and line order.
            rows = np.concatenate([rows, np.array(extra, dtype=np.float64).reshape(-1, 7)])
            rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    return rows


def _read_chunk(task: Tuple[str, str, str, Sequence[str], int, int]) -> _Chunk:
    """Label files and image headers of one chunk of images (runs in a worker process)."""
    name, image_root, label_root, rels, start, num_classes = task
    records = [label_path(label_root, rel)[len(label_root) + 1 :] for rel in rels]
    usable = [True] * len(rels)
    problems: List[_Problem] = []
    items: List[Tuple[int, str]] = []
    infos: List[ImageInfo] = []
    for k, (rel, record) in enumerate(zip(rels, records)):
        text, why = read_label(name, f"{label_root}{os.sep}{record}")
        if why:
            usable[k] = False
            problems.append((start + k, 0, f"{record}: {why}"))
            continue
        items.append((k, text))
        # The header now, while the folder entries are fresh: the checks need every size.
        infos.append(read_image_info(f"{image_root}{os.sep}{rel}"))
    rows = _parse_chunk(items, num_classes, records, problems, start)
    return records, usable, problems, rows, infos


def read_labels(
    name: str,
    image_root: str,
    label_root: str,
    rels: Sequence[str],
    num_classes: int,
    workers: int = 0,
) -> Labels:
    """Read and parse the label file and the image header of every image.

    See the module docstring; files are read in worker processes when there are many
    (:func:`~d2_efficient_ckpt.data.parallel.map_chunks`).

    Args:
        name: the dataset name (for messages of :func:`read_text`).
        image_root: the image folder.
        label_root: the label folder.
        rels: image paths relative to IMAGE_ROOT.
        num_classes: classes are ``0 .. num_classes - 1``.
        workers: worker processes; 0 picks ``min(8, cpu count)``, 1 reads here.

    Returns:
        The boxes, the unusable files and malformed lines in image and line order, and the
        header of each image with a usable label file.
    """
    starts = range(0, len(rels), _CHUNK)
    tasks = [(name, image_root, label_root, rels[i : i + _CHUNK], i, num_classes) for i in starts]
    records: List[str] = []
    usable: List[bool] = []
    problems: List[Tuple[int, int, str]] = []
    rows: List[np.ndarray] = []
    infos: List[ImageInfo] = []
    sizes = [len(task[3]) for task in tasks]
    desc = f"reading labels and images of {name}"
    for result in map_chunks(_read_chunk, tasks, sizes, workers, desc, unit="img"):
        records += result[0]
        usable += result[1]
        problems += result[2]
        rows.append(result[3])
        infos += result[4]
    table = np.concatenate(rows) if rows else np.zeros((0, 7))
    problems.sort(key=lambda p: (p[0], p[1]))
    return Labels(
        records,
        usable,
        problems,
        table[:, 0].astype(np.int64),
        table[:, 1].astype(np.int64),
        table[:, 2].astype(np.int64),
        table[:, 3:],
        infos,
    )
