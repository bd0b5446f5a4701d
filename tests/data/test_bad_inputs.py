"""Bad inputs in every format: each is a clear error naming the file or record and the fix,
or a reported fix (clip, drop, strip); never a hang or a traceback from inside detectron2."""

import contextlib
import json
import os
import signal

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from d2_efficient_ckpt.data import (
    DatasetConfigError,
    DatasetValidationError,
    register_and_report,
)
from tests.helpers.toy import toy_spec

FORMATS = ["coco", "voc", "yolo"]


@contextlib.contextmanager
def deadline(seconds=30):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer appears)."""

    def fail(*_):
        raise AssertionError(f"still running after {seconds}s: something blocked")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def first_image(fmt, root):
    return {
        "coco": root / "images" / "train" / "000001.jpg",
        "voc": root / "voc" / "JPEGImages" / "train_000001.jpg",
        "yolo": root / "yolo" / "images" / "train" / "000001.jpg",
    }[fmt]


@pytest.fixture
def run(cfg, toy_copy, dataset_name, declare):
    """``run(fmt, mode="error", split="TRAIN", **spec_changes)`` -> (error text or None, report)."""

    def go(fmt, mode="error", split="TRAIN", **changes):
        name = dataset_name(fmt)
        declare(cfg, name, {**toy_spec(fmt, toy_copy), **changes}, split=split)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.DATASETS.VALIDATION = mode
        with deadline():
            try:
                _, report, _ = register_and_report(cfg)
            except (DatasetValidationError, DatasetConfigError) as e:
                assert name not in DatasetCatalog, "nothing may stay registered after an error"
                return str(e), None
        return None, report

    return go


def error_of(run, fmt, **kwargs):
    msg, _ = run(fmt, **kwargs)
    assert msg is not None, "expected an error"
    return msg


# -- image files ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_image_that_is_a_fifo_is_refused_without_opening_it(run, toy_copy, fmt):
    image = first_image(fmt, toy_copy)
    image.unlink()
    os.mkfifo(image)
    msg = error_of(run, fmt)
    assert "unreadable image files" in msg and image.name in msg
    assert "is a FIFO (named pipe), not an image file" in msg
    assert "Fix: replace each file with a complete image" in msg


def _make_directory(path):
    path.unlink()
    path.mkdir()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "damage, reason",
    [
        (_make_directory, "is a directory, not an image file"),
        (lambda p: p.write_text("not an image"), "is not an image Pillow can read"),
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (_truncate, "is a truncated JPEG file (no end marker)"),
    ],
)
def test_unusable_image_files(run, toy_copy, fmt, damage, reason):
    image = first_image(fmt, toy_copy)
    damage(image)
    msg = error_of(run, fmt)
    assert f"{image.name}' {reason}" in msg
    assert "Fix: replace each file with a complete image" in msg


@pytest.mark.parametrize("fmt", FORMATS)
def test_unusable_images_are_dropped_under_warn(run, toy_copy, fmt):
    first_image(fmt, toy_copy).write_bytes(b"")
    msg, report = run(fmt, mode="warn")
    assert msg is None
    (problem,) = report.problems(severity="error")
    assert problem.action == "dropped" and problem.count == 1
    name = next(iter(report.summaries))
    assert len(DatasetCatalog.get(name)) == 5


def _exif_jpeg(path, size, orientation):
    image = Image.new("RGB", size, (90, 20, 20))
    exif = Image.Exif()
    exif[274] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes())


def test_size_mismatch_with_exif_rotation(run, toy_copy, edit_json):
    # Stored 64x48 but rotated by EXIF (orientation 6): detectron2 reads it as 48x64.
    _exif_jpeg(first_image("coco", toy_copy), (64, 48), 6)
    msg = error_of(run, "coco")
    assert "image sizes that disagree with the file" in msg
    assert "image id 1: '000001.jpg': annotation 64x64, file 48x64" in msg
    assert "after applying the EXIF orientation" in msg
    edit_json(
        toy_copy / "annotations" / "train.json",
        lambda d: d["images"][0].update(width=48, height=64),
    )
    msg, report = run("coco", mode="error")
    # The boxes of a 64x64 image now run outside the 48-pixel width: clipped, not an error.
    assert msg is None and not report.has("error")


def test_voc_size_mismatch_names_the_file(run, toy_copy):
    xml = toy_copy / "voc" / "Annotations" / "train_000002.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>80</width>"))
    msg = error_of(run, "voc")
    assert "image id 'train_000002': 'JPEGImages/train_000002.jpg': annotation 80x64" in msg


# -- annotation files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, path, key",
    [
        ("coco", "annotations/train.json", "ANN_FILE"),
        ("voc", "voc/ImageSets/Main/train.txt", "SPLIT"),
        ("voc", "voc/Annotations/train_000003.xml", None),
        ("yolo", "yolo/labels/train/000003.txt", None),
    ],
)
def test_annotation_file_that_is_a_fifo(run, toy_copy, fmt, path, key):
    target = toy_copy / path
    target.unlink()
    os.mkfifo(target)
    msg = error_of(run, fmt)
    if key:
        assert f"{key} '{target}' is a FIFO (named pipe), not a regular file" in msg
    else:
        assert target.name in msg and "not regular files" in msg
        assert "Fix: replace each with a VOC XML file" in msg or "Fix: make each label" in msg


def test_fifo_data_yaml(run, toy_copy, tmp_path):
    fifo = tmp_path / "data.yaml"
    os.mkfifo(fifo)
    msg = error_of(run, "yolo", NAMES=None, DATA_YAML=str(fifo), SPLIT="train")
    assert f"DATA_YAML '{fifo}' is a FIFO (named pipe), not a regular file" in msg


def test_deeply_nested_json(run, toy_copy):
    (toy_copy / "annotations" / "train.json").write_text("[" * 100_000 + "]" * 100_000)
    msg = error_of(run, "coco")
    assert "train.json' is nested too deeply" in msg and "Regenerate it" in msg


def test_deeply_nested_data_yaml(run, toy_copy, tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text("names: " + "[" * 5000 + "]" * 5000 + "\n")
    msg = error_of(run, "yolo", NAMES=None, DATA_YAML=str(path), SPLIT="train")
    assert f"DATA_YAML '{path}'" in msg and ("nested too deeply" in msg or "names" in msg)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_bom_and_utf16_json_load_and_evaluate(run, toy_copy, encoding):
    from pycocotools.coco import COCO

    path = toy_copy / "annotations" / "train.json"
    path.write_bytes(path.read_text().encode(encoding))
    msg, report = run("coco")
    assert msg is None
    (problem,) = report.problems(severity="warning")
    assert problem.action == "UTF-8 copy used for evaluation" and str(path) in problem.records
    name = next(iter(report.summaries))
    json_file = MetadataCatalog.get(name).json_file
    assert json_file != str(path)
    assert len(COCO(json_file).getImgIds()) == 6  # what COCOEvaluator does with it
    assert len(DatasetCatalog.get(name)) == 6


def test_utf16_label_file(run, toy_copy):
    label = toy_copy / "yolo" / "labels" / "train" / "000001.txt"
    label.write_bytes(label.read_text().encode("utf-16"))
    msg, report = run("yolo")
    assert msg is None and report.clean


# -- records ----------------------------------------------------------------------------------


def test_mixed_image_id_types(run, toy_copy, edit_json):
    edit_json(toy_copy / "annotations" / "train.json", lambda d: d["images"][1].update(id="2"))
    msg = error_of(run, "coco")
    assert "image ids of mixed types" in msg and "images[1]: id '2'" in msg
    assert 'make every image "id"' in msg


def test_ignore_flag_becomes_crowd(run, toy_copy, edit_json):
    edit_json(
        toy_copy / "annotations" / "train.json", lambda d: d["annotations"][0].update(ignore=1)
    )
    msg, report = run("coco")
    assert msg is None
    (problem,) = report.problems(severity="warning")
    assert problem.title == 'annotations with "ignore": 1' and problem.records == [
        "annotation id 1"
    ]
    assert 'replace "ignore": 1 by "iscrowd": 1' in problem.fix
    name = next(iter(report.summaries))
    assert DatasetCatalog.get(name)[0]["annotations"][0]["iscrowd"] == 1


@pytest.mark.parametrize(
    "segmentation, detail",
    [
        ([10, 10, 20, 10, 20, 20], "[10, 10, 20, 10, 20, 20]"),  # flat: not a list of polygons
        ([[1, 2, 3]], "[[1, 2, 3]]"),
        ({"size": [64, 64]}, "an RLE without counts/size"),
    ],
)
def test_malformed_segmentation_is_stripped_and_the_box_kept(
    run, toy_copy, edit_json, segmentation, detail
):
    edit_json(
        toy_copy / "annotations" / "train.json",
        lambda d: d["annotations"][0].update(segmentation=segmentation),
    )
    msg, report = run("coco")
    assert msg is None
    (problem,) = report.problems(severity="warning")
    assert problem.records == [f"annotation id 1: {detail}"]
    assert problem.action == "segmentation removed, box kept"
    name = next(iter(report.summaries))
    first = DatasetCatalog.get(name)[0]["annotations"][0]
    assert "segmentation" not in first and first["bbox"][2] > 0


def test_valid_segmentation_is_kept(run, toy_copy, edit_json):
    poly = [[10.0, 10.0, 20.0, 10.0, 20.0, 20.0]]
    edit_json(
        toy_copy / "annotations" / "train.json",
        lambda d: d["annotations"][0].update(segmentation=poly),
    )
    msg, report = run("coco")
    assert msg is None and report.clean
    name = next(iter(report.summaries))
    assert DatasetCatalog.get(name)[0]["annotations"][0]["segmentation"] == poly


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_annotations_at_all(run, toy_copy, edit_json, fmt):
    if fmt == "coco":
        edit_json(toy_copy / "annotations" / "train.json", lambda d: d.update(annotations=[]))
    elif fmt == "voc":
        for xml in (toy_copy / "voc" / "Annotations").glob("train_*.xml"):
            text = xml.read_text()
            xml.write_text(text[: text.index("<object>")] + "</annotation>\n")
    else:
        for label in (toy_copy / "yolo" / "labels" / "train").glob("*.txt"):
            label.write_text("")
    for mode in ("error", "warn"):
        msg = error_of(run, fmt, mode=mode)
        assert "training sets with no annotated image" in msg
        assert "DATALOADER.FILTER_EMPTY_ANNOTATIONS" in msg


def test_duplicate_category_names(run, toy_copy, edit_json):
    edit_json(
        toy_copy / "annotations" / "train.json",
        lambda d: d["categories"][2].update(name="square"),
    )
    for mode in ("error", "warn"):
        msg = error_of(run, "coco", mode=mode)
        assert "duplicate category names" in msg
        assert "name 'square': category ids 1 and 3" in msg and "merge the categories" in msg


@pytest.mark.parametrize("fmt", ["voc", "yolo"])
def test_duplicate_names_in_config(run, fmt):
    msg = error_of(run, fmt, NAMES=["a", "b", "a"])
    assert ".NAMES lists ['a'] more than once" in msg


def test_boolean_category_id(run, toy_copy, edit_json):
    edit_json(
        toy_copy / "annotations" / "train.json",
        lambda d: d["annotations"][0].update(category_id=True),
    )
    msg = error_of(run, "coco")
    assert "annotation id 1: category_id True" in msg and "use one of the category ids" in msg


def test_num_classes_message_with_1000_categories(run, toy_copy, edit_json):
    def mutate(d):
        d["categories"] = [{"id": i, "name": f"class_{i}"} for i in range(1, 1001)]

    edit_json(toy_copy / "annotations" / "train.json", mutate)
    msg = error_of(run, "coco")
    assert "1000 classes (class_1, class_2," in msg and "(1000 in all)" in msg
    assert "class_500" not in msg and len(msg) < 3000


# -- format-specific ------------------------------------------------------------------------


def test_voc_broken_xml_unknown_class_and_missing_file(run, toy_copy):
    ann = toy_copy / "voc" / "Annotations"
    (ann / "train_000001.xml").write_text("<annotation><object>")
    (ann / "train_000002.xml").unlink()
    xml = ann / "train_000003.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>x", 1))
    msg = error_of(run, "voc")
    assert "unreadable annotation XML files" in msg and "train_000001.xml': no element found" in msg
    assert "images without an annotation file" in msg and "train_000002.xml" in msg
    assert "objects whose class is not in NAMES" in msg and "train_000003.xml object 1: 'x" in msg


def test_voc_names_found_in_the_xml_are_sorted_and_logged(run, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="d2_efficient_ckpt"):
        msg, report = run("voc", NAMES=None, split="TEST")
    assert msg is None
    name = next(iter(report.summaries))
    assert MetadataCatalog.get(name).thing_classes == ["circle", "square", "triangle"]
    assert "classes found in its XML files, sorted: circle, square, triangle" in caplog.text
    assert "source id" in caplog.text and "contiguous id" in caplog.text


def test_voc_difficult_objects_are_kept_and_flagged(run, toy_copy):
    xml = toy_copy / "voc" / "Annotations" / "train_000001.xml"
    xml.write_text(
        xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1)
    )
    msg, report = run("voc")
    assert msg is None
    name = next(iter(report.summaries))
    first = DatasetCatalog.get(name)[0]["annotations"]
    assert first[0]["difficult"] == 1 and "difficult" not in first[-1]


def test_yolo_malformed_lines(run, toy_copy):
    label = toy_copy / "yolo" / "labels" / "train" / "000001.txt"
    label.write_text("0 0.5 0.5 0.2\n7 0.5 0.5 0.2 0.2\nx 1 2 3 4\n1 0.5 0.5 0.2 0.2\n")
    msg, report = run("yolo", mode="warn")
    assert msg is None
    (problem,) = report.problems(severity="error")
    assert problem.title == "malformed label lines" and problem.count == 3
    assert (
        problem.records[0]
        == "000001.txt:1: '0 0.5 0.5 0.2' (4 values (expected 'class cx cy w h' or a polygon))"
    )
    assert "class 7 is not in 0..2" in problem.records[1]
    name = next(iter(report.summaries))
    record = DatasetCatalog.get(name)[0]
    assert record["annotations"] == [
        {
            "bbox": [25.6, 25.6, 12.8, 12.8],
            "bbox_mode": record["annotations"][0]["bbox_mode"],
            "category_id": 1,
            "iscrowd": 0,
        }
    ]


def test_yolo_without_label_folder(run, toy_copy, tmp_path):
    images = tmp_path / "pics"
    images.mkdir()
    msg = error_of(run, "yolo", IMAGE_ROOT=str(images))
    assert "has no 'images' path component" in msg and "LABEL_ROOT" in msg


@pytest.mark.parametrize("mode", ["clip", "drop"])
def test_boxes_outside_the_image(run, toy_copy, edit_json, cfg, mode):
    edit_json(
        toy_copy / "annotations" / "train.json",
        lambda d: d["annotations"][0].update(bbox=[40.0, 40.0, 40.0, 10.0]),
    )
    cfg.DATASETS.BOX_OUTSIDE_IMAGE = mode
    msg, report = run("coco")
    assert msg is None
    (problem,) = report.problems(severity="warning")
    assert problem.action == {"clip": "clipped", "drop": "dropped"}[mode]
    assert problem.records == ["annotation id 1 in image 1 (64x64): bbox [40.0, 40.0, 40.0, 10.0]"]
    name = next(iter(report.summaries))
    anns = DatasetCatalog.get(name)[0]["annotations"]
    if mode == "clip":
        assert anns[0]["bbox"] == [40.0, 40.0, 24.0, 10.0]
    else:
        assert all(a["bbox"] != [40.0, 40.0, 40.0, 10.0] for a in anns)
    data = json.loads(open(MetadataCatalog.get(name).json_file).read())
    assert len(data["annotations"]) == sum(len(r["annotations"]) for r in DatasetCatalog.get(name))
