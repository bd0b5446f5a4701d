"""YOLO boxes held as arrays give exactly what the per-annotation path gives.

The array path (label files parsed a chunk at a time in worker processes for large sets,
boxes checked as columns, json written per chunk) must not change a single box, report row
or json value compared with the line-by-line parser, the per-annotation checks and
``json.dumps``, which stay the reference.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from d2_efficient_ckpt.data import parallel as parallel_module
from d2_efficient_ckpt.data.checks import check_records
from d2_efficient_ckpt.data.formats.files import read_text
from d2_efficient_ckpt.data.formats.yolo import box_table as box_table_module
from d2_efficient_ckpt.data.formats.yolo import labels as yolo_labels
from d2_efficient_ckpt.data.formats.yolo.box_table import BoxTable
from d2_efficient_ckpt.data.image_headers import read_image_info
from d2_efficient_ckpt.data.options import CheckOptions
from d2_efficient_ckpt.data.registration.cache import write_json
from d2_efficient_ckpt.data.report import ValidationReport

NUM_CLASSES = 3

# Label texts that take every path: plain, other spacing and line ends, numbers float()
# reads but the chunk parser does not (or the reverse), bad lines, polygons, overflow.
LABELS = {
    "plain": "0 0.5 0.5 0.25 0.25\n2 0.1 0.2 0.05 0.1\n",
    "crlf_tabs_signs": "1\t+0.5 .5 5e-1 0.25\r\n0.0 0.25 0.75 1E-1 0.2  \r\n2 0.5 0.5 1 1",
    "empty": "",
    "blank_lines": "\n0 0.5 0.5 0.2 0.2\n\n   \n1 0.4 0.4 0.2 0.2\n",
    "underscore": "0 0.5 0_5 0.2 0.2\n",
    "two_numbers_in_one": "0 0.5 1-2 0.2 0.2\n1 0.5 0.5 0.2 0.2\n",
    "hex_and_cut": "0 0x1 0.5 0.2 0.2\n0 1e 0.5 0.2 0.2\n0 1.2.3 0.5 0.2 0.2\n",
    "nan_inf": "0 nan 0.5 0.2 0.2\n1 0.5 inf 0.2 0.2\n2 0.5 0.5 0.2 0.2\n",
    "overflow": "0 1e308 1e308 0.2 0.2\n1 1e300 0.5 1e300 0.2\n",
    "classes": "1.0 0.5 0.5 0.2 0.2\n-0 0.5 0.5 0.2 0.2\n2.5 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n",
    "polygon": "0 0.1 0.1 0.4 0.1 0.4 0.3 0.1 0.3\n1 0.5 0.5 0.2\n",
    "nbsp_formfeed": "0\u00a00.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\x0c2 0.5 0.5 0.2 0.2\n",
    "outside": "0 0.95 0.5 0.2 0.2\n1 1.5 1.5 0.2 0.2\n2 0.5 0.5 0 0.2\n",
}


def _reference_labels(name, label_root, rels):
    """What the line-by-line path reads: (usable, problems, rows)."""
    usable, problems, rows = [], [], []
    for k, rel in enumerate(rels):
        record = yolo_labels.label_path(label_root, rel)[len(label_root) + 1 :]
        path = os.path.join(label_root, record)
        if not os.path.exists(path):
            usable.append(True)
            continue
        if not os.path.isfile(path):
            usable.append(False)
            problems.append((k, 0))
            continue
        try:
            text = read_text(name, "LABEL_ROOT", path)[0]
        except Exception:
            usable.append(False)
            problems.append((k, 0))
            continue
        usable.append(True)
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            cls, box, why = yolo_labels.parse_line(line, NUM_CLASSES)
            if box is None:
                problems.append((k, lineno))
            else:
                rows.append([k, lineno, cls, *box])
    return usable, problems, np.array(rows, dtype=np.float64).reshape(-1, 7)


@pytest.fixture
def yolo_folder(tmp_path):
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    jpeg = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), (9, 9, 9)).save(jpeg)
    for stem, text in LABELS.items():
        os.link(jpeg, images / f"{stem}.jpg")
        (labels / f"{stem}.txt").write_text(text, encoding="utf-8")
    extra = {
        "bom": b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2\n",
        "utf16": "1 0.5 0.5 0.2 0.2\n".encode("utf-16"),
        "latin1": b"0 0.5 0.5 0.2 0.2 \xe9\n",
    }
    for stem, raw in extra.items():
        os.link(jpeg, images / f"{stem}.jpg")
        (labels / f"{stem}.txt").write_bytes(raw)
    os.link(jpeg, images / "background.jpg")
    os.link(jpeg, images / "dir.jpg")
    (labels / "dir.txt").mkdir()
    return str(images), str(labels), sorted(os.listdir(images))


@pytest.mark.parametrize("workers", [1, 2])
def test_chunk_parser_reads_what_the_line_parser_reads(yolo_folder, workers, monkeypatch):
    image_root, label_root, rels = yolo_folder
    monkeypatch.setattr(yolo_labels, "_CHUNK", 4)  # several chunks, and workers for them
    monkeypatch.setattr(parallel_module, "PARALLEL_MIN", 1)
    got = yolo_labels.read_labels("ds", image_root, label_root, rels, NUM_CLASSES, workers)
    usable, problems, rows = _reference_labels("ds", label_root, rels)
    assert got.usable == usable
    assert [(k, lineno) for k, lineno, _ in got.problems] == problems
    table = np.column_stack([got.image_index, got.lineno, got.category, got.boxes])
    assert table.shape == rows.shape and (table == rows).all()  # bit for bit
    assert got.infos == [
        read_image_info(os.path.join(image_root, r)) for r, ok in zip(rels, usable) if ok
    ]
    messages = dict(((k, n), m) for k, n, m in got.problems)
    k = rels.index("two_numbers_in_one.jpg")
    assert messages[(k, 1)] == "two_numbers_in_one.txt:1: '0 0.5 1-2 0.2 0.2' (not numbers)"
    assert messages[(rels.index("dir.jpg"), 0)].startswith("dir.txt: not a regular file")


def _data(rels):
    images = [{"id": r, "file_name": r, "width": None, "height": None} for r in rels]
    return {
        "images": images,
        "annotations": [],
        "categories": [{"id": i, "name": f"c{i}"} for i in range(NUM_CLASSES)],
        "renumber": True,
    }


@pytest.mark.parametrize("box_outside", ["clip", "drop"])
def test_box_table_checks_match_the_per_annotation_checks(tmp_path, box_outside, monkeypatch):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 48)).save(root / "a.jpg")
    Image.new("RGB", (40, 30)).save(root / "b.jpg")
    rels = ["a.jpg", "b.jpg", "gone.jpg"]  # the last one is missing: its rows go silently
    rows = [
        (0, 1, 0, [0.5, 0.5, 0.25, 0.25]),  # clean
        (0, 2, 1, [0.95, 0.5, 0.2, 0.2]),  # partly outside: clipped (or dropped)
        (0, 3, 2, [1.5, 1.5, 0.2, 0.2]),  # all outside: dropped
        (0, 4, 0, [0.5, 0.5, 0.0, 0.2]),  # degenerate
        (0, 5, 1, [0.878125, 0.5, 0.25, 0.25]),  # 0.2 px over the right edge: clipped
        (0, 6, 2, [0.875078125, 0.5, 0.25, 0.25]),  # within the 0.01 px slack: clean
        (1, 1, 1, [1e308, 0.5, 1e308, 0.2]),  # overflows to inf in pixels: a bad bbox
        (1, 2, 5, [0.5, 0.5, 0.2, 0.2]),  # unknown class
        (1, 3, 2, [0.1, 0.2, 0.2, 0.4]),  # clean
        (1, 4, 0, [0.0, 0.0, 0.0, 0.0]),  # degenerate at the corner
        (2, 1, 0, [0.5, 0.5, 0.2, 0.2]),  # image missing
    ]
    records = [r.replace(".jpg", ".txt") for r in rels]
    options = CheckOptions(box_outside=box_outside, workers=1)

    by_table, by_dicts = _data(rels), _data(rels)
    by_table["box_table"] = BoxTable(
        rels,
        records,
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows], dtype=np.float64),
    )
    by_dicts["annotations"] = [
        {
            "id": f"{records[k]}:{line}",
            "image_id": rels[k],
            "category_id": cls,
            "yolo_box": list(box),
            "iscrowd": 0,
        }
        for k, line, cls, box in rows
    ]
    report_t, report_d = ValidationReport(), ValidationReport()
    result_t = check_records("ds", by_table, str(root), "labels", options, report_t)
    result_d = check_records("ds", by_dicts, str(root), "labels", options, report_d)

    assert report_t.problems() == report_d.problems()
    assert {p.title for p in report_d.problems()} >= {
        "annotations with a bad bbox",
        "degenerate boxes (width or height <= 0)",
        "boxes outside their image",
        'annotations whose category_id is not in "categories"',
        "image files not found",
    }
    assert list(result_t.data["annotations"]) == result_d.data["annotations"]
    clip = box_outside == "clip"
    assert len(result_t.data["annotations"]) == (5 if clip else 3)
    assert (result_t.changed, result_t.summary, result_t.id_map) == (
        result_d.changed,
        result_d.summary,
        result_d.id_map,
    )
    assert result_t.data["images"] == result_d.data["images"]

    # The evaluator's json: the same values, to the last bit of every float.
    write_json(str(tmp_path / "dicts.json"), result_d.data)
    monkeypatch.setattr(box_table_module, "_JSON_ROWS", 2)  # several chunks
    write_json(str(tmp_path / "table.json"), result_t.data)
    expected = json.loads((tmp_path / "dicts.json").read_bytes())
    assert json.loads((tmp_path / "table.json").read_bytes()) == expected
    assert [a["id"] for a in expected["annotations"]] == list(range(1, 6 if clip else 4))


def test_json_floats_read_back_as_the_same_doubles(tmp_path):
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.uniform(0, 4000, 3000),
            10.0 ** rng.uniform(-300, 300, 3000),
            [1e16, 1e-5, 3.0, 5e-324, 0.1, 2.5e15, 1.7976931348623157e308],
        ]
    )
    n = len(values) // 4
    xywh, area = values[: 4 * n].reshape(n, 4), values[-n:].copy()
    boxes = box_table_module.CheckedBoxes(
        [7], np.zeros(n, dtype=np.int64), np.arange(n) % 3, xywh, area
    )
    write_json(str(tmp_path / "a.json"), {"annotations": boxes})
    got = json.loads((tmp_path / "a.json").read_bytes())["annotations"]
    assert got == list(boxes)  # exact float equality
    assert [a["bbox"] for a in got] == xywh.tolist() and got[0]["image_id"] == 7
