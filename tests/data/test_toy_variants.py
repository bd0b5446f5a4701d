"""The VOC and YOLO toy configs train a few iterations and evaluate with COCOEvaluator."""

import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_efficient_ckpt.config_utils import load_config
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from tests.helpers.config import REPO, tiny_frcnn_cfg


@pytest.fixture
def toy_workdir(toy_root, tmp_path, monkeypatch):
    """A working directory where the configs' relative paths (datasets/toy/...) resolve."""
    (tmp_path / "datasets").mkdir()
    os.symlink(toy_root, tmp_path / "datasets" / "toy")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("variant", ["voc", "yolo"])
def test_toy_variant_trains_and_evaluates(variant, toy_workdir):
    path = os.path.join(REPO, "configs", "toy", f"faster_rcnn_R18_FPN_toy_{variant}.yaml")
    declared = load_config(path)
    names = list(declared.DATASETS.TRAIN) + list(declared.DATASETS.TEST)
    # The base config's COCO entries are inherited but used by no split.
    assert {"toy_train", "toy_val"} <= set(declared.DATASETS.CUSTOM)

    cfg = tiny_frcnn_cfg()
    cfg.DATASETS.CUSTOM = declared.DATASETS.CUSTOM
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = declared.DATASETS.TRAIN, declared.DATASETS.TEST
    cfg.DATASETS.CACHE_DIR = str(toy_workdir / "cache")
    cfg.SOLVER.MAX_ITER = 2
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    try:
        prepare_datasets(cfg)
        meta = MetadataCatalog.get(names[-1])
        assert meta.thing_classes == ["square", "circle", "triangle"]
        # A COCO json for the evaluator, written into the cache.
        assert meta.json_file.startswith(str(toy_workdir / "cache"))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        results = trainer._last_eval_results
        assert set(results["bbox"]) >= {"AP", "AP50", "AP-square"}
        assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "dataset_report.json"))
    finally:
        for name in names + ["toy_train", "toy_val"]:
            DatasetCatalog.pop(name, None)
            MetadataCatalog.pop(name, None)
