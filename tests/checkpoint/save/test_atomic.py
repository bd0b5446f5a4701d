"""Atomic replacement: complete or absent, temporary files never listed and cleaned up."""

import os
import subprocess
import sys

import pytest

from d2_efficient_ckpt.checkpoint.save.atomic import (
    atomic_file,
    atomic_write_bytes,
    is_temp_file,
    remove_stale_temp_files,
    temp_path_for,
)


def test_replaces_only_when_complete(tmp_path):
    target = tmp_path / "model_0000001.pth"
    atomic_write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(str(target)) as f:
            f.write(b"new but interrupted")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model_0000001.pth"]  # no temporary file left
    atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new"


def test_temp_names_are_never_checkpoint_names(tmp_path):
    tmp = os.path.basename(temp_path_for(str(tmp_path / "model_final.pth")))
    assert is_temp_file(tmp)
    assert not tmp.endswith(".pth") and tmp.startswith(".")
    assert not is_temp_file("model_final.pth")


def test_next_run_removes_files_of_dead_writers(tmp_path):
    # A real process that dies leaves its pid in the name; ours is alive.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".model_0000009.pth.partial-{dead_pid}-0a1b2c3d"
    stale.write_bytes(b"half a checkpoint")
    ours = tmp_path / f".model_0000010.pth.partial-{os.getpid()}-0a1b2c3d"
    ours.write_bytes(b"being written")
    assert remove_stale_temp_files(str(tmp_path)) == [stale.name]
    assert sorted(os.listdir(tmp_path)) == [ours.name]


def test_read_only_directory_fails_and_names_it(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(PermissionError):
            atomic_write_bytes(str(tmp_path / "x.pth"), b"x")
    finally:
        os.chmod(tmp_path, 0o700)
