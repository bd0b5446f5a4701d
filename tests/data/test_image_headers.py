"""Image headers: the direct JPEG/PNG parser agrees with Pillow, EXIF orientation included."""

import os

import pytest
from PIL import Image, ImageOps

from d2_efficient_ckpt.data.image_headers import read_image_info


def _save(path, fmt, size, orientation=None, **kwargs):
    image = Image.new("RGB", size, (10, 200, 30))
    if orientation:
        exif = Image.Exif()
        exif[274] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, format=fmt, **kwargs)


@pytest.mark.parametrize(
    "fmt, size, orientation, kwargs",
    [
        ("JPEG", (64, 48), None, {}),
        ("JPEG", (64, 48), 6, {}),
        ("JPEG", (64, 48), 3, {}),
        ("JPEG", (33, 17), 8, {"progressive": True}),
        ("JPEG", (640, 480), 5, {"quality": 95, "subsampling": 0}),
        # An APP segment larger than the first read: the frame header comes later.
        ("JPEG", (40, 30), 6, {"icc_profile": b"\0" * 20000}),
        ("PNG", (20, 10), None, {}),
        ("BMP", (5, 7), None, {}),  # not parsed here: Pillow reads the header
    ],
)
def test_size_as_detectron2_reads_it(tmp_path, fmt, size, orientation, kwargs):
    path = str(tmp_path / f"img.{fmt.lower()}")
    _save(path, fmt, size, orientation, **kwargs)
    with Image.open(path) as img:
        expected = ImageOps.exif_transpose(img).size  # what read_image produces
    assert read_image_info(path)[:2] == expected
    assert read_image_info(path).error == ""


def test_png_truncated_and_special_files(tmp_path):
    path = tmp_path / "a.png"
    _save(path, "PNG", (8, 8))
    path.write_bytes(path.read_bytes()[:-12])
    assert read_image_info(str(path)).error == "is a truncated PNG file (no end marker)"
    os.mkfifo(tmp_path / "fifo.jpg")
    assert "FIFO" in read_image_info(str(tmp_path / "fifo.jpg")).error
    assert read_image_info(str(tmp_path / "nul\0.jpg")).error == "is not a valid path"
    assert read_image_info(str(tmp_path / "none.jpg")).error == "file not found"
