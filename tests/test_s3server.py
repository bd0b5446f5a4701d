"""The S3 test server itself (``tests/helpers/s3server.py``): where it listens, what it stores,
what it refuses, and that its data outlive a stop."""

import hashlib
import io
import os
import subprocess
import sys
import threading

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.helpers.s3server import (
    ADMIN,
    READ_ONLY,
    SeaweedServer,
    listening_sockets,
)

# What `weed mini` listens on when not told otherwise; none of it may be in use.
DEFAULT_PORTS = {6060, 7333, 8181, 8333, 8888, 9101, 9333, 9340, 18333, 18888, 19333, 19340}
DEFAULT_PORTS |= {23646, 33646}


def _error_code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_server_listens_only_on_loopback_and_on_the_ports_it_was_given(s3_server):
    listening = listening_sockets(s3_server.pid)
    ports = {port for _, port in listening}
    assert {addr for addr, _ in listening} == {"127.0.0.1"}
    assert ports <= set(s3_server.ports.values())
    assert not ports & DEFAULT_PORTS
    assert s3_server.ports["s3.port"] in ports
    assert s3_server.endpoint == f"http://127.0.0.1:{s3_server.ports['s3.port']}"


def test_put_get_round_trip_with_standard_etags(s3_server, s3_bucket):
    client = s3_server.client()
    data = os.urandom(3 * 1024 * 1024 + 17)
    put = client.put_object(Bucket=s3_bucket, Key="dir/blob", Body=data)
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert client.get_object(Bucket=s3_bucket, Key="dir/blob")["Body"].read() == data

    # Multipart: each part's ETag is its MD5, the object's the MD5 of those, "-N".
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1024)]
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="multi")["UploadId"]
    done = []
    for number, part in enumerate(parts, start=1):
        r = client.upload_part(
            Bucket=s3_bucket, Key="multi", UploadId=upload, PartNumber=number, Body=part
        )
        assert r["ETag"] == f'"{hashlib.md5(part).hexdigest()}"'
        done.append({"PartNumber": number, "ETag": r["ETag"]})
    client.complete_multipart_upload(
        Bucket=s3_bucket, Key="multi", UploadId=upload, MultipartUpload={"Parts": done}
    )
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    head = client.head_object(Bucket=s3_bucket, Key="multi")
    assert head["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-2"'
    assert client.get_object(Bucket=s3_bucket, Key="multi")["Body"].read() == b"".join(parts)


def test_ranged_get_and_if_match(s3_server, s3_bucket):
    client = s3_server.client()
    data = os.urandom(1 << 20)
    etag = client.put_object(Bucket=s3_bucket, Key="r", Body=data)["ETag"]
    got = client.get_object(Bucket=s3_bucket, Key="r", Range="bytes=1000-1999", IfMatch=etag)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes 1000-1999/{len(data)}"
    assert got["Body"].read() == data[1000:2000]

    client.put_object(Bucket=s3_bucket, Key="r", Body=b"another object")
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket=s3_bucket, Key="r", Range="bytes=0-9", IfMatch=etag)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_identities_refuse_wrong_keys_and_a_reader_cannot_write(s3_server, s3_bucket):
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"v")

    with pytest.raises(ClientError) as excinfo:
        s3_server.client(ADMIN.access_key, "not-the-secret").get_object(Bucket=s3_bucket, Key="k")
    assert _error_code(excinfo) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as excinfo:
        s3_server.client("unknown-key", "x").get_object(Bucket=s3_bucket, Key="k")
    assert _error_code(excinfo) == "InvalidAccessKeyId"

    reader = s3_server.client(READ_ONLY.access_key, READ_ONLY.secret_key)
    assert reader.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"
    assert [o["Key"] for o in reader.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["k"]
    for write in (
        lambda: reader.put_object(Bucket=s3_bucket, Key="k", Body=b"w"),
        lambda: reader.delete_object(Bucket=s3_bucket, Key="k"),
        lambda: reader.create_multipart_upload(Bucket=s3_bucket, Key="m"),
    ):
        with pytest.raises(ClientError) as excinfo:
            write()
        assert _error_code(excinfo) == "AccessDenied"
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"


def test_env_reaches_the_server_through_the_standard_aws_chain(s3_env, s3_bucket):
    import boto3

    boto3.session.Session().client("s3").put_object(Bucket=s3_bucket, Key="env", Body=b"ok")
    # A child process, as a training job would be, with nothing but the environment.
    code = (
        "import sys, boto3\n"
        f"body = boto3.client('s3').get_object(Bucket={s3_bucket!r}, Key='env')['Body']\n"
        "sys.stdout.write(body.read().decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == "ok"


class _StallingBody(io.BytesIO):
    """An upload body that, once ``after`` bytes have been read, waits for ``resume``."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self.after, self.stalled, self.resume = after, threading.Event(), threading.Event()

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        if self.tell() >= self.after and not self.stalled.is_set():
            self.stalled.set()
            self.resume.wait(30)
        return chunk


def test_stop_mid_upload_then_restart_keeps_what_was_stored():
    # A server of its own: this one is taken down on purpose. Over https botocore streams the
    # body as it sends it (over http it reads it whole for its checksums first), so the stop
    # below comes while the request is on the wire.
    with SeaweedServer(identities=[ADMIN], tls=True) as server:
        client = server.client(retries={"total_max_attempts": 1})
        client.create_bucket(Bucket="survivor")
        kept = os.urandom(1 << 20)
        client.put_object(Bucket="survivor", Key="kept", Body=kept)
        part1 = os.urandom(5 * 1024 * 1024)
        upload = client.create_multipart_upload(Bucket="survivor", Key="resumed")["UploadId"]
        etag1 = client.upload_part(
            Bucket="survivor", Key="resumed", UploadId=upload, PartNumber=1, Body=part1
        )["ETag"]

        # A PUT whose body stops after its first MiB; the server goes away meanwhile.
        body, outcome = _StallingBody(os.urandom(8 << 20), after=1 << 20), []

        def put() -> None:
            try:
                client.put_object(Bucket="survivor", Key="cut", Body=body)
                outcome.append("stored")
            except (BotoCoreError, ClientError) as e:
                outcome.append(e)

        thread = threading.Thread(target=put)
        thread.start()
        assert body.stalled.wait(30)
        endpoint = server.endpoint
        server.stop(keep_data=True)
        assert not server.running
        body.resume.set()
        thread.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], BotoCoreError), outcome

        server.restart()
        assert server.endpoint == endpoint
        client = server.client()
        assert client.get_object(Bucket="survivor", Key="kept")["Body"].read() == kept
        with pytest.raises(ClientError) as excinfo:
            client.head_object(Bucket="survivor", Key="cut")
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        # The multipart upload is still open, with its part, and can be finished.
        uploads = client.list_multipart_uploads(Bucket="survivor")["Uploads"]
        assert [(u["Key"], u["UploadId"]) for u in uploads] == [("resumed", upload)]
        parts = client.list_parts(Bucket="survivor", Key="resumed", UploadId=upload)["Parts"]
        assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, etag1)]
        etag2 = client.upload_part(
            Bucket="survivor", Key="resumed", UploadId=upload, PartNumber=2, Body=b"tail"
        )["ETag"]
        client.complete_multipart_upload(
            Bucket="survivor",
            Key="resumed",
            UploadId=upload,
            MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": etag1}, {"PartNumber": 2, "ETag": etag2}]
            },
        )
        resumed = client.get_object(Bucket="survivor", Key="resumed")["Body"].read()
        assert resumed == part1 + b"tail"

        # A crash (SIGKILL) loses nothing that was acknowledged either.
        server.stop(keep_data=True, graceful=False)
        server.start()
        assert server.client().get_object(Bucket="survivor", Key="kept")["Body"].read() == kept
        root = server.root
    assert root is not None and not os.path.exists(root)
