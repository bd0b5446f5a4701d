"""Resume and the save path in the workflows that used to lose a run's work.

Each test is one way it was lost: a resume that went past ``last_checkpoint``, a write-path
corner that paired or deleted the wrong files, or an error that escaped raw. The model is a
tiny real Faster R-CNN with SGD momentum; the files are real.
"""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError
from d2_efficient_ckpt.checkpoint.save import (
    CheckpointSaveError,
    IntegrityError,
    check_cheap,
    check_full,
    read_record,
)
from d2_efficient_ckpt.checkpoint.save import integrity as integrity_module
from d2_efficient_ckpt.checkpoint.save import write as write_module
from d2_efficient_ckpt.checkpoint.save.integrity import record_path
from d2_efficient_ckpt.checkpoint.storage.atomic import is_temp_file
from d2_efficient_ckpt.cli import main as cli
from tests.helpers.config import REPO
from tests.helpers.faults import killed_at, perturb
from tests.helpers.models import build_tiny


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state):
    sd = model.state_dict()
    return all(torch.equal(sd[k], v) for k, v in state.items())


def _warnings(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ---------------------------------------------------------------- which file a resume takes
def test_extended_max_iter_resumes_the_newest_save_not_the_old_final(make_ckpt, tmp_path):
    # Trained to the end, MAX_ITER extended and resumed, then preempted: the resume after
    # that continues from the newest save, not from the old model_final.
    make_ckpt(tmp_path).save("model_final", iteration=9)
    extended = make_ckpt(tmp_path)
    assert extended.resume_or_load("", resume=True)["iteration"] == 9
    perturb(extended.model)
    extended.save("model_0000012", iteration=12)
    at_12 = _weights(extended.model)
    perturb(extended.model)
    again = make_ckpt(tmp_path)
    assert again.resume_or_load("", resume=True)["iteration"] == 12
    assert _same(again.model, at_12)
    assert again.get_checkpoint_file().endswith("model_0000012.pth")


def test_a_stale_higher_iteration_of_an_older_run_is_never_resumed(make_ckpt, tmp_path, caplog):
    make_ckpt(tmp_path).save("model_0000099", iteration=99)  # an earlier run
    ck = make_ckpt(tmp_path)
    ck.resume_or_load("", resume=False)  # a new run in the same folder
    perturb(ck.model)
    ck.save("model_0000009", iteration=9)
    at_9 = _weights(ck.model)
    assert ck.get_checkpoint_file().endswith("model_0000009.pth")  # right after save()
    perturb(ck.model)
    again = make_ckpt(tmp_path)
    assert again.resume_or_load("", resume=True)["iteration"] == 9
    assert _same(again.model, at_9)
    # The tagged file broken: the fallback stays in this run, and names the other file.
    with open(tmp_path / "model_0000009.pth", "r+b") as f:
        f.truncate(100)
    caplog.clear()
    assert make_ckpt(tmp_path).resume_or_load("", resume=True) == {}
    warned = _warnings(caplog)
    assert "model_0000099.pth" in warned and "another run" in warned
    assert "starts from scratch" in warned


@pytest.mark.parametrize("written, resumed", [("safetensors", "pth"), ("pth", "safetensors")])
def test_a_resume_takes_the_runs_checkpoints_in_either_format(
    make_ckpt, tmp_path, written, resumed
):
    make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.FORMAT": written}).save("model_0000004", iteration=4)
    ck = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.FORMAT": resumed})
    assert ck.has_checkpoint()
    assert ck.resume_or_load("", resume=True)["iteration"] == 4
    assert ck.last_report.path.endswith(f"model_0000004.{written}")


def test_an_unlistable_folder_resumes_from_its_tag(make_ckpt, tmp_path, monkeypatch):
    ck = make_ckpt(tmp_path)
    ck.save("model_0000003", iteration=3)
    real = os.listdir

    def stale_handle(path="."):  # as NFS answers for a folder whose handle went stale
        if os.path.realpath(path) == os.path.realpath(tmp_path):
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", stale_handle)
    again = make_ckpt(tmp_path)
    assert again.resume_or_load("", resume=True)["iteration"] == 3
    # With the tagged file broken too, nothing can be found: one clear error, not a fresh run.
    with open(tmp_path / "model_0000003.pth", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointFormatError, match="cannot be listed") as e:
        make_ckpt(tmp_path).resume_or_load("", resume=True)
    assert str(tmp_path) in str(e.value) and "without --resume" in str(e.value)


def test_a_file_of_another_architecture_is_refused_before_anything_is_restored(
    make_ckpt, tiny_cfg, tmp_path, caplog
):
    ck = make_ckpt(tmp_path)
    ck.save("model_0000001", iteration=1)
    at_1 = _weights(ck.model)
    momentum = {
        k: v.clone() for k, v in ck.checkpointables["optimizer"].state_dict()["state"][0].items()
    }
    # The same run goes on with another head (5 classes): its newest file cannot restore
    # this model, so the resume falls back to the run's last file of this architecture.
    other = build_tiny(tiny_cfg, **{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    from d2_efficient_ckpt import build_checkpointer

    wide = build_checkpointer(tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5}), other, str(tmp_path))
    wide.saver.continue_run(read_record(str(tmp_path / "model_0000001.pth")).run)
    wide.save("model_0000002", iteration=2)
    perturb(ck.model)
    again = make_ckpt(tmp_path)
    assert again.resume_or_load("", resume=True)["iteration"] == 1
    assert _same(again.model, at_1)
    warned = _warnings(caplog)
    assert "model_0000002.pth" in warned and "another architecture" in warned
    # Only the other architecture left: nothing at all is restored.
    os.remove(tmp_path / "model_0000001.pth")
    perturb(again.model)
    before = _weights(again.model)
    opt = again.checkpointables["optimizer"]
    opt_before = json.dumps(opt.state_dict()["param_groups"])
    assert again.resume_or_load("", resume=True) == {}
    assert _same(again.model, before)
    assert json.dumps(opt.state_dict()["param_groups"]) == opt_before
    assert all(torch.equal(opt.state_dict()["state"][0][k], v) for k, v in momentum.items())


def test_a_record_copied_from_another_file_is_not_trusted(make_ckpt, tmp_path, capsys):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001", iteration=1)
    ck.save("model_0000002", iteration=2)
    first, second = (str(tmp_path / f"model_000000{i}.pth") for i in (1, 2))
    shutil.copy(record_path(first), record_path(second))  # same size: the model is the same
    with pytest.raises(IntegrityError, match="record of another file"):
        check_cheap(second)
    assert cli(["verify", second, "--json"]) == 1
    assert any("another file" in p for p in json.loads(capsys.readouterr().out)["problems"])
    assert make_ckpt(tmp_path).resume_or_load("", resume=True)["iteration"] == 1


def test_fifo_as_tag_or_record_never_hangs_a_resume(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001", iteration=1)
    ck.save("model_0000002", iteration=2)
    os.remove(tmp_path / "last_checkpoint")
    os.mkfifo(tmp_path / "last_checkpoint")
    os.remove(record_path(str(tmp_path / "model_0000002.pth")))
    os.mkfifo(record_path(str(tmp_path / "model_0000002.pth")))
    found = []

    def resume():
        found.append(make_ckpt(tmp_path, with_optimizer=False).resume_or_load("", resume=True))

    t = threading.Thread(target=resume, daemon=True)
    t.start()
    t.join(60)
    assert found, "the resume hung on a FIFO"
    # The run file still names this run; model_0000002's record is no record.
    assert found[0]["iteration"] == 1


# ------------------------------------------------------------------- the write path's corners
def _resave_final_killed_before_its_record(ck, directory):
    ck.save("model_final", iteration=5)
    perturb(ck.model)
    killed = killed_at(lambda: ck.save("model_final", iteration=9), write_module, "write_record")
    assert killed
    return os.path.join(directory, f"model_final.{ck.saver.options.format}")


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_kill_while_resaving_a_name_never_pairs_the_new_file_with_the_old_record(
    make_ckpt, tmp_path, capsys, fmt
):
    ck = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.FORMAT": fmt})
    path = _resave_final_killed_before_its_record(ck, str(tmp_path))
    new = _weights(ck.model)
    assert read_record(path) is None  # the old record went before the new file came
    assert cli(["verify", path, "--json"]) == 0, capsys.readouterr().out
    ck.tag_last_checkpoint(os.path.basename(path))
    again = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.FORMAT": fmt})
    assert again.resume_or_load("", resume=True)["iteration"] == 9
    assert _same(again.model, new)


def test_failed_verification_of_a_resave_keeps_the_previous_file(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path)
    ck.save("model_final", iteration=5)
    good = (tmp_path / "model_final.pth").read_bytes()

    def lying(data, f):  # the bytes on disk differ from what went through the hash
        torch.save(data, f)
        f._f.seek(100)
        f._f.write(b"\0\0\0\0")

    ck.saver.serializer = lying
    with pytest.raises(IntegrityError, match="content changed"):
        ck.save("model_final", iteration=9)
    assert (tmp_path / "model_final.pth").read_bytes() == good
    check_full(str(tmp_path / "model_final.pth"))
    assert not [n for n in os.listdir(tmp_path) if is_temp_file(n)]


def test_io_error_of_the_directory_fsync_fails_the_save(make_ckpt, tmp_path, monkeypatch):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001", iteration=1)
    real = os.fsync

    def eio_on_directories(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)

    monkeypatch.setattr(os, "fsync", eio_on_directories)
    with pytest.raises(CheckpointSaveError, match="Input/output error"):
        ck.save("model_0000002", iteration=2)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_io_error_while_verifying_is_a_save_error_and_leaves_no_file(
    make_ckpt, tmp_path, monkeypatch
):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001", iteration=1)

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(integrity_module, "hash_with_source", eio)
    with pytest.raises(CheckpointSaveError, match="read back to verify") as e:
        ck.save("model_0000002", iteration=2)
    assert "model_0000002.pth" in str(e.value)
    names = os.listdir(tmp_path)
    assert "model_0000002.pth" not in names and not [n for n in names if is_temp_file(n)]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_unremovable_stale_temp_file_does_not_stop_a_resume(make_ckpt, tmp_path, caplog):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001", iteration=1)
    stuck = tmp_path / f".model_0000002.pth.partial-{os.getpid()}-0a1b2c3d"
    stuck.mkdir()  # unlink refuses it, as it refuses another user's file in a sticky folder
    (stuck / "x").write_text("x")
    assert (
        make_ckpt(tmp_path, with_optimizer=False).resume_or_load("", resume=True)["iteration"] == 1
    )
    assert stuck.exists() and "cannot be removed" in caplog.text


def test_load_report_is_never_written_through_a_planted_symlink(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001", iteration=1)
    outside = tmp_path.parent / f"{tmp_path.name}_outside.txt"
    outside.write_text("someone else's file")
    report = os.path.join(ck.cfg.OUTPUT_DIR, "load_report_model_0000001.json")
    os.symlink(outside, report)
    ck.resume_or_load("", resume=True)
    assert outside.read_text() == "someone else's file"
    assert not os.path.islink(report) and json.load(open(report))["path"].endswith("0001.pth")


_SAVE_AND_EXIT = """
import errno, os, sys, torch
from d2_efficient_ckpt import build_checkpointer
from tests.helpers.config import tiny_frcnn_cfg
from detectron2.modeling import build_model

def full_disk(path, mode):
    f = open(path, mode)
    def write(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    f.write = write
    return f

cfg = tiny_frcnn_cfg(output_dir=sys.argv[1], **{"CHECKPOINT.SAVE.ASYNC": True})
ck = build_checkpointer(cfg, build_model(cfg), sys.argv[1])
ck.saver.opener = full_disk
ck.save("model_0000001", iteration=1)
print("saved, exiting without wait()", flush=True)
"""


def test_an_uncollected_async_save_failure_fails_the_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_AND_EXIT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "exiting without wait()" in done.stdout
    assert done.returncode == 1, done.stderr[-2000:]
    assert "never waited for" in done.stderr and "disk is full" in done.stderr
