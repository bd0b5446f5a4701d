"""Image checks from file headers only: regular file, decodable header, size, EXIF, truncation.

JPEG and PNG headers are parsed here directly (the marker segments up to the frame header,
and the EXIF orientation tag; a PNG's IHDR chunk), several times faster than Pillow's
``Image.open``; anything else, or anything unusual, is left to ``Image.open``, which
also reads only the header. The pixel data is never decoded. The size returned is the size
detectron2's ``read_image`` produces, i.e. after the EXIF orientation is applied
(orientations 5 to 8 swap width and height). A file that is not a
regular file (a FIFO would block a data-loader worker forever) is refused from ``os.stat``
before anything opens it.
"""

import logging
import os
import stat
import struct
from typing import List, NamedTuple, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from .parallel import PARALLEL_MIN, map_chunks

__all__ = ["ImageInfo", "read_image_info", "read_image_infos"]

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 274
# Below this many images the process pool costs more than it saves.
_PARALLEL_MIN = PARALLEL_MIN
_CHUNK = 500
# The last bytes of a file, where the JPEG/PNG end marker must be.
_TAIL = 32


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
    tail_len = min(size, _TAIL)
    f.seek(size - tail_len)
    return _tail_missing(f.read(tail_len), fmt)


# Start-of-frame markers (they carry the size); not DHT (C4), JPG (C8) or DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
# Enough for the APPn segments (an EXIF block is at most 64 KiB) before the frame header.
_HEAD = 66 * 1024
_FIRST_READ = 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _exif_orientation(segment: bytes) -> int:
    """The orientation tag of IFD0 in an APP1 ``Exif`` segment (1 when absent or unreadable)."""
    tiff = segment[6:]
    if tiff[:2] == b"II":
        end = "<"
    elif tiff[:2] == b"MM":
        end = ">"
    else:
        return 1
    try:
        (offset,) = struct.unpack_from(end + "I", tiff, 4)
        (count,) = struct.unpack_from(end + "H", tiff, offset)
        for k in range(count):
            tag, kind, _, value = struct.unpack_from(end + "HHI4s", tiff, offset + 2 + 12 * k)
            if tag == _EXIF_ORIENTATION and kind == 3:
                return struct.unpack_from(end + "H", value)[0]
    except struct.error:
        pass
    return 1


def _parse_jpeg(head: bytes):
    """(width, height, orientation) from a JPEG's first bytes, or None to ask Pillow."""
    i, n, orientation = 2, len(head), 1
    while i + 4 <= n:
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", head, i + 2)
        if marker in _SOF:
            if i + 9 > n:
                return None
            height, width = struct.unpack_from(">HH", head, i + 5)
            return (width, height, orientation) if width and height else None
        if marker == 0xE1 and head[i + 4 : i + 10] == b"Exif\x00\x00":
            orientation = _exif_orientation(head[i + 4 : i + 2 + length])
        elif marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + length
    return None


def _parse_png(head: bytes):
    if len(head) < 24 or head[12:16] != b"IHDR" or b"eXIf" in head:
        return None  # an EXIF chunk: let Pillow read the orientation
    width, height = struct.unpack_from(">II", head, 16)
    return (width, height, 1) if width and height else None


def _fast_info(fd: int):
    """(width, height, orientation, format) for plain JPEG/PNG files, else None."""
    head = os.read(fd, _FIRST_READ)
    if head[:3] == b"\xff\xd8\xff":
        parsed, fmt = _parse_jpeg(head), "JPEG"
        if parsed is None and len(head) == _FIRST_READ:
            # The frame header comes after large APPn segments (EXIF with a thumbnail).
            head += os.read(fd, _HEAD - _FIRST_READ)
            parsed = _parse_jpeg(head)
    elif head[:8] == _PNG_SIGNATURE:
        parsed, fmt = _parse_png(head), "PNG"
    else:
        return None
    return None if parsed is None else (*parsed, fmt)


def _tail_missing(tail: bytes, fmt: Optional[str]) -> bool:
    """True when a JPEG's last bytes lack its end marker or a PNG's its IEND chunk."""
    if fmt == "JPEG":
        # Some writers pad after EOI; a few bytes of slack accept them.
        return b"\xff\xd9" not in tail
    if fmt == "PNG":
        return b"IEND" not in tail[-12:]
    return False


def read_image_info(path: str) -> ImageInfo:
    """Size of the image at ``path`` as detectron2 will read it, or why it cannot be read.

    Args:
        path: the image file.

    Returns:
        Width and height after EXIF orientation, or an ``error`` text.
    """
    size, why = _regular_file_size(path)
    if why:
        return ImageInfo(error=why)
    try:
        info = _read_plain_header(path, size)
    except OSError as e:
        return ImageInfo(error=f"cannot be read ({e.strerror})")
    return info if info is not None else _read_with_pillow(path, size)


def _regular_file_size(path: str) -> Tuple[int, str]:
    """``(size, "")`` of a non-empty regular file, else ``(0, why it is no image file)``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0, "file not found"
    except OSError as e:
        return 0, f"cannot stat ({e.strerror})"
    except ValueError:  # e.g. an embedded NUL character
        return 0, "is not a valid path"
    if not stat.S_ISREG(st.st_mode):
        return 0, f"is {_kind(st.st_mode)}, not an image file"
    if st.st_size == 0:
        return 0, "is empty (0 bytes)"
    return st.st_size, ""


def _read_plain_header(path: str, size: int) -> Optional[ImageInfo]:
    """The size of a plain JPEG/PNG file from its first and last bytes, or None for Pillow.

    Raises:
        OSError: the file cannot be opened or read.
    """
    # Plain file descriptors: this runs once per image of sets with 100,000s of images,
    # and a buffered file object costs more than the three system calls it wraps.
    fd = os.open(path, os.O_RDONLY)
    try:
        fast = _fast_info(fd)
        if fast is None:
            return None
        width, height, orientation, fmt = fast
        tail_len = min(size, _TAIL)
        if _tail_missing(os.pread(fd, tail_len, size - tail_len), fmt):
            return ImageInfo(error=f"is a truncated {fmt} file (no end marker)")
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        return ImageInfo(width, height)
    finally:
        os.close(fd)


def _read_with_pillow(path: str, size: int) -> ImageInfo:
    """The size from Pillow's ``Image.open``, which reads the header only."""
    try:
        with open(path, "rb") as f, Image.open(f) as img:
            width, height = img.size
            fmt = img.format
            orientation = 1
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # a broken EXIF block: detectron2 ignores it as well
                orientation = 1
            if _truncated(f, fmt, size):
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
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    out: List[ImageInfo] = []
    for result in map_chunks(
        _read_chunk,
        chunks,
        [len(c) for c in chunks],
        workers,
        desc,
        unit="img",
        parallel_min=_PARALLEL_MIN,
    ):
        out.extend(result)
    return out
