"""Checkpoints on a real S3-compatible server (SeaweedFS on loopback): saving, lazy loading,
resume with fallback, retention, listing and the cache, through the checkpointer a user
builds, on a real detectron2 model."""

import json
import os
import time

import pytest
import torch

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError
from d2_efficient_ckpt.checkpoint.formats import open_checkpoint
from d2_efficient_ckpt.checkpoint.storage.registry import forget_stores, store_for
from tests.helpers.faults import perturb
from tests.helpers.models import assert_same_state, build_tiny
from tests.helpers.s3server import uploads_in_flight


@pytest.fixture
def s3(s3_env, s3_bucket):
    """``s3://<fresh bucket>``; the process's S3 store made anew for this server."""
    forget_stores()
    yield f"s3://{s3_bucket}"
    forget_stores()


def _checkpointer(model, directory, **kw):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return EfficientDetectionCheckpointer(model, directory, optimizer=optimizer, **kw), optimizer


def _fetched():
    return dict(store_for("s3://x").fetched)


def test_save_and_resume_through_the_store(s3, tiny_cfg):
    model = build_tiny(tiny_cfg)
    ck, opt = _checkpointer(model, f"{s3}/run1")
    _step(model, opt)
    ck.save("model_0000004", iteration=4)
    names = store_for(s3).list(f"{s3}/run1")
    assert {"model_0000004.pth", "model_0000004.pth.integrity.json", "last_checkpoint"} <= set(
        names
    )
    record = json.loads(
        store_for(s3).read_small(f"{s3}/run1/model_0000004.pth.integrity.json", 4096)
    )
    assert record["size"] == store_for(s3).info(f"{s3}/run1/model_0000004.pth").size

    other = build_tiny(tiny_cfg)
    ck2, opt2 = _checkpointer(other, f"{s3}/run1")
    extra = ck2.resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    assert_same_state(model.state_dict(), other.state_dict())
    assert_same_state(opt.state_dict()["state"], opt2.state_dict()["state"])


def _step(model, optimizer):
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()


def test_a_weights_only_load_fetches_the_models_bytes_not_the_optimizers(s3, tiny_cfg):
    model = build_tiny(tiny_cfg)
    ck, opt = _checkpointer(model, f"{s3}/run1")
    _step(model, opt)
    ck.save("model_0000001")
    url = f"{s3}/run1/model_0000001.pth"
    size = store_for(url).info(url).size
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    before = _fetched()
    fresh = build_tiny(tiny_cfg)
    EfficientDetectionCheckpointer(fresh).load(url, checkpointables=[])
    after = _fetched()
    got = after["bytes"] - before["bytes"]
    assert_same_state(model.state_dict(), fresh.state_dict())
    # The model's tensors, their headers and the archive's directory: far less than the
    # object, which also holds the momentum of every parameter.
    assert model_bytes <= got <= 0.55 * size, (got, model_bytes, size)
    assert after["requests"] - before["requests"] < 40


def test_an_object_replaced_during_a_load_is_an_error(s3, tiny_cfg):
    model = build_tiny(tiny_cfg)
    ck, _ = _checkpointer(model, f"{s3}/run1")
    ck.save("model_final")
    url = f"{s3}/run1/model_final.pth"
    opened = open_checkpoint(url)
    perturb(model)
    ck.save("model_final")  # a new version of the object, under the same name
    with pytest.raises(CheckpointFormatError, match="changed while it was being read"):
        with opened.reader() as reader:
            for value in opened.data["model"].values():
                reader.read(value)


