"""The shared test helpers leave nothing behind: outputs live under pytest's temporary root,
which pytest itself prunes (it keeps the last few sessions), and datasets a test registers
are forgotten after it."""

import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from tests.helpers.config import tiny_frcnn_cfg


def test_direct_configs_write_under_pytest_temp_root(tmp_path_factory):
    a, b = tiny_frcnn_cfg().OUTPUT_DIR, tiny_frcnn_cfg().OUTPUT_DIR
    assert a != b and os.path.isdir(a) and os.path.isdir(b)
    assert Path(a).is_relative_to(tmp_path_factory.getbasetemp())
    assert tiny_frcnn_cfg(output_dir="elsewhere").OUTPUT_DIR == "elsewhere"


def test_fixture_configs_write_inside_the_tests_tmp_path(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    assert Path(cfg.OUTPUT_DIR).parent == tmp_path and os.path.isdir(cfg.OUTPUT_DIR)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5
    assert tiny_cfg().OUTPUT_DIR != cfg.OUTPUT_DIR


_PROBE = "fixture_probe_dataset"


def test_a_test_may_register_a_dataset():
    DatasetCatalog.register(_PROBE, lambda: [])
    MetadataCatalog.get(_PROBE).thing_classes = ["a"]
    assert _PROBE in DatasetCatalog.list() and _PROBE in MetadataCatalog.list()


def test_the_next_test_does_not_see_it():
    # Runs after the test above (pytest keeps the file's order).
    assert _PROBE not in DatasetCatalog.list() and _PROBE not in MetadataCatalog.list()
