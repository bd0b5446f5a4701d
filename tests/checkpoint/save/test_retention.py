"""MAX_TO_KEEP: which files go, decided without a model; deletion after a verified save."""

import os

import pytest

from d2_efficient_ckpt.checkpoint.save import CheckpointSaveError
from d2_efficient_ckpt.checkpoint.save.retention import plan_deletions

NAMES = [
    "model_0000009.pth",
    "model_0000019.pth",
    "model_0000029.pth",
    "model_0000029.pth.integrity.json",
    "model_final.pth",
    "last_checkpoint",
    "weights_from_elsewhere.pth",
]


def test_keeps_newest_periodic_and_final():
    assert plan_deletions(NAMES, 2) == ["model_0000009.pth"]
    assert plan_deletions(NAMES, 1) == ["model_0000009.pth", "model_0000019.pth"]
    assert plan_deletions(NAMES, 0) == []
    assert plan_deletions(NAMES, 5) == []


def test_protected_names_survive():
    assert plan_deletions(NAMES, 1, protected=["model_0000009.pth", None]) == ["model_0000019.pth"]


def test_old_files_go_only_after_the_new_one_is_written(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, with_optimizer=False, **{"CHECKPOINT.SAVE.MAX_TO_KEEP": 1})
    ck.save("model_0000001", iteration=1)
    ck.saver.opener = lambda path, mode: (_ for _ in ()).throw(OSError(28, "No space", path))
    with pytest.raises(CheckpointSaveError):
        ck.save("model_0000002", iteration=2)
    # The failed save deleted nothing.
    assert "model_0000001.pth" in os.listdir(tmp_path)
    ck.saver.opener = open
    ck.save("model_0000003", iteration=3)
    assert sorted(n for n in os.listdir(tmp_path) if "model" in n) == [
        "model_0000003.pth",
        "model_0000003.pth.integrity.json",
    ]
