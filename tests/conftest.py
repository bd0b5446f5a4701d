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


# -- a real S3 server (SeaweedFS on loopback) ------------------------------------------------
# boto3 and tests/helpers/s3server.py are imported inside the fixtures, so that a test run
# that asks for none of them needs neither.


@pytest.fixture(scope="session")
def s3_server():
    """One SeaweedFS server for the session, started the first time a test asks for it.

    It has two identities: ``s3server.ADMIN`` (every action; the default of its ``client()``
    and ``env()``) and ``s3server.READ_ONLY`` (Read and List). Tests that stop or restart a
    server start their own ``SeaweedServer`` instead, so that a failure cannot take this one
    down for the tests after them.
    """
    from tests.helpers.s3server import ADMIN, READ_ONLY, SeaweedServer

    with SeaweedServer(identities=[ADMIN, READ_ONLY]) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on ``s3_server`` with a unique name; removed with its objects after
    the test (each bucket holds volumes of the server's until it is deleted)."""
    import uuid

    name = s3_server.make_bucket(f"test-{uuid.uuid4().hex[:16]}")
    yield name
    s3_server.remove_bucket(name)


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """``os.environ`` set so that the standard AWS chain (boto3, obstore, a child process)
    reaches ``s3_server`` as its admin, and nothing of this machine's AWS setup leaks in.

    Every ``AWS_*`` variable is removed first (a profile, a session token or a region of the
    machine would change what a client does), and the config and credentials files point at
    files that do not exist. Yields the variables it set.
    """
    import os

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    env = dict(s3_server.env())
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-credentials")
    # No instance-metadata lookups (a second's timeout each) should a client look for more.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
