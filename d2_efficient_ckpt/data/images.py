"""Image checks from file headers only: regular file, decodable header, size, EXIF, truncation.

Pillow's ``Image.open`` reads the header and stops, so the pixel data is never decoded.
The size returned is the size detectron2's ``read_image`` produces, i.e. after the EXIF
orientation is applied (orientations 5 to 8 swap width and height). A file that is not a
regular file (a FIFO would block a data-loader worker forever) is refused from ``os.stat``
before anything opens it.
"""

import logging
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from typing import List, NamedTuple, Optional, Sequence

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

__all__ = ["ImageInfo", "read_image_info", "read_image_infos"]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 274
# Below this many images the process pool costs more than it saves.
_PARALLEL_MIN = 4000
_CHUNK = 500


class ImageInfo(NamedTuple):
    """What a header says about one image file; ``error`` is set when it is unusable."""

    width: int = 0
    height: int = 0
    #: Empty when the file is usable, else why not (for the report).
    error: str = ""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _truncated(f, fmt: Optional[str], size: int) -> bool:
    """True when a JPEG lacks its end marker or a PNG its IEND chunk."""
    if fmt not in ("JPEG", "PNG"):
        return False
    tail_len = min(size, 32)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    if fmt == "JPEG":
        # Some writers pad after EOI; a few bytes of slack accept them.
        return b"\xff\xd9" not in tail
    return b"IEND" not in tail[-12:]


def read_image_info(path: str) -> ImageInfo:
    """Size of the image at ``path`` as detectron2 will read it, or why it cannot be read.

    Args:
        path: the image file.

    Returns:
        Width and height after EXIF orientation, or an ``error`` text.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ImageInfo(error="file not found")
    except OSError as e:
        return ImageInfo(error=f"cannot stat ({e.strerror})")
    except ValueError:  # e.g. an embedded NUL character
        return ImageInfo(error="is not a valid path")
    if not stat.S_ISREG(st.st_mode):
        return ImageInfo(error=f"is {_kind(st.st_mode)}, not an image file")
    if st.st_size == 0:
        return ImageInfo(error="is empty (0 bytes)")
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            width, height = img.size
            fmt = img.format
            orientation = 1
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # a broken EXIF block: detectron2 ignores it as well
                orientation = 1
            if _truncated(f, fmt, st.st_size):
                return ImageInfo(error=f"is a truncated {fmt} file (no end marker)")
    except UnidentifiedImageError:
        return ImageInfo(error="is not an image Pillow can read")
    except (OSError, ValueError, SyntaxError) as e:
        return ImageInfo(error=f"cannot be read ({type(e).__name__}: {e})")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(int(width), int(height))


def _read_chunk(paths: Sequence[str]) -> List[ImageInfo]:
    return [read_image_info(p) for p in paths]


def read_image_infos(paths: Sequence[str], workers: int = 0, desc: str = "") -> List[ImageInfo]:
    """:func:`read_image_info` for many files, in worker processes when there are many.

    Args:
        paths: image files.
        workers: worker processes; 0 picks ``min(8, cpu count)``, 1 reads in this process.
        desc: progress-bar label (a bar is shown for large sets only).

    Returns:
        One :class:`ImageInfo` per path, in order.
    """
    n = len(paths)
    if workers <= 0:
        workers = min(8, os.cpu_count() or 1)
    show = n >= _PARALLEL_MIN
    if workers == 1 or n < _PARALLEL_MIN:
        return [read_image_info(p) for p in tqdm(paths, desc=desc, disable=not show)]
    chunks = [paths[i : i + _CHUNK] for i in range(0, n, _CHUNK)]
    out: List[ImageInfo] = []
    with (
        ProcessPoolExecutor(max_workers=workers) as pool,
        tqdm(total=n, desc=desc, unit="img") as bar,
    ):
        for result in pool.map(_read_chunk, chunks):
            out.extend(result)
            bar.update(len(result))
    return out
