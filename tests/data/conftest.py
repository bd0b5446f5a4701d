"""Shared fixtures: a tiny toy dataset, fresh configs and dataset names cleaned up after use."""

import json
import shutil
import uuid

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_efficient_ckpt.config import add_efficient_ckpt_config
from tests.helpers.toy import make_small_toy


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A 6 + 3 image toy dataset, generated once; tests must not modify it."""
    return make_small_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def toy_copy(toy_root, tmp_path):
    """A private copy of the toy dataset that a test may modify."""
    dst = tmp_path / "toy"
    shutil.copytree(toy_root, dst)
    return dst


@pytest.fixture
def cfg(tmp_path):
    """A fresh config whose report and dataset cache go to the test's temp folder."""
    cfg = add_efficient_ckpt_config(get_cfg())
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    cfg.DATASETS.CACHE_DIR = str(tmp_path / "cache")
    return cfg


@pytest.fixture
def dataset_name():
    """Factory of process-unique dataset names, removed from both catalogs afterwards."""
    names = []

    def make(prefix="ds"):
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        names.append(name)
        return name

    yield make
    for name in names:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


# Helpers are served as fixtures: importing from a conftest module is unreliable when
# several test folders each have one.
@pytest.fixture
def spec_for():
    """``spec_for(root, split)``: a DATASETS.CUSTOM entry for one split of a toy dataset."""

    def make(root, split="train"):
        return {
            "FORMAT": "coco",
            "ANN_FILE": str(root / "annotations" / f"{split}.json"),
            "IMAGE_ROOT": str(root / "images" / split),
        }

    return make


@pytest.fixture
def declare():
    """``declare(cfg, name, spec, split="TEST")``: add ``spec`` as DATASETS.CUSTOM.<name>, as
    yaml would, and list the name in DATASETS.<split> (None: in no split, so not validated).
    """

    def add(cfg, name, spec, split="TEST"):
        cfg.DATASETS.CUSTOM[name] = type(cfg)(spec)
        if split and name not in cfg.DATASETS[split]:
            cfg.DATASETS[split] = tuple(cfg.DATASETS[split]) + (name,)
        return cfg

    return add


@pytest.fixture
def edit_json():
    """``edit_json(path, mutate)``: apply ``mutate(data)`` to the json file at ``path``."""

    def edit(path, mutate):
        data = json.loads(path.read_text())
        mutate(data)
        path.write_text(json.dumps(data))

    return edit
