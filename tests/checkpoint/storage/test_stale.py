"""Temporary files of interrupted saves: removed only when their writer is provably gone."""

import os
import subprocess
import sys
import time

from hypothesis import given
from hypothesis import strategies as st

from d2_efficient_ckpt.checkpoint.storage.atomic import temp_path_for
from d2_efficient_ckpt.checkpoint.storage.stale import (
    FRESH_S,
    is_dead,
    is_shared_storage,
    remove_stale_temp_files,
)
from tests.helpers.config import REPO

# A writer that creates its temporary file through atomic_file (so it holds the lock), says
# so, and waits, as a save in flight does.
_WRITER = """
import sys, time
from d2_efficient_ckpt.checkpoint.storage.atomic import atomic_file
with atomic_file(sys.argv[1]) as f:
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def _dead_pid():
    args = [sys.executable, "-c", "import os; print(os.getpid())"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_file_of_a_live_writer_in_another_pid_namespace_is_kept(tmp_path):
    # The writer runs in a container, or on another host sharing the folder: the PID in its
    # file name means nothing here (this one belongs to no process at all), but it holds
    # the file's lock, and the lock is what counts.
    target = tmp_path / "model_0000009.pth"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        (live,) = [n for n in os.listdir(tmp_path) if n.startswith(".")]
        renamed = tmp_path / f".model_0000009.pth.partial-{_dead_pid()}-0a1b2c3d"
        os.rename(tmp_path / live, renamed)  # as its name reads from another namespace
        old = time.time() - 2 * FRESH_S
        os.utime(renamed, (old, old))
        assert remove_stale_temp_files(str(tmp_path)) == []
        assert renamed.exists()
    finally:
        proc.kill()
        proc.wait()
    # The writer is gone: its lock went with it, and the file goes on the next clean-up.
    assert remove_stale_temp_files(str(tmp_path)) == [renamed.name]
    assert os.listdir(tmp_path) == []


def test_dead_files_go_fresh_empty_ones_stay(tmp_path):
    dead = tmp_path / f".model_0000009.pth.partial-{os.getpid()}-0a1b2c3d"
    dead.write_bytes(b"half")  # no lock held: its writer is gone, even with our PID
    empty = tmp_path / f".model_0000010.pth.partial-{os.getpid()}-0a1b2c3e"
    empty.write_bytes(b"")  # may be a writer between creating and locking it
    assert remove_stale_temp_files(str(tmp_path)) == [dead.name]
    assert os.listdir(tmp_path) == [empty.name]
    old = time.time() - 2 * FRESH_S
    os.utime(empty, (old, old))
    assert remove_stale_temp_files(str(tmp_path)) == [empty.name]


def test_a_temp_file_that_cannot_be_removed_is_left_with_a_warning(tmp_path, caplog):
    # Something under a temporary name that unlink refuses (here a directory; on a cluster
    # a read-only file or another user's in a sticky folder): never an error.
    stuck = tmp_path / f".model_0000009.pth.partial-{os.getpid()}-0a1b2c3d"
    stuck.mkdir()
    (stuck / "x").write_text("x")
    assert remove_stale_temp_files(str(tmp_path)) == []
    assert stuck.exists() and "cannot be removed" in caplog.text


def test_the_saver_own_temp_file_is_never_removed(tmp_path):
    path = str(tmp_path / "model_0000001.pth")
    from d2_efficient_ckpt.checkpoint.storage.atomic import atomic_file

    with atomic_file(path) as f:
        f.write(b"in flight")
        f.flush()
        assert remove_stale_temp_files(str(tmp_path)) == []
        f.write(b" and done")
    assert open(path, "rb").read() == b"in flight and done"


def test_only_local_disks_count_as_unshared(tmp_path):
    # The test folder is on a local disk (ext4, xfs, tmpfs, overlay, ...); proc is none of
    # those, and anything unknown is treated as storage other machines may write.
    assert not is_shared_storage(str(tmp_path))
    assert is_shared_storage("/proc/self")
    assert temp_path_for(str(tmp_path / "a.pth")).startswith(str(tmp_path))


@given(
    lock_free=st.booleans(),
    size=st.integers(0, 10),
    age=st.floats(0, 10_000),
    shared=st.booleans(),
    threshold=st.floats(0, 10_000),
)
def test_dead_means_unlocked_and_old_enough(lock_free, size, age, shared, threshold):
    dead = is_dead(lock_free=lock_free, size=size, age_s=age, shared=shared, shared_age_s=threshold)
    if dead:  # never a file whose lock is held, a fresh empty one, or a young shared one
        assert lock_free
        assert size > 0 or age >= FRESH_S
        assert not shared or age >= threshold
    elif lock_free and (size > 0 or age >= FRESH_S):
        assert shared and age < threshold
