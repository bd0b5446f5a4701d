"""A checkpoint directory no store handles is refused before anything is written, with one
error naming the path and the stores there are. Never a local folder named ``remote:``;
and OUTPUT_DIR, where detectron2 writes logs, is never a URL."""

import os
import subprocess
import sys

import pytest
import torch.nn as nn
from iopath.common.file_io import PathHandler, PathManager

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.storage.local import LocalStore
from d2_efficient_ckpt.checkpoint.storage.registry import (
    UnsupportedStorageError,
    is_remote,
    scheme_of,
    store_for,
)
from d2_efficient_ckpt.errors import EXIT_BAD_INPUT, USER_ERRORS
from tests.helpers.config import REPO


class _RemoteHandler(PathHandler):
    """An iopath handler for ``remote://``, as a user of a remote store registers one."""

    def _get_supported_prefixes(self):
        return ["remote://"]

    def _get_local_path(self, path, **kwargs):
        raise AssertionError(f"nothing may be read from {path}")

    def _open(self, path, mode="r", **kwargs):
        raise AssertionError(f"nothing may be written to {path}")


def test_plain_paths_are_local_and_schemes_are_named():
    assert isinstance(store_for("output/run1"), LocalStore)
    assert isinstance(store_for("/abs/dir"), LocalStore)
    assert scheme_of("s3://bucket/prefix") == "s3" and scheme_of("a/b:c") is None
    assert is_remote("s3://bucket/prefix") and not is_remote("remote://bucket/x")


def test_a_remote_save_dir_is_refused_at_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedStorageError) as e:
        EfficientDetectionCheckpointer(nn.Linear(2, 2), "remote://bucket/run1")
    message = str(e.value)
    assert "remote://bucket/run1" in message and "local file system" in message
    assert isinstance(e.value, USER_ERRORS)
    assert os.listdir(tmp_path) == []


def test_a_remote_save_dir_with_an_iopath_handler_is_still_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manager = PathManager()
    manager.register_handler(_RemoteHandler())
    with pytest.raises(UnsupportedStorageError):
        ck = EfficientDetectionCheckpointer(nn.Linear(2, 2), "remote://bucket/run1")
        ck.path_manager = manager
        ck.save("model_final")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "opts, message",
    [
        # detectron2 writes logs and metrics to OUTPUT_DIR with plain file calls: never a URL,
        # even of a store checkpoints can go to; the error says where they can go.
        (["OUTPUT_DIR", "s3://bucket/run1"], "error: OUTPUT_DIR s3://bucket/run1 is a URL"),
        (["OUTPUT_DIR", "remote://bucket/run1"], "error: OUTPUT_DIR remote://bucket/run1 is a URL"),
        (
            ["OUTPUT_DIR", "out", "CHECKPOINT.DIR", "remote://bucket/run1"],
            "error: The CHECKPOINT.DIR remote://bucket/run1",
        ),
    ],
)
def test_train_net_refuses_an_unusable_directory_and_writes_nothing(tmp_path, opts, message):
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "train_net.py"),
        "--config-file",
        os.path.join(REPO, "configs", "toy", "faster_rcnn_R18_FPN_toy.yaml"),
        *opts,
        "MODEL.DEVICE",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == EXIT_BAD_INPUT, r.stderr[-2000:]
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []
