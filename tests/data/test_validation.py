"""Every kind of broken dataset fails before training with a message naming record and fix."""

import pytest
from detectron2.data import DatasetCatalog

from d2_efficient_ckpt.data import DatasetValidationError, register_datasets_from_cfg


@pytest.fixture
def broken(cfg, toy_copy, dataset_name, spec_for, declare):
    """``broken(**spec_changes)``: register a toy copy and return the validation message."""

    def run(**changes):
        name = dataset_name("broken")
        declare(cfg, name, {**spec_for(toy_copy), **changes})
        with pytest.raises(DatasetValidationError) as e:
            register_datasets_from_cfg(cfg)
        msg = str(e.value)
        assert f"Dataset '{name}'" in msg
        return msg

    return run


def test_missing_ann_file(broken, toy_copy):
    msg = broken(ANN_FILE=str(toy_copy / "annotations" / "nope.json"))
    assert "nope.json' does not exist" in msg and "ANN_FILE" in msg
    assert "current working directory" in msg and "make_toy_dataset.py" in msg


def test_missing_image_root(broken, toy_copy):
    msg = broken(IMAGE_ROOT=str(toy_copy / "images" / "nope"))
    assert "IMAGE_ROOT" in msg and "nope' does not exist" in msg


def test_image_root_is_a_file(broken, toy_copy):
    msg = broken(IMAGE_ROOT=str(toy_copy / "annotations" / "train.json"))
    assert "is a file, not a directory" in msg


def test_malformed_json(broken, toy_copy):
    (toy_copy / "annotations" / "train.json").write_text('{"images": [\n  {"id": 1,,}]}')
    msg = broken()
    assert "train.json' is not valid JSON" in msg and "line 2" in msg


@pytest.mark.parametrize(
    "payload, expected",
    [
        ("[]", "detection results file"),
        ('{"images": [], "categories": []}', "lacks the top-level key(s) ['annotations']"),
        ('{"images": [], "annotations": [], "categories": []}', 'empty "categories" list'),
        ('{"images": {}, "annotations": [], "categories": [1]}', "must be JSON lists"),
    ],
)
def test_bad_structure(broken, toy_copy, payload, expected):
    (toy_copy / "annotations" / "train.json").write_text(payload)
    assert expected in broken()


def test_annotation_with_missing_image_id(broken, toy_copy, edit_json):
    edit_json(
        toy_copy / "annotations" / "train.json", lambda d: d["annotations"][1].update(image_id=999)
    )
    msg = broken()
    assert 'image_id is not in "images"' in msg
    assert "annotation id 2: image_id 999" in msg
    assert "Fix: point image_id" in msg


def test_bad_bboxes_are_listed_up_to_five(broken, toy_copy, edit_json):
    bad = [
        [0, 0, 0, 5],
        [0, 0, 5, -1],
        [1, 2, 3],
        "1,2,3,4",
        [0, 0, True, 4],
        [0, 0, 4, None],
        [0, 0, float("nan"), 3],
        [0, 0, "a", 1],
    ]

    def mutate(d):
        while len(d["annotations"]) < len(bad):
            d["annotations"].append(dict(d["annotations"][0], id=len(d["annotations"]) + 1))
        for ann, bbox in zip(d["annotations"], bad):
            ann["bbox"] = bbox

    edit_json(toy_copy / "annotations" / "train.json", mutate)
    msg = broken()
    assert "2 degenerate boxes (width or height <= 0)" in msg
    assert "annotation id 1: bbox [0, 0, 0, 5]" in msg
    assert "6 annotations with a bad bbox" in msg
    assert "annotation id 4: bbox '1,2,3,4'" in msg
    assert "... and 1 more" in msg
    assert "width > 0 and height > 0" in msg


def test_unknown_category_and_duplicate_ids(broken, toy_copy, edit_json):
    def mutate(d):
        d["annotations"][0]["category_id"] = 7
        d["annotations"][2]["id"] = d["annotations"][1]["id"]

    edit_json(toy_copy / "annotations" / "train.json", mutate)
    msg = broken()
    # Both kinds are reported by one error.
    assert "category_id 7" in msg and "category ids [1, 2, 3]" in msg
    assert "duplicate annotation ids" in msg


def test_missing_image_file(broken, toy_copy):
    (toy_copy / "images" / "train" / "000003.jpg").unlink()
    msg = broken()
    assert "image files not found" in msg and "image id 3: '000003.jpg'" in msg
    assert "restore the files under IMAGE_ROOT" in msg


def test_all_images_missing_points_at_image_root(broken, toy_copy):
    (toy_copy / "images" / "empty").mkdir()
    msg = broken(IMAGE_ROOT=str(toy_copy / "images" / "empty"))
    assert "images/empty' is probably wrong" in msg


def test_image_without_size_is_read_from_the_file(
    cfg, toy_copy, dataset_name, spec_for, declare, edit_json
):
    edit_json(toy_copy / "annotations" / "train.json", lambda d: d["images"][0].pop("height"))
    name = dataset_name()
    register_datasets_from_cfg(declare(cfg, name, spec_for(toy_copy)))
    assert DatasetCatalog.get(name)[0]["height"] == 64


def test_image_with_a_bad_size(broken, toy_copy, edit_json):
    edit_json(toy_copy / "annotations" / "train.json", lambda d: d["images"][0].update(height="64"))
    msg = broken()
    assert 'images with a bad "width"/"height"' in msg and "image id 1: height='64'" in msg
