"""tools/train_net.py with its checkpoints in S3 (``CHECKPOINT.DIR s3://bucket/prefix``), as a
user runs it, against a real S3 server (SeaweedFS on loopback, see tests/helpers/s3server.py).

Logs and metrics stay in the local ``OUTPUT_DIR``; the checkpoints, their integrity records
and ``last_checkpoint`` go to the bucket. A run SIGKILLed while a checkpoint upload is in
flight leaves no partial object, and ``--resume`` continues from the last complete checkpoint
with the weights an uninterrupted run ends with. Two CPU processes over gloo train and resume
through the bucket with a new local ``OUTPUT_DIR`` per run, every rank reading the store
itself, or the main process only with ``CHECKPOINT.LOAD.BROADCAST_FROM_MAIN True``.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch

from d2_efficient_ckpt.checkpoint.save.integrity import (
    check_full,
    hash_file,
    read_record,
    record_path,
)
from d2_efficient_ckpt.checkpoint.storage.registry import forget_stores, store_for
from tests.helpers.config import REPO, TRAIN_NET
from tests.helpers.models import assert_same_values
from tests.helpers.s3server import uploads_in_flight

# Two iterations, a checkpoint after each (model_0000000, model_0000001, then model_final),
# written in the background; no evaluation (the toy config's test set is left out).
RUN = ["SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1", "DATASETS.TEST", "()"]
RUN += ["CHECKPOINT.SAVE.ASYNC", "True"]
CHECKPOINTS = ("model_0000000.pth", "model_0000001.pth", "model_final.pth")
TIMEOUT_S = 600


def _child_env(server, root):
    """The environment of a child process: the server's AWS chain and nothing of this
    machine's (as the ``s3_env`` fixture sets for this process); temporary files (the upload
    spool) under ``root``, so that a killed run leaves nothing in the machine's /tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env())
    os.makedirs(root, exist_ok=True)
    env.update(
        AWS_CONFIG_FILE=os.path.join(root, "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=os.path.join(root, "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        TMPDIR=root,
        PYTHONPATH=REPO,
    )
    return env


def _train_net(env, *argv):
    return subprocess.run(
        [sys.executable, TRAIN_NET, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT_S,
    )


def _log(r):
    return r.stdout + r.stderr


def _objects(client, bucket, prefix):
    """``{name: size}`` of the objects directly under ``prefix/``."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/"
    ):
        for o in page.get("Contents", []):
            found[o["Key"][len(prefix) + 1 :]] = o["Size"]
    return found


def _complete(url):
    """Check the object ``url`` against its integrity record, byte for byte; the record.

    What ``check_full`` does; it cannot be called on an object (see
    ``test_check_full_reads_an_object_of_the_store``).
    """
    record = read_record(url)
    assert record is not None, f"{url} has no integrity record"
    assert record.file == os.path.basename(url)
    assert store_for(url).info(url).size == record.size, f"{url} is not the size written"
    assert hash_file(url) == record.hash, f"{url} does not hash to its record"
    return record


def _load(url):
    with open(store_for(url).local_path(url), "rb") as f:
        return torch.load(f, weights_only=True, map_location="cpu")


def _tag(url):
    return store_for(url).read_small(f"{url}/last_checkpoint", 4096).decode().strip()


def _checkpoint_like(out_dir):
    """Files under ``out_dir`` that are checkpoints, records, tags or their temporary files."""
    found = []
    for folder, _, files in os.walk(out_dir):
        for name in files:
            if (
                name.endswith((".pth", ".pkl", ".safetensors", ".integrity.json", ".tmp"))
                or name.startswith(("model_", "last_checkpoint", ".d2ckpt"))
                or "spool" in name
            ):
                found.append(os.path.relpath(os.path.join(folder, name), out_dir))
    return found


@pytest.fixture
def store(s3_env):
    """This process reaches the server through the AWS chain; its S3 store made anew."""
    forget_stores()
    yield
    forget_stores()


@pytest.fixture(scope="module")
def bucket(s3_server):
    """A bucket for the module: the uninterrupted run is the reference of more than one test."""
    name = s3_server.make_bucket(f"tn-{uuid.uuid4().hex[:16]}")
    yield name
    s3_server.remove_bucket(name)


@pytest.fixture(scope="module")
def straight(toy_config, s3_server, bucket, tmp_path_factory):
    """One uninterrupted run of ``RUN`` with its checkpoints in ``s3://<bucket>/straight``."""
    root = tmp_path_factory.mktemp("straight")
    out = root / "out"
    url = f"s3://{bucket}/straight"
    env = _child_env(s3_server, str(root / "tmp"))
    r = _train_net(env, "--config-file", toy_config, *RUN, "CHECKPOINT.DIR", url, "OUTPUT_DIR", out)
    return {"result": r, "url": url, "out": out, "prefix": "straight", "tmp": root / "tmp"}


def test_checkpoints_records_and_tag_go_to_the_bucket_logs_stay_local(
    straight, s3_server, bucket, store
):
    r, url, out = straight["result"], straight["url"], straight["out"]
    assert r.returncode == 0, _log(r)[-4000:]
    names = _objects(s3_server.client(), bucket, straight["prefix"])
    expected = {n for c in CHECKPOINTS for n in (c, c + ".integrity.json")}
    assert {n for n in names if not n.startswith("last_checkpoint")} == expected, names
    assert "last_checkpoint" in names
    assert _tag(url) == "model_final.pth"
    iterations = {name: _complete(f"{url}/{name}").iteration for name in CHECKPOINTS}
    assert iterations == {"model_0000000.pth": 0, "model_0000001.pth": 1, "model_final.pth": 1}
    final = _load(f"{url}/model_final.pth")
    assert final["iteration"] == 1 and final["trainer"]["iteration"] == 1
    assert {"model", "trainer"} <= set(final) and "optimizer" in final["trainer"]["_trainer"]
    log = _log(r)
    for name in CHECKPOINTS:
        assert f"Saving checkpoint to {url}/{name}" in log
        assert f"Checkpoint {url}/{name} is durable" in log
    # Every upload was completed; none is left in flight.
    assert uploads_in_flight(s3_server.client(), bucket, f"{straight['prefix']}/") == {}
    # Logs, metrics and the config are local; nothing of a checkpoint is.
    assert {"log.txt", "metrics.json", "config.yaml"} <= set(os.listdir(out))
    assert os.path.getsize(out / "metrics.json") > 0
    assert _checkpoint_like(out) == []
    assert _checkpoint_like(straight["tmp"]) == []  # the upload spool was removed


def test_check_full_reads_an_object_of_the_store(straight, store):
    url = f"{straight['url']}/model_0000000.pth"
    record = check_full(url)
    assert record is not None and record.iteration == 0


def _kill_during_upload(cmd, env, log_path, client, bucket, key):
    """Run ``cmd`` in its own process group and SIGKILL the group the moment a multipart
    upload of ``key`` is in flight on the server. Returns the log."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + TIMEOUT_S
            prefix = key.rsplit("/", 1)[0]
            while key not in uploads_in_flight(client, bucket, f"{prefix}/"):
                assert proc.poll() is None, (
                    f"the run ended (status {proc.returncode}) before an upload of {key} was "
                    "seen\n" + log_path.read_text()[-4000:]
                )
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return log_path.read_text()


def test_a_run_killed_during_an_upload_resumes_exactly_from_the_last_complete_checkpoint(
    toy_config, straight, s3_server, bucket, store, tmp_path
):
    assert straight["result"].returncode == 0, _log(straight["result"])[-4000:]
    client = s3_server.client()
    prefix = "killed"
    url = f"s3://{bucket}/{prefix}"
    env = _child_env(s3_server, str(tmp_path / "tmp"))
    argv = [
        "--config-file",
        toy_config,
        *RUN,
        "CHECKPOINT.DIR",
        url,
        "OUTPUT_DIR",
        tmp_path / "out",
    ]
    cmd = [sys.executable, TRAIN_NET, *map(str, argv)]
    # The second checkpoint (91 MB: weights and SGD momentum) goes up in 16 MiB parts.
    key = f"{prefix}/model_0000001.pth"
    log = _kill_during_upload(cmd, env, tmp_path / "killed.txt", client, bucket, key)
    assert f"Checkpoint {url}/model_0000000.pth is durable" in log
    assert f"Checkpoint {url}/model_0000001.pth is durable" not in log

    # The kill came mid-upload: the upload is still open on the server, and nothing of it
    # is visible under the checkpoint's name.
    assert key in uploads_in_flight(client, bucket, f"{prefix}/")
    names = _objects(client, bucket, prefix)
    assert "model_0000001.pth" not in names and "model_final.pth" not in names
    assert "model_0000001.pth.integrity.json" not in names
    # Every checkpoint object there is complete, and the tag names one of them.
    saved = [n for n in names if n.endswith(".pth")]
    assert saved == ["model_0000000.pth"], names
    for name in saved:
        _complete(f"{url}/{name}")
    assert _tag(url) == "model_0000000.pth"
    assert _complete(f"{url}/model_0000000.pth").iteration == 0

    # The same command with --resume continues from it and finishes.
    r = _train_net(env, "--resume", *argv)
    assert r.returncode == 0, _log(r)[-4000:]
    assert "Training continues at iteration 1 of 2" in _log(r)
    assert f"Loading from {url}/model_0000000.pth" in _log(r)
    for name in CHECKPOINTS:
        _complete(f"{url}/{name}")
    assert _tag(url) == "model_final.pth"
    assert _checkpoint_like(tmp_path / "out") == []
    # Exact resume: the weights and the momentum an uninterrupted run ends with.
    resumed = _load(f"{url}/model_final.pth")
    reference = _load(f"{straight['url']}/model_final.pth")
    assert resumed["iteration"] == reference["iteration"] == 1
    assert resumed["trainer"]["iteration"] == 1
    assert_same_values(reference["model"], resumed["model"], "model")
    assert_same_values(
        reference["trainer"]["_trainer"], resumed["trainer"]["_trainer"], "trainer._trainer"
    )


def _positions(url):
    sampling = _load(url)["trainer"]["hooks"]["SamplingState"]
    assert sampling["world_size"] == 2
    return [r["loader"]["position"] for r in sampling["ranks"]]


def test_two_processes_train_and_resume_through_the_bucket_with_no_shared_output_dir(
    toy_config, straight, s3_server, s3_bucket, store, tmp_path
):
    assert straight["result"].returncode == 0, _log(straight["result"])[-4000:]
    weights = f"{straight['url']}/model_final.pth"
    url = f"s3://{s3_bucket}/dist"
    final = f"{url}/model_final.pth"
    env = _child_env(s3_server, str(tmp_path / "tmp"))
    base = ["--num-gpus", "2", "--config-file", toy_config]
    opts_all = ["MODEL.DEVICE", "cpu", "CHECKPOINT.DIR", url, "DATASETS.TEST", "()"]
    opts_all += ["SOLVER.CHECKPOINT_PERIOD", "100"]
    positions = []
    runs = [
        # Both ranks start from weights in the store (a fine-tune: the model only).
        ([], ["SOLVER.MAX_ITER", "1", "MODEL.WEIGHTS", weights]),
        # A new pair of processes, a new empty OUTPUT_DIR: rank 1 has nothing of its own and
        # must read the store itself (every_rank_reads refuses otherwise).
        (["--resume"], ["SOLVER.MAX_ITER", "2"]),
        # Only the main process reads; it sends the state to rank 1.
        (["--resume"], ["SOLVER.MAX_ITER", "3", "CHECKPOINT.LOAD.BROADCAST_FROM_MAIN", "True"]),
    ]
    for i, (flags, opts) in enumerate(runs):
        out = tmp_path / f"out{i}"
        r = _train_net(env, *base, *flags, *opts_all, *opts, "OUTPUT_DIR", out)
        log = _log(r)
        assert r.returncode == 0, log[-4000:]
        assert _checkpoint_like(out) == [] and os.path.isfile(out / "log.txt")
        record = _complete(final)
        assert record.iteration == i and _tag(url) == "model_final.pth"
        positions.append(_positions(final))
        if not flags:
            assert f"Loading from {weights}" in log and "Training continues" not in log
            report = json.loads((out / "load_report_model_final.json").read_text())
            assert report["path"] == weights and report["summary"]["loaded"] == 150
            continue
        assert f"Training continues at iteration {i} of {i + 1}" in log
        assert f"Loading from {final}" in log
        assert "cannot read" not in log and "saved by 1 process" not in log
        report = json.loads((out / "load_report_model_final.json").read_text())
        assert report["path"] == final, report.get("path")
        assert report["checkpointables"]["trainer.sampling"] == "restored"
        if "CHECKPOINT.LOAD.BROADCAST_FROM_MAIN" in opts:
            assert "Loaded on the main process and broadcast to every rank" in log
        else:
            assert "broadcast to every rank" not in log
    # Both ranks stopped at the same step of the data, and each run continued both ranks'
    # positions from the checkpoint: rank 1's restored state came through the store.
    first = positions[0]
    assert first[0] == first[1] > 0
    assert positions == [[first[0] * n] * 2 for n in (1, 2, 3)], positions
    assert _objects(s3_server.client(), s3_bucket, "dist").keys() >= {
        "model_final.pth",
        record_path("model_final.pth"),
        "last_checkpoint",
    }


def test_a_missing_bucket_is_refused_before_training(toy_config, s3_server, tmp_path):
    # A typo in the bucket's name: one error line before any iteration is computed, not at
    # the first checkpoint, CHECKPOINT_PERIOD iterations (hours, in a real run) later.
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    env = _child_env(s3_server, str(tmp_path / "tmp"))
    r = _train_net(
        env, "--config-file", toy_config, *RUN, "CHECKPOINT.DIR", f"s3://{bucket}/run",
        "OUTPUT_DIR", out,
    )  # fmt: skip
    log = _log(r)
    assert r.returncode == 2, log[-4000:]
    assert "Traceback" not in log
    (line,) = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert f"'{bucket}' does not exist" in line and "CHECKPOINT.DIR" in line
    assert "Starting training" not in log
