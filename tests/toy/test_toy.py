"""The synthetic toy dataset: deterministic, tight boxes, COCO-valid, regenerated only on change."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from d2_efficient_ckpt.toy import generate_toy_dataset, render_toy_image

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "make_toy_dataset.py"


def _tree_bytes(root):
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_same_seed_gives_identical_files(tmp_path):
    a = generate_toy_dataset(str(tmp_path / "a"), num_train=4, num_val=2, size=64, seed=3)
    b = generate_toy_dataset(str(tmp_path / "b"), num_train=4, num_val=2, size=64, seed=3)
    assert not a.skipped and not b.skipped
    files_a, files_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    # COCO: two jsons, six images; VOC: xml + jpg per image, two split files; YOLO: jpg +
    # txt per image, data.yaml.
    assert len(files_a) == (2 + 6) + (12 + 2) + (12 + 1)
    assert files_a == files_b


def test_different_seed_gives_different_data(tmp_path):
    generate_toy_dataset(str(tmp_path / "a"), num_train=4, num_val=2, size=64, seed=0)
    generate_toy_dataset(str(tmp_path / "b"), num_train=4, num_val=2, size=64, seed=1)
    files_a, files_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert files_a["annotations/train.json"] != files_b["annotations/train.json"]
    assert all(files_a[k] != files_b[k] for k in files_a if k.endswith(".jpg"))


def test_train_images_do_not_depend_on_val_count():
    img_a, ann_a = render_toy_image(5, "train", 2, size=64)
    img_b, ann_b = render_toy_image(5, "train", 2, size=64)
    _, ann_val = render_toy_image(5, "val", 2, size=64)
    assert ann_a == ann_b and img_a.tobytes() == img_b.tobytes()
    assert ann_val != ann_a


@pytest.mark.parametrize("index", range(12))
def test_boxes_are_tight(index):
    image, anns = render_toy_image(0, "train", index, size=256)
    # Backgrounds stay below 110 in every channel; shapes have a channel of at least 204.
    bright = np.asarray(image).max(axis=2) > 160
    covered = np.zeros_like(bright)
    assert 1 <= len(anns) <= 3
    for ann in anns:
        x, y, w, h = (int(v) for v in ann["bbox"])
        assert 30 <= max(w, h) <= 90 and w > 0 and h > 0
        assert 0 <= x and x + w <= 256 and 0 <= y and y + h <= 256
        box = bright[y : y + h, x : x + w]
        # Shape pixels reach all four sides of the box: nothing of the box is slack.
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
        assert 0 < ann["area"] <= w * h
        covered[y : y + h, x : x + w] = True
        if ann["kind"] == "triangle":
            xs, ys = zip(*ann["points"])
            assert [x, y, w, h] == [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]
    # ... and no shape pixel lies outside every box.
    assert not (bright & ~covered).any()


def test_json_is_complete_coco(toy_root):
    data = json.loads((toy_root / "annotations" / "train.json").read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [
        (1, "square"),
        (2, "circle"),
        (3, "triangle"),
    ]
    assert len(data["images"]) == 6
    assert all(img["width"] == img["height"] == 64 for img in data["images"])
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in data["annotations"])
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


def test_voc_and_yolo_layouts_hold_the_same_boxes(toy_root):
    coco = json.loads((toy_root / "annotations" / "train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    xml = (toy_root / "voc" / "Annotations" / "train_000001.xml").read_text()
    for ann in first:
        x, y, w, h = (int(v) for v in ann["bbox"])
        # VOC: 1-based inclusive pixel indices.
        assert f"<name>{names[ann['category_id']]}</name>" in xml
        assert f"<xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>" in xml
        assert f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax>" in xml
    split = (toy_root / "voc" / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert split == [f"train_{i:06d}" for i in range(1, 7)]
    lines = (toy_root / "yolo" / "labels" / "train" / "000001.txt").read_text().splitlines()
    assert len(lines) == len(first)
    for ann, line in zip(first, lines):
        cls, cx, cy, w, h = line.split()
        x, y, bw, bh = ann["bbox"]
        assert int(cls) == ann["category_id"] - 1
        assert abs(float(cx) * 64 - (x + bw / 2)) < 1e-3 and abs(float(w) * 64 - bw) < 1e-3
    assert "0: square" in (toy_root / "yolo" / "data.yaml").read_text()
    # The layouts share the JPEGs.
    a = (toy_root / "images" / "train" / "000001.jpg").read_bytes()
    assert (toy_root / "voc" / "JPEGImages" / "train_000001.jpg").read_bytes() == a
    assert (toy_root / "yolo" / "images" / "train" / "000001.jpg").read_bytes() == a


def test_regeneration_is_skipped_for_same_params(tmp_path):
    out = str(tmp_path / "toy")
    first = generate_toy_dataset(out, num_train=2, num_val=1, size=64, seed=0)
    mtime = (tmp_path / "toy" / "annotations" / "train.json").stat().st_mtime_ns
    again = generate_toy_dataset(out, num_train=2, num_val=1, size=64, seed=0)
    assert again.skipped and again.splits == first.splits
    assert (tmp_path / "toy" / "annotations" / "train.json").stat().st_mtime_ns == mtime
    params = dict(num_train=3, num_val=1, size=64, seed=0)
    assert not generate_toy_dataset(out, **params).skipped
    assert generate_toy_dataset(out, **params).skipped
    assert not generate_toy_dataset(out, force=True, **params).skipped
    # A deleted image makes the old output incomplete, so it is regenerated.
    (tmp_path / "toy" / "images" / "train" / "000001.jpg").unlink()
    assert not generate_toy_dataset(out, **params).skipped


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="size must be at least 64"):
        generate_toy_dataset(str(tmp_path), size=32)
    with pytest.raises(ValueError, match="seed must be non-negative"):
        generate_toy_dataset(str(tmp_path), seed=-1)


def test_cli_writes_then_skips(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_toy_dataset", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ["--out", str(tmp_path / "toy"), "--num-train", "2", "--num-val", "1", "--size", "64"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert "Wrote the toy dataset" in out and "train.json" in out and "2 images" in out
    assert tool.main(argv) == 0
    assert "nothing written" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    assert manifest["params"] == {
        "num_train": 2,
        "num_val": 1,
        "size": 64,
        "seed": 0,
        "formats": ["coco", "voc", "yolo"],
    }
