"""Asynchronous saves: same bytes as synchronous ones, one in flight, errors never lost."""

import os
import resource
import sys
import threading

import pytest
import torch

from d2_efficient_ckpt.checkpoint.save import CheckpointSaveError, check_full, read_record
from d2_efficient_ckpt.checkpoint.storage.atomic import is_temp_file
from tests.helpers.faults import FullDisk


def test_async_and_sync_saves_write_identical_files(make_ckpt, tmp_path):
    sync = make_ckpt(tmp_path / "sync")
    sync.save("model_0000005", iteration=5)
    asyn = make_ckpt(tmp_path / "async", **{"CHECKPOINT.SAVE.ASYNC": True})
    asyn.save("model_0000005", iteration=5)
    asyn.wait()
    a = (tmp_path / "sync" / "model_0000005.pth").read_bytes()
    b = (tmp_path / "async" / "model_0000005.pth").read_bytes()
    assert a == b
    assert (
        read_record(str(tmp_path / "async" / "model_0000005.pth")).hash
        == read_record(str(tmp_path / "sync" / "model_0000005.pth")).hash
    )


def test_snapshot_is_taken_before_save_returns(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.ASYNC": True})
    model = ck.model
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    ck.save("model_0000001", iteration=1)
    with torch.no_grad():  # training goes on while the file is written
        for p in model.parameters():
            p.mul_(-3.0)
    ck.wait()
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in expected.items())
    with torch.no_grad():
        for p in model.parameters():
            p.div_(-3.0)


def test_one_save_in_flight_and_buffers_reused(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.ASYNC": True})
    saver = ck.saver
    gate = threading.Event()

    def slow(data, f):
        gate.wait(10)
        torch.save(data, f)

    saver.serializer = slow
    ck.save("model_0000001", iteration=1)
    first_buffers = saver._buffers.allocated_bytes
    assert saver.busy
    threading.Timer(0.3, gate.set).start()
    ck.save("model_0000002", iteration=2)  # blocks until the first one is written
    assert saver.last_wait_s >= 0.2
    assert (tmp_path / "model_0000001.pth").exists()
    assert saver._buffers.allocated_bytes == first_buffers  # no second snapshot
    ck.wait()
    assert not saver.busy
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    check_full(str(tmp_path / "model_0000002.pth"))


def test_failed_async_write_is_raised_by_the_next_call(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.ASYNC": True})
    ck.save("model_0000001", iteration=1)
    ck.wait()
    good = (tmp_path / "model_0000001.pth").read_bytes()
    ck.saver.opener = FullDisk(room=1 << 20)
    ck.save("model_0000002", iteration=2)  # returns: the write fails in the background
    ck.saver._writer._thread.join()
    with pytest.raises(CheckpointSaveError, match="disk is full") as e:
        ck.raise_if_failed()
    assert "model_0000002.pth" in str(e.value)
    ck.raise_if_failed()  # raised once, not forever
    _previous_intact(tmp_path, good)


def test_full_disk_fails_a_sync_save_loudly(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path)
    ck.save("model_0000001", iteration=1)
    good = (tmp_path / "model_0000001.pth").read_bytes()
    ck.saver.opener = FullDisk(room=1 << 20)
    with pytest.raises(CheckpointSaveError, match="disk is full") as e:
        ck.save("model_0000002", iteration=2)
    assert str(tmp_path) in str(e.value) and "MAX_TO_KEEP" in str(e.value)
    _previous_intact(tmp_path, good)


def _previous_intact(directory, good):
    assert (directory / "model_0000001.pth").read_bytes() == good
    assert (directory / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (directory / "model_0000002.pth").exists()
    assert not [n for n in os.listdir(directory) if is_temp_file(n)]


def test_output_dir_that_cannot_exist_is_one_clear_error(make_ckpt, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the output directory should be")
    ck = make_ckpt(blocker / "out", with_optimizer=False)
    with pytest.raises(CheckpointSaveError, match="OUTPUT_DIR") as e:
        ck.save("model_0000001")
    assert str(blocker) in str(e.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_writer_runs_at_lowest_priority_until_the_caller_waits(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.ASYNC": True})
    gate, started, nice = threading.Event(), threading.Event(), []

    def observed(data, f):
        tid = threading.get_native_id()
        nice.append(os.getpriority(os.PRIO_PROCESS, tid))
        started.set()
        gate.wait(10)
        nice.append(os.getpriority(os.PRIO_PROCESS, tid))
        torch.save(data, f)

    ck.saver.serializer = observed
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    ck.save("model_0000001", iteration=1)
    # Before the caller waits, the writer runs on its own (at nice 19) into the serializer.
    assert started.wait(10)
    threading.Timer(0.3, gate.set).start()
    ck.wait()  # raises the writer back to the caller's priority, where that is permitted
    may_raise = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - caller
    assert nice == [19, caller if may_raise else 19]
    check_full(str(tmp_path / "model_0000001.pth"))
