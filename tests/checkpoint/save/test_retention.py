"""MAX_TO_KEEP: only this run's own periodic files go, and only after a verified save."""

import os
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from d2_efficient_ckpt.checkpoint.save import CheckpointSaveError
from d2_efficient_ckpt.checkpoint.save.retention import plan_deletions

RUN = "run-now"


def _plan(files, keep, protected=()):
    return plan_deletions(files, run=RUN, prefix="model", max_to_keep=keep, protected=protected)


FILES = [
    ("model_0000009.pth", RUN),
    ("model_0000019.pth", RUN),
    ("model_0000029.safetensors", RUN),
    ("model_final.pth", RUN),
    ("model_0000001.pth", "run-before"),  # an older run in the same folder
    ("model_0000002.pth", ""),  # no record: stock detectron2's, or a user's copy
    ("backup_0000003.pth", RUN),  # another prefix
    ("model_00000099.pth", RUN),  # not the periodic pattern (8 digits)
]


def test_keeps_this_runs_newest_periodic_files_and_nothing_else_is_a_candidate():
    assert _plan(FILES, 2) == ["model_0000009.pth"]
    assert _plan(FILES, 1) == ["model_0000009.pth", "model_0000019.pth"]
    assert _plan(FILES, 0) == [] and _plan(FILES, 5) == []
    assert plan_deletions(FILES, run="", prefix="model", max_to_keep=1) == []


def test_protected_names_survive():
    assert _plan(FILES, 1, protected=["model_0000009.pth", None]) == ["model_0000019.pth"]


@given(
    files=st.lists(
        st.tuples(
            st.from_regex(r"(model|backup|otherjob)_\d{7}\.(pth|safetensors)", fullmatch=True),
            st.sampled_from(["", "run-before", RUN]),
        ),
        unique_by=lambda f: f[0],
    ),
    keep=st.integers(0, 4),
)
def test_never_deletes_what_this_run_did_not_write(files, keep):
    doomed = _plan(files, keep)
    owners = dict(files)
    assert all(owners[n] == RUN and n.startswith("model_") for n in doomed)
    ours = [n for n, r in files if r == RUN and n.startswith("model_")]
    if keep > 0:
        assert len(ours) - len(doomed) == min(keep, len(ours))


def test_user_and_other_job_files_survive_a_real_run(make_ckpt, tmp_path):
    # A user's backup, another job's checkpoint, a converted file and a stale file of an
    # older run share the output folder; MAX_TO_KEEP 1 prunes this run's files only.
    older = make_ckpt(tmp_path, with_optimizer=False)
    older.save("model_0000001", iteration=1)
    foreign = {"backup_0000001.pth", "otherjob_0000000.pth", "model_0000002.safetensors"}
    for name in foreign:
        shutil.copy(tmp_path / "model_0000001.pth", tmp_path / name)
    ck = make_ckpt(tmp_path, with_optimizer=False, **{"CHECKPOINT.SAVE.MAX_TO_KEEP": 1})
    ck.resume_or_load("", resume=False)  # a new run in the same folder
    for it in (3, 4, 5):
        ck.save(f"model_{it:07d}", iteration=it)
    names = set(os.listdir(tmp_path))
    assert foreign | {"model_0000001.pth", "model_0000001.pth.integrity.json"} <= names
    assert "model_0000005.pth" in names
    assert not names & {"model_0000003.pth", "model_0000004.pth"}
    assert not names & {"model_0000003.pth.integrity.json", "model_0000004.pth.integrity.json"}


def test_a_resumed_run_prunes_its_own_earlier_files(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, with_optimizer=False, **{"CHECKPOINT.SAVE.MAX_TO_KEEP": 2})
    for it in (1, 2):
        ck.save(f"model_{it:07d}", iteration=it)
    again = make_ckpt(tmp_path, with_optimizer=False, **{"CHECKPOINT.SAVE.MAX_TO_KEEP": 2})
    again.resume_or_load("", resume=True)  # the same run, continued by a new process
    again.save("model_0000003", iteration=3)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth")) == [
        "model_0000002.pth",
        "model_0000003.pth",
    ]


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


def test_fvcore_periodic_checkpointer_keeps_its_max_to_keep_and_our_records(tmp_path):
    # fvcore's own PeriodicCheckpointer(max_to_keep=3) on our class, as its test suite runs
    # it: get_checkpoint_file() right after save() is the file just saved, so fvcore deletes
    # the right files, and their integrity records go with them.
    from fvcore.common.checkpoint import PeriodicCheckpointer

    from d2_efficient_ckpt import EfficientDetectionCheckpointer

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    ck = EfficientDetectionCheckpointer(model, str(tmp_path), save_to_disk=True)
    periodic = PeriodicCheckpointer(ck, 10, 99, max_to_keep=3)
    for _ in range(2):
        for it in range(100):
            periodic.step(it)
    kept = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth"))
    assert kept == [
        "model_0000079.pth",
        "model_0000089.pth",
        "model_0000099.pth",
        "model_final.pth",
    ]
    records = sorted(
        n[: -len(".integrity.json")] for n in os.listdir(tmp_path) if n.endswith(".integrity.json")
    )
    assert records == kept
