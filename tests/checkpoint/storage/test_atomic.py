"""Atomic replacement: complete or absent, temporary files never listed, small files read
without blocking."""

import errno
import io
import os
import threading

import pytest

from d2_efficient_ckpt.checkpoint.storage.atomic import (
    EarlyWriteback,
    NotRegularFileError,
    atomic_file,
    atomic_write_bytes,
    fsync_dir,
    is_temp_file,
    read_regular_file,
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


def test_read_only_directory_fails_and_names_it(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(PermissionError):
            atomic_write_bytes(str(tmp_path / "x.pth"), b"x")
    finally:
        os.chmod(tmp_path, 0o700)


def test_a_failing_close_still_removes_the_temporary_file(tmp_path):
    # A full disk fails the buffered writer's last flush, inside close(): the partial file
    # must not stay behind holding the space the error asks the user to free.
    class FailingClose:
        def __init__(self, path, mode):
            self._f = open(path, mode)
            self.write, self.flush, self.fileno = self._f.write, self._f.flush, self._f.fileno

        def close(self):
            self._f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(RuntimeError):
        with atomic_file(str(tmp_path / "x.pth"), opener=FailingClose) as f:
            f.write(b"partial")
            raise RuntimeError("disk full during the write")
    assert os.listdir(tmp_path) == []


def test_directory_fsync_io_errors_are_raised_refusals_are_not(tmp_path, monkeypatch):
    real = os.fsync

    def failing(code):
        def fsync(fd):
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                raise OSError(code, os.strerror(code))
            return real(fd)

        return fsync

    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(OSError) as e:
        fsync_dir(str(tmp_path))
    assert e.value.errno == errno.EIO
    monkeypatch.setattr(os, "fsync", failing(errno.EINVAL))  # a file system that cannot
    fsync_dir(str(tmp_path))


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    inside = tmp_path / "out"
    inside.mkdir()
    (inside / "report.json").symlink_to(outside)
    atomic_write_bytes(str(inside / "report.json"), b"{}")
    assert outside.read_text() == "not ours"
    assert not (inside / "report.json").is_symlink()


def test_small_files_are_read_without_blocking_and_only_when_regular(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(_refused(str(fifo))), daemon=True)
    t.start()
    t.join(10)
    assert done == [True], "reading a FIFO blocked"
    assert _refused("/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100)
    assert _refused(str(big), limit=10)
    assert read_regular_file(str(big), 100) == b"x" * 100
    with pytest.raises(FileNotFoundError):
        read_regular_file(str(tmp_path / "absent"), 10)


def _refused(path, limit=4096):
    try:
        read_regular_file(path, limit)
    except NotRegularFileError:
        return True
    return False


def test_early_writeback_writes_every_byte_in_order(tmp_path, monkeypatch):
    started = []
    real = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        started.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    path = tmp_path / "big.bin"
    chunks = [os.urandom(n) for n in (10, 1 << 20, 5 << 20, 7, 3 << 20, 1)]
    with atomic_file(str(path)) as f:
        assert isinstance(f, EarlyWriteback)
        assert f.name == f.fileno() or isinstance(f.name, str)  # the file's, through it
        for c in chunks:
            f.write(c)
    assert path.read_bytes() == b"".join(chunks)
    assert started == []  # under 16 MiB: nothing to start before the fsync
    with atomic_file(str(path)) as f:
        for _ in range(40):
            f.write(chunks[1])
    assert path.stat().st_size == 40 << 20
    # Writeback started for consecutive ranges, each 16 MiB or more, from the start.
    assert started and started[0][0] == 0 and all(n >= 16 << 20 for _, n in started)
    assert all(a + n == b for (a, n), (b, _) in zip(started, started[1:]))


def test_early_writeback_passes_writes_through_a_file_without_a_descriptor():
    class NoDescriptor(io.BytesIO):
        def fileno(self):
            raise io.UnsupportedOperation("fileno")

    target = NoDescriptor()
    f = EarlyWriteback(target, step=4)
    for _ in range(5):
        f.write(b"abcdef")
    assert target.getvalue() == b"abcdef" * 5
