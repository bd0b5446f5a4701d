"""Registering DATASETS.CUSTOM, checking names in DATASETS.TRAIN/TEST and NUM_CLASSES."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_efficient_ckpt.data import (
    DatasetConfigError,
    DatasetValidationError,
    available_formats,
    check_dataset_names,
    check_num_classes,
    get_dataset_format,
    prepare_datasets,
    register_and_report,
    register_datasets_from_cfg,
)


def test_coco_format_is_registered_case_insensitively():
    assert "coco" in available_formats()
    assert get_dataset_format("COCO") is get_dataset_format("coco")
    with pytest.raises(DatasetConfigError, match=r"'voc2'.*Known formats are \[.*'coco'"):
        get_dataset_format("voc2", "x")


def test_register_and_load(cfg, toy_root, dataset_name, spec_for, declare):
    train, val = dataset_name("toy_train"), dataset_name("toy_val")
    declare(cfg, train, spec_for(toy_root, "train"))
    declare(cfg, val, dict(spec_for(toy_root, "val"), FORMAT="COCO"))
    assert sorted(register_datasets_from_cfg(cfg)) == sorted([train, val])

    records = DatasetCatalog.get(train)
    data = json.loads((toy_root / "annotations" / "train.json").read_text())
    assert len(records) == 6
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"])
    assert all(r["file_name"].startswith(str(toy_root / "images" / "train")) for r in records)
    meta = MetadataCatalog.get(train)
    assert meta.thing_classes == ["square", "circle", "triangle"]
    assert meta.evaluator_type == "coco"
    assert meta.json_file == str(toy_root / "annotations" / "train.json")
    assert meta.image_root == str(toy_root / "images" / "train")
    assert {a["category_id"] for r in records for a in r["annotations"]} <= {0, 1, 2}
    assert len(DatasetCatalog.get(val)) == 3


def test_relative_paths_resolve_against_cwd(cfg, toy_root, dataset_name, declare, monkeypatch):
    monkeypatch.chdir(toy_root)
    name = dataset_name()
    declare(
        cfg,
        name,
        {"FORMAT": "coco", "ANN_FILE": "annotations/val.json", "IMAGE_ROOT": "images/val"},
    )
    register_datasets_from_cfg(cfg)
    assert MetadataCatalog.get(name).json_file == str(toy_root / "annotations" / "val.json")


def test_registration_is_idempotent(cfg, toy_root, dataset_name, spec_for, declare):
    name = dataset_name()
    declare(cfg, name, spec_for(toy_root))
    register_datasets_from_cfg(cfg)
    loader = DatasetCatalog[name]
    assert register_datasets_from_cfg(cfg) == [name]
    prepare_datasets(cfg.clone())
    assert DatasetCatalog[name] is loader


def test_conflicting_reregistration_is_refused(cfg, toy_root, dataset_name, spec_for, declare):
    name = dataset_name()
    declare(cfg, name, spec_for(toy_root, "train"))
    register_datasets_from_cfg(cfg)
    other = declare(cfg.clone(), name, spec_for(toy_root, "val"))
    with pytest.raises(DatasetConfigError) as e:
        register_datasets_from_cfg(other)
    msg = str(e.value)
    assert f"'{name}' is already registered" in msg and "val.json" in msg and "train.json" in msg
    assert "another name" in msg
    assert MetadataCatalog.get(name).json_file.endswith("train.json")


def test_builtin_name_is_refused_showing_both(cfg, toy_root, spec_for, declare):
    declare(cfg, "coco_2017_val", spec_for(toy_root))
    with pytest.raises(DatasetConfigError) as e:
        register_datasets_from_cfg(cfg)
    msg = str(e.value)
    assert "already registered outside DATASETS.CUSTOM" in msg
    assert "existing: evaluator_type='coco', json_file='" in msg and "instances_val2017" in msg
    assert "declared: {'FORMAT': 'coco', 'ANN_FILE': '" in msg and "train.json" in msg
    assert MetadataCatalog.get("coco_2017_val").get("custom_dataset_spec") is None


def test_unused_datasets_are_registered_but_not_validated(
    cfg, toy_root, tmp_path, dataset_name, spec_for, declare
):
    used, unused = dataset_name("used"), dataset_name("inherited")
    declare(cfg, used, spec_for(toy_root))
    # As if inherited from a base config whose files do not exist here.
    missing = {"FORMAT": "voc", "ROOT": str(tmp_path / "nowhere"), "SPLIT": "train"}
    declare(cfg, unused, missing, split=None)
    _, report, scanned = register_and_report(cfg)
    assert set(scanned) == {used} and set(report.summaries) == {used}
    assert unused in DatasetCatalog  # usable by code later; checked when loaded
    with pytest.raises(DatasetValidationError, match="nowhere' does not exist"):
        DatasetCatalog.get(unused)


def test_nothing_registered_when_one_entry_is_bad(cfg, toy_copy, dataset_name, spec_for, declare):
    good, bad = dataset_name("good"), dataset_name("bad")
    declare(cfg, good, spec_for(toy_copy, "train"))
    declare(cfg, bad, spec_for(toy_copy, "val"))
    (toy_copy / "annotations" / "val.json").write_text("{")
    with pytest.raises(DatasetValidationError):
        register_datasets_from_cfg(cfg)
    assert good not in DatasetCatalog and bad not in DatasetCatalog


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"ANN_FILE": None}, r"DATASETS.CUSTOM.{name} is missing ANN_FILE"),
        ({"IMAGE_ROOT": ""}, r"DATASETS.CUSTOM.{name} is missing IMAGE_ROOT"),
        ({"FORMAT": None}, r"DATASETS.CUSTOM.{name}.FORMAT is missing"),
        ({"FORMAT": "yolo9"}, r"'yolo9', which is not a known dataset format.*'coco'"),
        ({"IMG_ROOT": "x"}, r"unknown key\(s\) \['IMG_ROOT'\]"),
    ],
)
def test_bad_spec_keys(cfg, toy_root, dataset_name, spec_for, declare, change, pattern):
    name = dataset_name()
    spec = {k: v for k, v in {**spec_for(toy_root), **change}.items() if v is not None}
    declare(cfg, name, spec)
    with pytest.raises(DatasetConfigError, match=pattern.format(name=name)):
        register_datasets_from_cfg(cfg)
    assert name not in DatasetCatalog


def test_validation_can_be_switched_off(cfg, toy_copy, dataset_name, spec_for, declare):
    name = dataset_name()
    declare(cfg, name, spec_for(toy_copy))
    (toy_copy / "images" / "train" / "000001.jpg").unlink()
    cfg.DATASETS.VALIDATE = False
    register_datasets_from_cfg(cfg)
    assert name in DatasetCatalog


def test_unregistered_train_name_lists_known_names(cfg, toy_root, dataset_name, spec_for, declare):
    name = dataset_name("toy_train")
    declare(cfg, name, spec_for(toy_root))
    cfg.DATASETS.TRAIN = (name + "x",)
    register_datasets_from_cfg(cfg)
    with pytest.raises(DatasetConfigError) as e:
        check_dataset_names(cfg)
    msg = str(e.value)
    assert f"Dataset '{name}x' in DATASETS.TRAIN is not registered!" in msg
    assert f"DATASETS.CUSTOM: ['{name}']" in msg
    assert f"Did you mean '{name}'" in msg
    assert "other registered datasets" in msg


@pytest.mark.parametrize("value", ["toy_train", ["toy", 3]])
def test_dataset_list_must_be_tuple_of_strings(cfg, value):
    # Bypasses yacs' own type check, as code assigning to a cfg would.
    cfg.DATASETS.TEST = value
    with pytest.raises(DatasetConfigError, match="DATASETS.TEST must be a tuple of dataset names"):
        check_dataset_names(cfg)


def test_builtin_names_are_accepted(cfg):
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    cfg.DATASETS.TEST = ()
    check_dataset_names(cfg)


def test_num_classes_mismatch_names_both_numbers(cfg, toy_root, dataset_name, spec_for, declare):
    name = dataset_name()
    declare(cfg, name, spec_for(toy_root), split="TRAIN")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    # Validation reports it before anything is registered ...
    with pytest.raises(DatasetValidationError) as e:
        register_datasets_from_cfg(cfg)
    msg = str(e.value)
    assert "NUM_CLASSES is 80" in msg and "has 3 classes (square, circle, triangle)" in msg
    assert "set MODEL.ROI_HEADS.NUM_CLASSES 3 or DATASETS.NUM_CLASSES_FROM_DATA True" in msg
    assert name not in DatasetCatalog
    # ... and check_num_classes still refuses it without validation.
    cfg.DATASETS.VALIDATION = "off"
    register_datasets_from_cfg(cfg)
    with pytest.raises(DatasetConfigError) as e:
        check_num_classes(cfg)
    msg = str(e.value)
    assert "NUM_CLASSES is 80" in msg and "have 3 classes (square, circle, triangle)" in msg
    assert "Set MODEL.ROI_HEADS.NUM_CLASSES 3 or DATASETS.NUM_CLASSES_FROM_DATA True" in msg


def test_num_classes_from_data_sets_it_on_frozen_cfg(
    cfg, toy_root, dataset_name, spec_for, declare
):
    name = dataset_name()
    declare(cfg, name, spec_for(toy_root))
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.DATASETS.NUM_CLASSES_FROM_DATA = True
    register_datasets_from_cfg(cfg)
    cfg.freeze()
    check_num_classes(cfg)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.is_frozen()


@pytest.mark.parametrize("second_split", ["TRAIN", "TEST"])
def test_datasets_of_a_run_must_agree_on_classes(
    cfg, toy_root, toy_copy, dataset_name, spec_for, declare, edit_json, second_split
):
    a, b = dataset_name("a"), dataset_name("b")
    edit_json(
        toy_copy / "annotations" / "train.json", lambda d: d["categories"][0].update(name="box")
    )
    declare(cfg, a, spec_for(toy_root), split="TRAIN")
    declare(cfg, b, spec_for(toy_copy), split=second_split)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    # Also when the class count is taken from the data.
    cfg.DATASETS.NUM_CLASSES_FROM_DATA = True
    with pytest.raises(DatasetValidationError) as e:
        register_datasets_from_cfg(cfg)
    msg = str(e.value)
    assert f"'{b}' vs '{a}': only in the first: [box]; only in the second: [square]" in msg
    assert "identical in all datasets" in msg
    # No configured fix resolves it, so "warn" stops as well.
    cfg.DATASETS.VALIDATION = "warn"
    with pytest.raises(DatasetValidationError, match="no configured fix resolves"):
        register_datasets_from_cfg(cfg)
    if second_split == "TRAIN":
        # Without validation, the classes are compared when NUM_CLASSES is set from the data.
        cfg.DATASETS.VALIDATION = "off"
        register_datasets_from_cfg(cfg)
        with pytest.raises(DatasetConfigError, match=f"'{b}' in DATASETS.TRAIN has other"):
            check_num_classes(cfg)


def test_prepare_datasets_end_to_end(cfg, toy_root, dataset_name, spec_for, declare):
    train, val = dataset_name("train"), dataset_name("val")
    declare(cfg, train, spec_for(toy_root, "train"))
    declare(cfg, val, spec_for(toy_root, "val"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (val,)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    prepare_datasets(cfg)
    assert MetadataCatalog.get(train).thing_classes == ["square", "circle", "triangle"]


def test_reregistration_after_catalog_removal(cfg, toy_root, dataset_name, spec_for, declare):
    name = dataset_name()
    register_datasets_from_cfg(declare(cfg, name, spec_for(toy_root, "train")))
    # Only the loader is removed; the stale metadata must not block a new spec.
    DatasetCatalog.remove(name)
    register_datasets_from_cfg(declare(cfg.clone(), name, spec_for(toy_root, "val")))
    assert MetadataCatalog.get(name).json_file.endswith("val.json")
