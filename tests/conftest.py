"""Fixtures shared by all test folders: tiny real detectron2 Faster R-CNN configs."""

import tempfile

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from hypothesis import settings

from tests.helpers import config
from tests.helpers.config import tiny_frcnn_cfg

torch.set_num_threads(min(2, torch.get_num_threads()))

# Property tests: the same examples on every run (a failure reproduces), no example database
# on disk, and no deadline (the machines are shared, and some examples write real files).
settings.register_profile("project", derandomize=True, database=None, deadline=None)
settings.load_profile("project")


@pytest.fixture(scope="session", autouse=True)
def _output_root(tmp_path_factory):
    # Where tiny_frcnn_cfg puts each config's OUTPUT_DIR during this session.
    config.OUTPUT_ROOT = str(tmp_path_factory.mktemp("outputs"))
    yield
    config.OUTPUT_ROOT = None


@pytest.fixture(autouse=True)
def _forget_datasets_registered_by_the_test():
    """detectron2's catalogs are process-global: datasets and metadata a test registers are
    removed after it, so that no test sees another's. Module- and session-scoped fixtures are
    set up before this snapshot, so what they register stays for their scope."""
    datasets, metadata = set(DatasetCatalog.list()), set(MetadataCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - datasets:
        DatasetCatalog.remove(name)
    for name in set(MetadataCatalog.list()) - metadata:
        MetadataCatalog.remove(name)


@pytest.fixture
def tiny_cfg(tmp_path):
    """Factory: ``tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})``, each with its own
    ``OUTPUT_DIR`` inside the test's ``tmp_path``."""

    def make(**overrides):
        return tiny_frcnn_cfg(
            output_dir=tempfile.mkdtemp(prefix="output_", dir=tmp_path), **overrides
        )

    return make
