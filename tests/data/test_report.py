"""The validation report: modes, the log table, the JSON file, header-only size checks, the
parallel path, the empty-image count and the cache of converted datasets."""

import json
import logging

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from d2_efficient_ckpt.data import (
    DatasetConfigError,
    DatasetValidationError,
    register_and_report,
    register_datasets_from_cfg,
)
from d2_efficient_ckpt.data import image_headers as images_module


def _break(toy_copy, edit_json):
    """One error (unknown category) and one fix (a box clipped) in the train json."""

    def mutate(d):
        d["annotations"][0]["category_id"] = 9
        d["annotations"][1]["bbox"] = [50.0, 50.0, 30.0, 5.0]

    edit_json(toy_copy / "annotations" / "train.json", mutate)


def test_error_mode_collects_everything_logs_a_table_and_writes_json(
    cfg, toy_copy, dataset_name, spec_for, declare, edit_json, caplog
):
    _break(toy_copy, edit_json)
    name = dataset_name()
    declare(cfg, name, spec_for(toy_copy))
    with caplog.at_level(logging.INFO, logger="d2_efficient_ckpt"):
        with pytest.raises(DatasetValidationError) as e:
            register_datasets_from_cfg(cfg)
    assert name not in DatasetCatalog
    assert "dataset_report.json" in str(e.value) and "DATASETS.VALIDATION warn" in str(e.value)
    # The table lists both rows, the error and the applied fix.
    assert "Dataset validation report (error)" in caplog.text
    assert "boxes outside their image" in caplog.text and "clipped" in caplog.text
    report = json.loads((toy_copy.parent / "output" / "dataset_report.json").read_text())
    assert report["errors"] == 1 and report["warnings"] == 1 and not report["clean"]
    rows = {p["title"]: p for p in report["problems"]}
    unknown = rows['annotations whose category_id is not in "categories"']
    assert unknown["records"] == ["annotation id 1: category_id 9"] and unknown["dataset"] == name
    assert "use one of the category ids [1, 2, 3]" in unknown["fix"]
    assert report["datasets"][name]["images"] == 6


def test_warn_mode_registers_with_the_fixes(
    cfg, toy_copy, dataset_name, spec_for, declare, edit_json
):
    _break(toy_copy, edit_json)
    name = dataset_name()
    cfg.DATASETS.VALIDATION = "warn"
    declare(cfg, name, spec_for(toy_copy))
    _, report, _ = register_and_report(cfg)
    assert report.has("error")
    records = DatasetCatalog.get(name)
    data = json.loads((toy_copy / "annotations" / "train.json").read_text())
    assert sum(len(r["annotations"]) for r in records) == len(data["annotations"]) - 1
    # The evaluator reads a repaired copy with exactly the loaded records.
    meta = MetadataCatalog.get(name)
    assert meta.json_file.startswith(cfg.DATASETS.CACHE_DIR)
    cached = json.loads(open(meta.json_file).read())
    assert len(cached["annotations"]) == len(data["annotations"]) - 1


@pytest.mark.parametrize("setting", [("VALIDATION", "off"), ("VALIDATE", False)])
def test_off_reads_nothing_before_loading(cfg, tmp_path, dataset_name, declare, setting):
    name = dataset_name()
    declare(
        cfg,
        name,
        {"FORMAT": "coco", "ANN_FILE": str(tmp_path / "none.json"), "IMAGE_ROOT": str(tmp_path)},
    )
    cfg.DATASETS[setting[0]] = setting[1]
    register_datasets_from_cfg(cfg)
    assert name in DatasetCatalog
    # Loading still checks, and fails with the dataset error, not a traceback.
    with pytest.raises(DatasetValidationError, match="none.json' does not exist"):
        DatasetCatalog.get(name)


def test_unknown_validation_value(cfg):
    cfg.DATASETS.VALIDATION = "strict"
    with pytest.raises(DatasetConfigError, match=r"VALIDATION is 'strict'; use one of"):
        register_datasets_from_cfg(cfg)


@pytest.mark.parametrize("filter_empty", [True, False])
def test_images_without_annotations_are_counted(
    cfg, toy_copy, dataset_name, spec_for, declare, edit_json, filter_empty
):
    edit_json(
        toy_copy / "annotations" / "train.json",
        lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 2]),
    )
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = filter_empty
    name = dataset_name()
    _, report, _ = register_and_report(declare(cfg, name, spec_for(toy_copy)))
    assert report.clean  # an info row, not a problem
    (row,) = report.problems(severity="info")
    assert row.count == 1 and row.records == ["image id 2: '000002.jpg'"]
    assert row.action.startswith("dropped from training" if filter_empty else "used as negatives")


def test_sizes_come_from_headers_only(cfg, toy_root, dataset_name, spec_for, declare, monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "tobytes", no_decoding)
    _, report, scanned = register_and_report(declare(cfg, dataset_name(), spec_for(toy_root)))
    assert report.clean and scanned


def test_parallel_header_reads_match_serial(
    cfg, toy_copy, dataset_name, spec_for, declare, capsys, monkeypatch
):
    (toy_copy / "images" / "train" / "000004.jpg").write_bytes(b"")
    monkeypatch.setattr(images_module, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(images_module, "_CHUNK", 2)
    paths = sorted(str(p) for p in (toy_copy / "images" / "train").glob("*.jpg"))
    parallel = images_module.read_image_infos(paths, workers=2, desc="checking")
    assert parallel == [images_module.read_image_info(p) for p in paths]
    assert parallel[3].error == "is empty (0 bytes)" and parallel[0] == (64, 64, "")
    assert "checking" in capsys.readouterr().err  # the progress bar


def test_converted_dataset_is_cached_until_a_source_changes(cfg, toy_copy, dataset_name, declare):
    spec = {"FORMAT": "voc", "ROOT": str(toy_copy / "voc"), "SPLIT": "train"}
    name = dataset_name("voc")

    def register():
        # As a new process would: nothing registered yet, the cache on disk.
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)
        return register_and_report(declare(cfg, name, spec))[2][name]

    first = register()
    assert not first.from_cache
    second = register()
    assert second.from_cache and second.json_file == first.json_file
    assert second.thing_classes == first.thing_classes == ["circle", "square", "triangle"]
    xml = toy_copy / "voc" / "Annotations" / "train_000001.xml"
    xml.write_text(xml.read_text().replace("<xmax>", "<xmax>1", 1))
    third = register()
    assert not third.from_cache and third.json_file != first.json_file


def test_unwritable_cache_folder(cfg, toy_root, tmp_path, dataset_name, declare):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    cfg.DATASETS.CACHE_DIR = str(blocked / "cache")
    name = dataset_name("voc")
    declare(cfg, name, {"FORMAT": "voc", "ROOT": str(toy_root / "voc"), "SPLIT": "train"})
    with pytest.raises(DatasetConfigError, match="cannot be written .*Set DATASETS.CACHE_DIR"):
        register_datasets_from_cfg(cfg)
    assert name not in DatasetCatalog