def test_resume_passes_over_a_truncated_newest_object(s3, tiny_cfg):
    model = build_tiny(tiny_cfg)
    ck, opt = _checkpointer(model, f"{s3}/run1")
    ck.save("model_0000001", iteration=1)
    _step(model, opt)
    ck.save("model_0000002", iteration=2)
    store = store_for(s3)
    url = f"{s3}/run1/model_0000002.pth"
    whole = store.read_range(url, 0, store.info(url).size)
    store.write_bytes(url, whole[: len(whole) // 2])  # cut short, its record unchanged

    fresh = build_tiny(tiny_cfg)
    ck2, _ = _checkpointer(fresh, f"{s3}/run1")
    extra = ck2.resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert store.exists(url)  # passed over, never deleted


def test_retention_keeps_the_newest_and_never_touches_foreign_objects(s3, tiny_cfg):
    model = build_tiny(tiny_cfg)
    store = store_for(s3)
    store.write_bytes(f"{s3}/run1/model_0000000.pth", b"someone else's")
    store.write_bytes(f"{s3}/run1/notes.txt", b"keep me")
    ck, _ = _checkpointer(model, f"{s3}/run1", cfg=_cfg_with(tiny_cfg, max_to_keep=2))
    for i in range(1, 5):
        ck.save(f"model_{i:07d}", iteration=i)
    ck.wait()
    names = set(store.list(f"{s3}/run1"))
    assert "model_0000003.pth" in names and "model_0000004.pth" in names
    assert "model_0000001.pth" not in names and "model_0000002.pth" not in names
    assert {"model_0000000.pth", "notes.txt"} <= names


def _cfg_with(tiny_cfg, max_to_keep):
    cfg = tiny_cfg()
    cfg.defrost()
    cfg.CHECKPOINT.SAVE.MAX_TO_KEEP = max_to_keep
    return cfg


def test_listing_is_paginated_past_a_thousand_objects(s3, s3_server):
    client = s3_server.client()
    bucket = s3.split("://")[1]
    for i in range(1100):
        client.put_object(Bucket=bucket, Key=f"run1/noise_{i:05d}.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key="run1/sub/inner.txt", Body=b"x")
    names = store_for(s3).list(f"{s3}/run1")
    assert len([n for n in names if n.startswith("noise_")]) == 1100
    assert "sub" in names and "sub/inner.txt" not in names


def test_an_interrupted_upload_is_aborted_by_the_clean_up(s3, s3_server):
    client = s3_server.client()
    bucket = s3.split("://")[1]
    upload = client.create_multipart_upload(Bucket=bucket, Key="run1/model_0000009.pth")
    client.upload_part(
        Bucket=bucket, Key="run1/model_0000009.pth", UploadId=upload["UploadId"],
        PartNumber=1, Body=b"x" * (5 << 20),
    )  # fmt: skip
    store = store_for(s3)
    assert store.remove_stale(f"{s3}/run1", max_age_s=3600) == []  # too young
    time.sleep(1.1)
    assert store.remove_stale(f"{s3}/run1", max_age_s=1) == ["model_0000009.pth"]
    assert uploads_in_flight(client, bucket) == {}
    assert not store.exists(f"{s3}/run1/model_0000009.pth")


def test_a_large_checkpoint_goes_up_in_parts_and_comes_back_whole(s3):
    state = {"model": {"w": torch.randn(9 << 20)}}  # 36 MiB: three parts
    url = f"{s3}/big/model_final.pth"
    from d2_efficient_ckpt.checkpoint.save.write import write_checkpoint

    write_checkpoint(url, state, verify=True)
    opened = open_checkpoint(url)
    with opened.reader() as reader:
        assert torch.equal(reader.read(opened.data["model"]["w"]), state["model"]["w"])
    etag = store_for(url).info(url).etag
    assert etag.endswith("-3")  # a multipart upload of three parts, completed once


def test_the_cache_keeps_a_copy_per_version(s3, tiny_cfg, tmp_path):
    model = build_tiny(tiny_cfg)
    ck, _ = _checkpointer(model, f"{s3}/run1")
    ck.save("model_final")
    url = f"{s3}/run1/model_final.pth"
    cache = tmp_path / "cache"
    cfg = tiny_cfg(**{"CHECKPOINT.LOAD.REMOTE_CACHE_DIR": str(cache)})

    def load():
        before = _fetched()["bytes"]
        fresh = build_tiny(tiny_cfg)
        EfficientDetectionCheckpointer(fresh, cfg=cfg).load(url, checkpointables=[])
        return fresh, _fetched()["bytes"] - before

    first, fetched = load()
    assert fetched >= store_for(url).info(url).size  # downloaded whole, once
    _, again = load()
    assert again == 0
    assert_same_state(model.state_dict(), first.state_dict())
    perturb(model)
    ck.save("model_final")  # a new version: the old copy is replaced
    _, third = load()
    assert third > 0
    copies = [f for _, _, files in os.walk(cache) for f in files]
    assert copies == ["model_final.pth"]


def test_parts_go_up_while_the_file_is_still_being_written(s3, s3_server):
    client, bucket = s3_server.client(), s3.split("://")[1]
    url = f"{s3}/run1/model_final.pth"
    chunk = os.urandom(1 << 20)
    seen = {}
    with store_for(url).open_atomic(url) as f:
        for i in range(40):  # 40 MiB: two whole parts and a last one
            f.write(chunk)
            if i == 35:
                deadline = time.time() + 30
                while not uploads_in_flight(client, bucket, parts=True).get("run1/model_final.pth"):
                    assert time.time() < deadline, "no part was sent while the file was written"
                    time.sleep(0.05)
                seen = uploads_in_flight(client, bucket, parts=True)
                assert not store_for(url).exists(url)  # nothing under the name before the end
    assert seen["run1/model_final.pth"] >= 1
    assert client.get_object(Bucket=bucket, Key="run1/model_final.pth")["Body"].read() == chunk * 40
    assert uploads_in_flight(client, bucket) == {}


def test_a_writer_that_goes_back_in_the_file_publishes_what_it_left(s3, s3_server):
    client, bucket = s3_server.client(), s3.split("://")[1]
    url = f"{s3}/run1/rewritten.bin"
    data = bytearray(os.urandom(40 << 20))
    with store_for(url).open_atomic(url) as f:
        f.write(bytes(data))  # its first parts are sent at once
        f.seek(100)
        f.write(b"changed")
    data[100:107] = b"changed"
    got = client.get_object(Bucket=bucket, Key="run1/rewritten.bin")["Body"].read()
    assert got == bytes(data)
    assert uploads_in_flight(client, bucket) == {}


def test_the_spool_of_a_killed_writer_is_removed_and_a_live_ones_kept(s3, tiny_cfg, tmp_path):
    import fcntl

    from d2_efficient_ckpt.checkpoint.storage.atomic import temp_path_for

    store = store_for(s3)
    store.spool_dir = str(tmp_path)
    root = tmp_path / f"d2ckpt-s3-spool-{os.getuid()}"
    root.mkdir(mode=0o700)
    dead = temp_path_for(str(root / "model_0000009.pth"))
    live = temp_path_for(str(root / "model_0000010.pth"))
    for name in (dead, live):
        with open(name, "wb") as f:
            f.write(b"x" * 4096)
    holder = open(live, "rb")  # a writer still at work: it holds the lock
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    mine = tmp_path / "mine.tmp"  # not a spool file: never touched
    mine.write_bytes(b"y")
    try:
        model = build_tiny(tiny_cfg)
        _checkpointer(model, f"{s3}/run1")[0].save("model_0000001")
        assert sorted(os.listdir(root)) == [os.path.basename(live)]
        assert mine.read_bytes() == b"y"
    finally:
        holder.close()


def test_a_spool_folder_that_is_not_private_is_never_used(s3, tmp_path):
    from d2_efficient_ckpt.checkpoint.storage.atomic import temp_path_for

    store = store_for(s3)
    store.spool_dir = str(tmp_path)
    shared = tmp_path / f"d2ckpt-s3-spool-{os.getuid()}"
    shared.mkdir()
    os.chmod(shared, 0o777)  # as if made for everyone to write
    planted = temp_path_for(str(shared / "model_0000001.pth"))
    with open(planted, "wb") as f:
        f.write(b"z")  # unlocked: a dead writer's, were the folder ours
    url = f"{s3}/run1/model_final.pth"
    with store.open_atomic(url) as f:
        f.write(b"checkpoint bytes")
        assert os.listdir(shared) == [os.path.basename(planted)]  # the spool is elsewhere
    assert open(planted, "rb").read() == b"z"
    assert sorted(os.listdir(tmp_path)) == [shared.name]  # the folder made for it is gone
    assert store.read_small(url, 100) == b"checkpoint bytes"
