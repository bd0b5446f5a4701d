"""Faults of an S3 store, on a real server (SeaweedFS on loopback), end in one clear error.

Wrong credentials, a missing bucket, missing permissions, a server that goes away during a
multipart upload, a store that never answers, one that cannot be reached, an object deleted
under a load: each ends in one error of the package's user-error types that names the URL
and the fix, and nothing is lost: no object is written or changed, the previous checkpoint
and ``last_checkpoint`` stay as they were, and a resume never silently starts from scratch
because the store refused it.
"""

import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Dict

import pytest
import torch

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError, RemoteStorageError
from d2_efficient_ckpt.checkpoint.formats import open_checkpoint
from d2_efficient_ckpt.checkpoint.save.write import write_checkpoint
from d2_efficient_ckpt.checkpoint.storage.registry import forget_stores
from d2_efficient_ckpt.errors import USER_ERRORS
from tests.helpers.config import tiny_frcnn_cfg
from tests.helpers.faults import perturb
from tests.helpers.models import assert_same_state, build_tiny
from tests.helpers.s3server import ADMIN, READ_ONLY, SeaweedServer, free_ports, uploads_in_flight

_CREDENTIALS_FIX = "AWS_SECRET_ACCESS_KEY"  # the credential error's fix names the chain


def _point_aws_at(monkeypatch, env: Dict[str, str], folder) -> None:
    """The environment of ``s3_env``, for another endpoint: every ``AWS_*`` variable of the
    machine removed, ``env`` set, and no config file, credentials file or instance role."""
    import os

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    env = dict(env)
    env["AWS_CONFIG_FILE"] = str(folder / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(folder / "no-aws-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    forget_stores()  # the next use makes a client from this environment


def _client_settings(monkeypatch, timeout_s: int, attempts: int) -> None:
    """The timeouts and the attempts of the clients made from now on."""
    monkeypatch.setenv("D2_CKPT_S3_TIMEOUT_S", str(timeout_s))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", str(attempts))
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    forget_stores()


def _tiny(folder):
    """The tiny real detectron2 model (43 MB of weights: saved as a multipart upload)."""
    return build_tiny(lambda **kw: tiny_frcnn_cfg(output_dir=str(folder), **kw))


def _state(model) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _objects(client, bucket: str, prefix: str = "") -> Dict[str, str]:
    """The objects of the bucket under ``prefix``, key -> ETag, but the load reports that a
    resume writes next to the checkpoints."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    objects = [o for page in pages for o in page.get("Contents", [])]
    return {o["Key"]: o["ETag"] for o in objects if "/load_report_" not in o["Key"]}


def _is_clear(error: BaseException, url: str, *fragments: str) -> str:
    """Assert ``error`` is a user error naming ``url`` and each fragment; return its text."""
    assert isinstance(error, USER_ERRORS), repr(error)
    message = str(error)
    assert url in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@dataclass
class Saved:
    """A run saved once for the module: ``model_0000001`` (iteration 1) and its tag.

    Attributes:
        bucket: its bucket, on the session's server.
        run: ``s3://bucket/run1``.
        client: an admin client of the server (made once: a client costs most of a second).
        state: the saved model's state dict.
        objects: the bucket's objects after the save, key -> ETag.
    """

    bucket: str
    run: str
    client: object
    state: Dict[str, torch.Tensor]
    objects: Dict[str, str]

    @property
    def url(self) -> str:
        return f"{self.run}/model_0000001.pth"

    def assert_intact(self) -> None:
        """Nothing was written, changed or removed, and no upload is left in progress."""
        assert _objects(self.client, self.bucket, "run1/") == self.objects
        assert uploads_in_flight(self.client, self.bucket) == {}


@pytest.fixture(scope="module")
def saved(s3_server, tmp_path_factory):
    client = s3_server.client()
    bucket = s3_server.make_bucket(f"faults-{uuid.uuid4().hex[:12]}")
    with pytest.MonkeyPatch.context() as mp:
        _point_aws_at(mp, s3_server.env(), tmp_path_factory.mktemp("aws"))
        model = _tiny(tmp_path_factory.mktemp("output"))
        EfficientDetectionCheckpointer(model, f"s3://{bucket}/run1").save(
            "model_0000001", iteration=1
        )
        forget_stores()
    objects = _objects(client, bucket, "run1/")
    yield Saved(bucket, f"s3://{bucket}/run1", client, _state(model), objects)
    forget_stores()
    client.delete_bucket(Bucket=bucket)  # the server removes the objects with it


@pytest.fixture
def admin(s3_env, saved):
    """The session server's admin environment (``s3_env``), a fresh store, and ``saved``."""
    forget_stores()
    yield saved
    forget_stores()


_WRONG = {
    "wrong_secret": {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
    "unknown_key": {"AWS_ACCESS_KEY_ID": "no-such-access-key"},
}


def _use(monkeypatch, variables: Dict[str, str]) -> None:
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    forget_stores()


def _refused_credentials(error: BaseException, url: str) -> None:
    assert isinstance(error, RemoteStorageError), repr(error)
    assert error.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"), error.code
    message = _is_clear(error, url, "refused the credentials", _CREDENTIALS_FIX)
    assert "permission" not in message, message  # not the fix of a missing permission


# ------------------------------------------------------------------ wrong credentials
@pytest.mark.parametrize("wrong", list(_WRONG))
def test_wrong_credentials_on_save_name_the_credentials(admin, monkeypatch, tmp_path, wrong):
    model = _tiny(tmp_path)
    _use(monkeypatch, _WRONG[wrong])
    with pytest.raises(RemoteStorageError) as info:
        EfficientDetectionCheckpointer(model, admin.run).save("model_0000002", iteration=2)
    _refused_credentials(info.value, admin.run)
    admin.assert_intact()


@pytest.mark.parametrize("wrong", list(_WRONG))
def test_wrong_credentials_on_load_name_the_credentials(admin, monkeypatch, tmp_path, wrong):
    model = _tiny(tmp_path)
    perturb(model)
    before = _state(model)
    _use(monkeypatch, _WRONG[wrong])
    with pytest.raises(RemoteStorageError) as info:
        EfficientDetectionCheckpointer(model).load(admin.url)
    _refused_credentials(info.value, admin.url)
    with pytest.raises(RemoteStorageError) as info:
        open_checkpoint(admin.url)
    _refused_credentials(info.value, admin.url)
    assert_same_state(before, _state(model))


@pytest.mark.parametrize("wrong", list(_WRONG))
def test_a_resume_refused_by_the_store_raises_instead_of_starting_from_scratch(
    admin, monkeypatch, tmp_path, wrong
):
    # The no-data-loss property: a resume that silently started from scratch would train a
    # new run and, with MAX_TO_KEEP, save over the checkpoints it could not see.
    model = _tiny(tmp_path)
    perturb(model)
    before = _state(model)
    _use(monkeypatch, _WRONG[wrong])
    ck = EfficientDetectionCheckpointer(model, admin.run)
    with pytest.raises(RemoteStorageError) as info:
        ck.resume_or_load("", resume=True)
    _refused_credentials(info.value, admin.run)
    assert_same_state(before, _state(model))
    admin.assert_intact()

    _use(
        monkeypatch,
        {"AWS_ACCESS_KEY_ID": ADMIN.access_key, "AWS_SECRET_ACCESS_KEY": ADMIN.secret_key},
    )
    extra = EfficientDetectionCheckpointer(model, admin.run).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert_same_state(admin.state, _state(model))


# ------------------------------------------------------------------ buckets and permissions
def test_a_missing_bucket_on_save_names_the_bucket(admin, tmp_path):
    model = _tiny(tmp_path)
    run = "s3://nosuchbucket/run1"
    with pytest.raises(RemoteStorageError) as info:
        EfficientDetectionCheckpointer(model, run).save("model_0000001", iteration=1)
    assert info.value.code == "NoSuchBucket"
    _is_clear(info.value, run, "'nosuchbucket' does not exist", "aws s3 mb s3://nosuchbucket")
    assert "nosuchbucket" not in [b["Name"] for b in admin.client.list_buckets()["Buckets"]]


def test_a_missing_bucket_on_load_names_the_bucket(admin, tmp_path):
    url = "s3://nosuchbucket/x.pth"
    model = _tiny(tmp_path)
    before = _state(model)
    for load in (EfficientDetectionCheckpointer(model).load, open_checkpoint):
        with pytest.raises(RemoteStorageError) as info:
            load(url)
        assert info.value.code == "NoSuchBucket"
        _is_clear(info.value, url, "'nosuchbucket' does not exist")
    with pytest.raises(RemoteStorageError, match="does not exist"):
        EfficientDetectionCheckpointer(model, "s3://nosuchbucket/run1").resume_or_load(
            "", resume=True
        )
    assert_same_state(before, _state(model))


def test_a_read_only_identity_cannot_save_and_nothing_appears(admin, monkeypatch, tmp_path):
    model = _tiny(tmp_path)
    _use(
        monkeypatch,
        {"AWS_ACCESS_KEY_ID": READ_ONLY.access_key, "AWS_SECRET_ACCESS_KEY": READ_ONLY.secret_key},
    )
    url = f"{admin.run}/model_0000002.pth"
    with pytest.raises(RemoteStorageError) as info:  # 43 MB: refused at the multipart upload
        EfficientDetectionCheckpointer(model, admin.run).save("model_0000002", iteration=2)
    assert info.value.code == "AccessDenied"
    _is_clear(info.value, url, "no permission to write", "s3:PutObject")
    with pytest.raises(RemoteStorageError, match="no permission to write"):
        write_checkpoint(f"{admin.run}/small.pth", {"model": {"w": torch.ones(4)}})  # one PUT
    admin.assert_intact()


# ------------------------------------------------------------------ the store goes away
@pytest.fixture
def fragile(monkeypatch, tmp_path):
    """A server of the test's own, which it may stop (not the session's)."""
    server = SeaweedServer(identities=[ADMIN])
    server.start()
    try:
        _point_aws_at(monkeypatch, server.env(), tmp_path)
        yield server
    finally:
        forget_stores()
        server.stop(graceful=False)


def _stop_once_an_upload_starts(server, bucket: str, done: threading.Event):
    """A thread that kills the server the moment a multipart upload of ``bucket`` exists."""
    client = server.client(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})
    stopped = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if uploads_in_flight(client, bucket):
                server.stop(keep_data=True, graceful=False)  # a crash, mid-upload
                stopped.set()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, stopped


def test_the_server_going_away_during_a_multipart_upload(fragile, monkeypatch, tmp_path):
    bucket = fragile.make_bucket("fragile")
    client = fragile.client()
    run = f"s3://{bucket}/run1"
    model = _tiny(tmp_path)
    EfficientDetectionCheckpointer(model, run).save("model_0000001", iteration=1)
    previous, objects = _state(model), _objects(client, bucket)
    assert client.head_object(Bucket=bucket, Key="run1/model_0000001.pth")["ETag"].endswith('-3"')

    perturb(model)
    _client_settings(monkeypatch, timeout_s=2, attempts=2)  # the failure comes fast
    done = threading.Event()
    watcher, stopped = _stop_once_an_upload_starts(fragile, bucket, done)
    start = time.perf_counter()
    try:
        with pytest.raises(RemoteStorageError) as info:
            EfficientDetectionCheckpointer(model, run).save("model_0000002", iteration=2)
    finally:
        done.set()
        watcher.join(30)
    assert stopped.is_set(), "the upload ended before the server could be stopped"
    assert time.perf_counter() - start < 60
    fix = {"connection": "AWS_ENDPOINT_URL_S3", "timeout": "D2_CKPT_S3_TIMEOUT_S"}
    assert info.value.code in fix, info.value
    _is_clear(info.value, f"{run}/model_0000002.pth", fix[info.value.code])

    fragile.restart()
    _client_settings(monkeypatch, timeout_s=30, attempts=5)  # a busy machine's restart
    assert _objects(client, bucket) == objects  # no model_0000002.pth, nothing else changed
    tag = client.get_object(Bucket=bucket, Key="run1/last_checkpoint")["Body"].read()
    assert tag == b"model_0000001.pth"
    fresh = _tiny(tmp_path)
    extra = EfficientDetectionCheckpointer(fresh, run).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert_same_state(previous, _state(fresh))


@pytest.fixture
def silent_endpoint():
    """``http://127.0.0.1:PORT`` of a socket that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held, done = [], threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                held.append(listener.accept()[0])  # and never read from, never answered
            except socket.timeout:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    done.set()
    thread.join(5)
    listener.close()
    for connection in held:
        connection.close()


def _dead_store(monkeypatch, folder, endpoint: str) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
    env = {**keys, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint}
    _point_aws_at(monkeypatch, env, folder)
    _client_settings(monkeypatch, timeout_s=1, attempts=1)


def _every_use_fails(model, code: str, *fragments: str) -> None:
    """A load, an open, a save and a resume each raise one error with ``code``."""
    before = _state(model)
    url, run = "s3://bucket/run1/model_0000001.pth", "s3://bucket/run1"
    attempts = [
        (url, lambda: EfficientDetectionCheckpointer(model).load(url)),
        (url, lambda: open_checkpoint(url)),
        (run, lambda: EfficientDetectionCheckpointer(model, run).save("model_0000001")),
        (run, lambda: EfficientDetectionCheckpointer(model, run).resume_or_load("", resume=True)),
    ]
    for named, attempt in attempts:
        start = time.perf_counter()
        with pytest.raises(RemoteStorageError) as info:
            attempt()
        assert info.value.code == code, info.value
        _is_clear(info.value, named, *fragments)
        assert time.perf_counter() - start < 20
    assert_same_state(before, _state(model))


def test_a_store_that_never_answers_times_out(monkeypatch, tmp_path, silent_endpoint):
    model = _tiny(tmp_path)
    _dead_store(monkeypatch, tmp_path, silent_endpoint)
    _every_use_fails(model, "timeout", "did not answer within 1 s", "D2_CKPT_S3_TIMEOUT_S")


def test_a_store_that_cannot_be_reached(monkeypatch, tmp_path):
    model = _tiny(tmp_path)
    _dead_store(monkeypatch, tmp_path, f"http://127.0.0.1:{free_ports(1)[0]}")  # nobody listens
    _every_use_fails(model, "connection", "could not be reached", "AWS_ENDPOINT_URL_S3")


# ------------------------------------------------------------------ objects that change
@pytest.mark.parametrize("read", ["ahead_in_pieces"])
def test_an_object_deleted_during_a_load_is_an_error(admin, read):
    # The open fetches the object's first and last 256 KiB; the middle of a 1 MiB tensor is
    # read by one GET of its own, a large one's in pieces fetched ahead on the store's
    # threads. Each GET is pinned to the ETag of the open. (Bytes fetched before the
    # deletion are of the version opened, and are used.)
    numel = 4 << 20
    url = f"s3://{admin.bucket}/deleted/{read}.pth"
    write_checkpoint(url, {"model": {"w": torch.arange(float(numel))}})
    opened = open_checkpoint(url)
    admin.client.delete_object(Bucket=admin.bucket, Key=url.split("/", 3)[3])
    with pytest.raises(CheckpointFormatError) as info:
        model, _ = opened.read_model()
        for key in model:
            model[key]
    _is_clear(info.value, url, "changed while it was being read", "deleted")
