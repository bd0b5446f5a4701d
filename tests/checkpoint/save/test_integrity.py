"""Integrity records: written with every save, checked after writing and on resume."""

import errno
import json
import os

import pytest
import torch

from d2_efficient_ckpt.checkpoint.save import IntegrityError, check_cheap, check_full, read_record
from d2_efficient_ckpt.checkpoint.save.integrity import hash_file, record_path
from d2_efficient_ckpt.checkpoint.save.write import write_checkpoint
from tests.helpers.faults import flip_byte


def test_save_writes_a_record_that_matches(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path)
    ck.save("model_0000004", iteration=4)
    path = str(tmp_path / "model_0000004.pth")
    record = read_record(path)
    assert record.size == os.path.getsize(path)
    assert record.hash == hash_file(path) and record.algorithm == "xxh3_64"
    assert record.iteration == 4 and record.file == "model_0000004.pth"
    assert check_full(path).hash == record.hash
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    # Stock detectron2 reads it.
    data = torch.load(path, map_location="cpu", weights_only=False)
    assert set(data) >= {"model", "optimizer", "iteration"}


def test_truncated_file_is_detected_cheaply(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001")
    path = str(tmp_path / "model_0000001.pth")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(IntegrityError, match="truncated") as e:
        check_cheap(path)
    assert path in str(e.value) and str(size) in str(e.value)


def test_flipped_bit_is_detected_by_the_full_check(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001")
    path = str(tmp_path / "model_0000001.pth")
    flip_byte(path, offset_from_end=os.path.getsize(path) // 2)
    check_cheap(path)  # the size is unchanged
    with pytest.raises(IntegrityError, match="flipped") as e:
        check_full(path)
    assert path in str(e.value)


def test_unreadable_record_names_the_sidecar(tmp_path):
    path = tmp_path / "m.pth"
    write_checkpoint(str(path), {"model": {"w": torch.ones(3)}})
    with open(record_path(str(path)), "w") as f:
        f.write("{not json")
    with pytest.raises(IntegrityError, match="integrity record"):
        check_cheap(str(path))


def test_verify_catches_a_file_changed_under_the_writer(tmp_path):
    # A serializer whose bytes on disk differ from what went through the hash: the read-back
    # check fails, and the bad file is removed instead of being left under its name.
    def lying(data, f):
        torch.save(data, f)
        f._f.seek(100)
        f._f.write(b"\0\0\0\0")

    path = tmp_path / "model_0000001.pth"
    with pytest.raises(IntegrityError, match="content changed"):
        write_checkpoint(str(path), {"model": {"w": torch.ones(3)}}, serializer=lying)
    assert not path.exists() and not os.path.exists(record_path(str(path)))


def test_record_is_plain_json(tmp_path):
    path = tmp_path / "m.pth"
    write_checkpoint(str(path), {"model": {"w": torch.ones(3)}}, iteration=7)
    raw = json.loads(open(record_path(str(path))).read())
    assert raw["file"] == "m.pth" and raw["iteration"] == 7 and raw["size"] > 0


def test_check_after_a_save_reads_the_disk_past_the_page_cache(tmp_path, monkeypatch):
    # 8 MiB blocks plus a short tail: every read but the last is a whole aligned block.
    path = tmp_path / "m.pth"
    path.write_bytes(os.urandom((8 << 20) + 12345))
    assert hash_file(str(path), direct=True) == hash_file(str(path))
    flags = []
    real_open = os.open

    def watching_open(p, flag, *args):
        flags.append(flag)
        return real_open(p, flag, *args)

    monkeypatch.setattr(os, "open", watching_open)
    write_checkpoint(str(tmp_path / "n.pth"), {"model": {"w": torch.ones(3)}})
    if getattr(os, "O_DIRECT", 0):
        assert any(f & os.O_DIRECT for f in flags)
    flip_byte(str(tmp_path / "n.pth"), offset_from_end=300)
    with pytest.raises(IntegrityError, match="content changed"):
        check_full(str(tmp_path / "n.pth"), direct=True)


def test_file_systems_without_direct_reads_are_checked_by_plain_reads(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    write_checkpoint(str(path), {"model": {"w": torch.arange(1000.0)}})
    real_open = os.open

    def refusing_open(p, flag, *args):  # as tmpfs did before Linux 6.6
        if flag & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), p)
        return real_open(p, flag, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    assert check_full(str(path), direct=True).hash == read_record(str(path)).hash
    flip_byte(str(path), offset_from_end=300)
    with pytest.raises(IntegrityError, match="content changed"):
        check_full(str(path), direct=True)


def test_load_of_a_truncated_saved_file_names_its_record_before_reading(make_ckpt, tmp_path):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000001")
    path = str(tmp_path / "model_0000001.pth")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)  # the archive's directory is gone; the record knows the size
    before = {k: v.clone() for k, v in ck.model.state_dict().items()}
    with pytest.raises(IntegrityError, match="truncated") as e:
        ck.load(path)  # a plain load, not only a resume, checks the record
    assert path in str(e.value) and f"{size} bytes were written" in str(e.value)
    after = ck.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
