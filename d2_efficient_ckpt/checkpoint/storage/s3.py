"""Checkpoints in S3 and S3-compatible object stores: paths ``s3://bucket/prefix/name``.

The client is boto3, configured by the usual AWS chain: credentials and region from the
environment, ``~/.aws`` or an instance role; the endpoint of an S3-compatible store (MinIO,
Ceph RGW, SeaweedFS) from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (or
``endpoint_url`` in ``~/.aws/config``), which also switches to path-style addressing. No
config key holds a secret. Transient failures (throttling, 5xx, dropped connections) are
retried by botocore's ``standard`` mode with exponential backoff and jitter (5 attempts,
``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` override it); ``D2_CKPT_S3_TIMEOUT_S`` sets the
connect and read timeouts (60 s).

Writing keeps the guarantees of a local disk:
    * an object appears whole or not at all: it is spooled to a local temporary file (in
      ``$TMPDIR/d2ckpt-s3-spool-<uid>``, locked by its writer; a killed writer's is removed
      by the next process that saves), and sent as one ``PutObject`` (up to 16 MiB) or as a
      multipart upload whose parts go up as soon as they are written, while the rest is
      serialized, and whose completion is the last step; any failure aborts the upload, so
      no part outlives it;
    * it is verified by the store's own checksum: every request carries ``Content-MD5``
      (the store refuses bytes that do not match), and the ETag it returns for each part
      and for the completed object is compared with the MD5s computed here. Where the
      store's ETag is not an MD5 (SSE-KMS, some gateways), the object is read back and
      hashed instead;
    * the store's success response means the object is durable; a listing shows it at once
      (S3 is strongly consistent, and so are the compatible stores tested).

Reading is lazy (:class:`S3Source`): ranged ``GetObject`` requests for exactly the ranges a
load uses, merged and fetched concurrently ahead of the copy, each pinned to the ETag seen
when the load started (``If-Match``), so an object replaced during a load is an error.
"""

import atexit
import base64
import bisect
import contextlib
import ctypes
import hashlib
import io
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..errors import CheckpointFormatError, RemoteStorageError
from .atomic import lock_temp_file, temp_path_for
from .base import FileInfo, Store
from .mapped import changed_error, read_exact
from .source import ByteSource, Check
from .stale import remove_stale_temp_files

__all__ = ["S3Store", "S3Source", "split_url"]

logger = logging.getLogger(__name__)

_PART = 16 << 20  # bytes per uploaded part (and the largest single PUT)
_UPLOADS_IN_FLIGHT = 4  # parts sent at once: the upload's memory is this times _PART
_PIECE = 8 << 20  # bytes per ranged GET
_READERS = 8  # ranged GETs at once
_READ_CHUNK = 1 << 20  # bytes per read from a response body
_MERGE_GAP = 1 << 20  # ranges closer than this are fetched as one: a round trip costs more
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
}
_CREDENTIAL_FIX = (
    "Check the credentials the AWS chain finds: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE and ~/.aws/credentials, or the instance role."
)


def split_url(url: str) -> Tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key`` (the key may be empty or a prefix).

    Raises:
        RemoteStorageError: there is no bucket name.
    """
    rest = url.split("://", 1)[1] if "://" in url else url
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise RemoteStorageError(
            url, "InvalidURL", "it names no bucket.", "Write s3://BUCKET/PREFIX."
        )
    return bucket, key.rstrip("/")


def _url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _timeout_s() -> float:
    return float(os.environ.get("D2_CKPT_S3_TIMEOUT_S", "60"))


def _make_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the s3 extra is part of the test install
        raise RemoteStorageError(
            "s3://",
            "NoClient",
            "boto3 is not installed.",
            "Install it: pip install 'd2_efficient_ckpt[s3]' (or pip install boto3).",
        ) from None
    timeout = _timeout_s()
    options: Dict[str, Any] = dict(
        max_pool_connections=32,
        connect_timeout=timeout,
        read_timeout=timeout,
        # Content-MD5 and the returned ETags verify every request; the newer default
        # checksum trailers are not understood by every S3-compatible store.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    if "AWS_MAX_ATTEMPTS" not in os.environ and "AWS_RETRY_MODE" not in os.environ:
        options["retries"] = {"max_attempts": 5, "mode": "standard"}
    session = boto3.session.Session()
    client = session.client("s3", config=Config(**options))
    if "amazonaws.com" not in (client.meta.endpoint_url or ""):
        # An S3-compatible store at an address: buckets are not host names there.
        options["s3"] = {"addressing_style": "path"}
        client = session.client("s3", config=Config(**options))
    return client


def explain(url: str, error: BaseException, action: str) -> BaseException:
    """The package's error for a failed request on ``url`` (``action``: "read", ...).

    Returns ``FileNotFoundError`` for a missing object (callers treat it as locally),
    :func:`~.mapped.changed_error` for an object that changed under a load, and
    :class:`RemoteStorageError` with the fix for everything else.
    """
    from botocore import exceptions as bce

    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    if isinstance(error, bce.ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return RemoteStorageError(
                url,
                code,
                f"the bucket '{bucket}' does not exist.",
                f"Create it first (aws s3 mb s3://{bucket}) or fix the URL (CHECKPOINT.DIR, "
                "MODEL.WEIGHTS). Nothing was written.",
            )
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return FileNotFoundError(2, "no such object", url)
        if code in _CREDENTIAL_CODES:
            return RemoteStorageError(
                url, code, f"the store refused the credentials ({code}).", _CREDENTIAL_FIX
            )
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return RemoteStorageError(
                url,
                code or "AccessDenied",
                f"these credentials have no permission to {action} it.",
                "Grant them s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket and "
                f"s3:AbortMultipartUpload on the bucket '{bucket}', or use credentials that "
                "have them.",
            )
        if code in ("PreconditionFailed", "412") or status == 412:
            return changed_error(url, "the object was replaced (its ETag changed)")
        if code in ("BadDigest", "InvalidDigest"):
            return RemoteStorageError(
                url,
                code,
                f"the store received different bytes than were sent ({code}); nothing was kept.",
                "Check the network path to the store, then save again.",
            )
        message = info.get("Message") or str(error)
        return RemoteStorageError(url, code or str(status), f"{code} ({message}).")
    if isinstance(error, bce.NoCredentialsError):
        return RemoteStorageError(
            url, "NoCredentials", "no credentials were found.", _CREDENTIAL_FIX
        )
    if isinstance(error, (bce.ReadTimeoutError, bce.ConnectTimeoutError)):
        return RemoteStorageError(
            url,
            "timeout",
            f"the store did not answer within {_timeout_s():g} s, after retries ({error}).",
            "Check the store's health and the network; D2_CKPT_S3_TIMEOUT_S raises the timeout.",
        )
    if isinstance(error, (bce.EndpointConnectionError, bce.ConnectionClosedError)) or isinstance(
        error, (bce.HTTPClientError, ConnectionError)
    ):
        return RemoteStorageError(
            url,
            "connection",
            f"the store could not be reached, after retries ({error}).",
            "Check that the store is up and its endpoint (AWS_ENDPOINT_URL_S3) is right.",
        )
    return error


def _md5(data: Any) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _etag(response: Dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


class S3Store(Store):
    """Objects under ``s3://bucket/prefix``; one client, shared by the process's threads."""

    description = "S3 and S3-compatible object stores (s3://bucket/prefix)"

    def __init__(self, client: Any = None, spool_dir: Optional[str] = None):
        self._client = client
        self._lock = threading.Lock()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._upload_pool: Optional[ThreadPoolExecutor] = None
        self.spool_dir = spool_dir
        self._spool_cleaned = False
        #: Ranged GETs made and bytes they fetched (the benchmark and tests read them).
        self.fetched = {"requests": 0, "bytes": 0}
        self._buckets: set = set()  # buckets a request succeeded in: they exist

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use."""
        with self._lock:
            if self._client is None:
                self._client = _make_client()
            return self._client

    @property
    def pool(self) -> ThreadPoolExecutor:
        """Threads for concurrent ranged GETs and part uploads."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_READERS, thread_name_prefix="d2ckpt-s3")
            return self._pool

    def count(self, nbytes: int) -> None:
        """Add one ranged GET of ``nbytes`` to :attr:`fetched`."""
        with self._lock:
            self.fetched["requests"] += 1
            self.fetched["bytes"] += nbytes

    def call(self, url: str, action: str, method: str, **kwargs: Any) -> Any:
        """``client.<method>(**kwargs)``, its failure explained (see :func:`explain`)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = getattr(self.client, method)(**kwargs)
        except ClientError as e:
            raise explain(url, self._with_code(e, method, kwargs), action) from None
        except (BotoCoreError, ConnectionError) as e:
            raise explain(url, e, action) from None
        self._buckets.add(kwargs.get("Bucket"))
        return response

    def _with_code(self, error: Any, method: str, kwargs: Dict[str, Any]) -> Any:
        """``error``, or, for a HEAD's bare status, the error of the same question as a GET.

        A HEAD's error response has no body, hence no code: a wrong secret and a missing
        permission are both a bare 403, a missing bucket and a missing object both a bare
        404. The GET's error says which, so that the message gives the right fix; it costs a
        request only on a failure (and none for a 404 in a bucket known to exist).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(error.response.get("Error", {}).get("Code", ""))
        bucket = kwargs.get("Bucket")
        if method not in ("head_object", "head_bucket") or code not in ("", str(status)):
            return error
        if status not in (400, 403, 404) or (status == 404 and bucket in self._buckets):
            return error
        try:
            if method == "head_object":
                got = self.client.get_object(Bucket=bucket, Key=kwargs["Key"], Range="bytes=0-0")
                got["Body"].close()
            else:
                self.client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except ClientError as again:
            again_code = str(again.response.get("Error", {}).get("Code", ""))
            again_status = again.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if again_code and again_code != str(again_status):
                return again
        except (BotoCoreError, ConnectionError):
            pass
        return error

    # Reading.
    def local_path(self, path: str) -> str:
        """A private local copy of the object (for the formats read whole), kept until exit."""
        directory = tempfile.mkdtemp(prefix="d2ckpt-download-", dir=self.spool_dir)
        local = os.path.join(directory, os.path.basename(path) or "object")
        self.download(path, local)
        _TEMP_DIRS.append(directory)
        return local

    def download(self, path: str, local: str) -> FileInfo:
        """Copy the object to ``local`` with concurrent ranged GETs of one ETag."""
        source = self.open_bytes(path)
        with source, open(local, "wb") as f:
            f.truncate(source.size)
            source.advise([(0, source.size)])
            for start in range(0, source.size, _PIECE):
                f.seek(start)
                f.write(source.read(start, min(_PIECE, source.size - start)))
            f.flush()
            os.fsync(f.fileno())
            return FileInfo(source.size, time.time(), source.etag)

    def open_bytes(self, path: str) -> "S3Source":
        bucket, key = split_url(path)
        head = self.call(path, "read", "head_object", Bucket=bucket, Key=key)
        return S3Source(self, path, bucket, key, int(head["ContentLength"]), _etag(head))

    def read_range(self, path: str, offset: int, nbytes: int) -> bytes:
        bucket, key = split_url(path)
        if nbytes <= 0:
            return b""
        response = self.call(
            path, "read", "get_object", Bucket=bucket, Key=key,
            Range=f"bytes={offset}-{offset + nbytes - 1}",
        )  # fmt: skip
        return response["Body"].read()

    def read_small(self, path: str, limit: int) -> bytes:
        bucket, key = split_url(path)
        response = self.call(path, "read", "get_object", Bucket=bucket, Key=key)
        if int(response.get("ContentLength", 0)) > limit:
            response["Body"].close()
            raise OSError(27, f"longer than {limit} bytes", path)  # EFBIG, as locally
        return response["Body"].read(limit + 1)

    # Writing.
    def open_atomic(
        self,
        path: str,
        *,
        durable: bool = True,
        opener: Callable[..., BinaryIO] = open,
        before_replace: Optional[Callable[[str], None]] = None,
    ) -> "contextlib.AbstractContextManager[BinaryIO]":
        return self._atomic(path, opener, before_replace)

    def _spool_path(self, path: str) -> Tuple[str, Optional[str]]:
        """A new spool file for ``path``, and a folder made for it alone (removed after it)."""
        # One private folder per user in the machine's temporary space; the files of killed
        # writers in it (their lock is free) are removed by the first save of a process.
        base = self.spool_dir or tempfile.gettempdir()
        root = os.path.join(base, f"d2ckpt-s3-spool-{os.getuid()}")
        os.makedirs(root, mode=0o700, exist_ok=True)
        st = os.lstat(root)
        folder = None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            # Not ours alone (another user made it, or a link): a fresh private folder.
            logger.warning(f"{root} is not a private folder of this user; spooling elsewhere")
            root = folder = tempfile.mkdtemp(prefix="d2ckpt-s3-spool-", dir=base)
        elif not self._spool_cleaned:
            self._spool_cleaned = True
            remove_stale_temp_files(root)
        return temp_path_for(os.path.join(root, os.path.basename(path) or "object")), folder

    @contextlib.contextmanager
    def _atomic(
        self, path: str, opener: Callable[..., BinaryIO], before_replace: Optional[Callable]
    ) -> Iterator[BinaryIO]:
        # The bytes are spooled to a local file, and each whole part is uploaded from it as
        # soon as it is written: a part can be retried from the file, the check after a save
        # reads a local file as for a disk, and the upload overlaps the serialization.
        spool, folder = self._spool_path(path)
        try:
            with _Upload(self, path, spool) as upload, opener(spool, "xb") as f:
                lock_temp_file(f)
                stream = _Progress(f, upload.written)
                yield stream  # type: ignore[misc]
                f.flush()
                if before_replace is not None:
                    before_replace(spool)
                upload.finish(os.fstat(f.fileno()).st_size, rewritten=stream.rewritten)
        finally:
            with contextlib.suppress(OSError):
                os.remove(spool)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def write_bytes(self, path: str, data: bytes, *, durable: bool = True) -> None:
        self._put(path, data)

    def upload(self, local: str, path: str) -> None:
        """Publish the file ``local`` as the object ``path``, whole or not at all, verified.

        Raises:
            RemoteStorageError: the store refused or failed; no object or part was left.
        """
        with _Upload(self, path, local) as upload:
            upload.finish(os.path.getsize(local))

    @property
    def upload_pool(self) -> ThreadPoolExecutor:
        """Threads sending parts: as many as parts are held in memory at once."""
        with self._lock:
            if self._upload_pool is None:
                self._upload_pool = ThreadPoolExecutor(
                    _UPLOADS_IN_FLIGHT, thread_name_prefix="d2ckpt-s3-up"
                )
            return self._upload_pool

    def _abort(self, path: str, bucket: str, key: str, upload_id: str) -> None:
        # Best effort: a store that went away keeps the parts until the next save's clean-up
        # (remove_stale) aborts them; they never appear under the object's name.
        try:
            self.call(
                path, "write", "abort_multipart_upload", Bucket=bucket, Key=key,
                UploadId=upload_id,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 (the upload's own error is the one raised)
            logger.warning(f"Could not abort the upload of {path} ({e}); the next save will.")

    def _put(self, path: str, data: bytes) -> None:
        bucket, key = split_url(path)
        digest = _md5(data)
        response = self.call(
            path, "write", "put_object", Bucket=bucket, Key=key, Body=data,
            ContentMD5=base64.b64encode(digest).decode(),
        )  # fmt: skip
        if _etag(response) != digest.hex():
            self._verify_by_reading(io.BytesIO(data), path, _etag(response), digest.hex())

    def _verify_by_reading(self, local: Any, path: str, etag: str, expected: str) -> None:
        # The store's ETag is not the MD5 form (encryption, a gateway): compare the bytes.
        logger.info(f"{path}: the store's ETag {etag!r} is not an MD5; verifying by reading back")
        ours, theirs = hashlib.sha256(), hashlib.sha256()
        with contextlib.ExitStack() as stack:
            f = local if not isinstance(local, str) else stack.enter_context(open(local, "rb"))
            for chunk in iter(lambda: f.read(_PIECE), b""):
                ours.update(chunk)
        with self.open_bytes(path) as source:
            source.advise([(0, source.size)])
            for start in range(0, source.size, _PIECE):
                theirs.update(source.read(start, min(_PIECE, source.size - start)))
        if ours.digest() != theirs.digest():
            self.remove(path)
            raise RemoteStorageError(
                path,
                "BadDigest",
                "the object read back differs from what was sent; it was removed.",
                "Check the store's health, then save again.",
            )

    # The directory.
    def list(self, directory: str) -> List[str]:
        bucket, key = split_url(directory)
        prefix = f"{key}/" if key else ""
        names = []
        paginator = self.client.get_paginator("list_objects_v2")
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
                names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
                folders = page.get("CommonPrefixes", [])
                names += [p["Prefix"][len(prefix) :].rstrip("/") for p in folders]
        except (ClientError, BotoCoreError) as e:
            raise explain(directory, e, "list") from None
        return [n for n in names if n]

    def info(self, path: str) -> FileInfo:
        bucket, key = split_url(path)
        head = self.call(path, "read", "head_object", Bucket=bucket, Key=key)
        return FileInfo(int(head["ContentLength"]), head["LastModified"].timestamp(), _etag(head))

    def exists(self, path: str) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def remove(self, path: str) -> None:
        bucket, key = split_url(path)
        self.call(path, "delete", "delete_object", Bucket=bucket, Key=key)

    def makedirs(self, directory: str) -> None:
        # There are no directories; the bucket must exist, and is checked here, before a save
        # (once: a request in the caller of every async save would cost its blocking time).
        bucket, _ = split_url(directory)
        if bucket not in self._buckets:
            self.call(directory, "write", "head_bucket", Bucket=bucket)

    def sync_directory(self, directory: str) -> None:
        """Nothing to do: a completed request is durable and visible."""

    def remove_stale(self, directory: str, max_age_s: float) -> List[str]:
        """Abort multipart uploads directly under ``directory`` older than ``max_age_s``."""
        bucket, key = split_url(directory)
        prefix = f"{key}/" if key else ""
        aborted = []
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(prefix) :]
                    age = time.time() - upload["Initiated"].timestamp()
                    if "/" in name or age < max_age_s:
                        continue
                    self._abort(directory, bucket, upload["Key"], upload["UploadId"])
                    aborted.append(name)
        except Exception as e:  # noqa: BLE001 (a clean-up failure never stops a save)
            logger.warning(f"Could not clean up interrupted uploads under {directory}: {e}")
        return aborted


class _Progress:
    """The spool file as its writer sees it: every part's worth of bytes is flushed and
    reported (``on_written(size)``) as it is written, so that it can be sent at once."""

    def __init__(self, f: BinaryIO, on_written: Callable[[int], None]):
        self._f, self._on_written = f, on_written
        self._size = self._reported = 0
        #: The writer moved back in the file: parts already sent may be stale.
        self.rewritten = False

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        n = memoryview(data).nbytes if n is None else n
        self._size += n
        if self._size - self._reported > _PART and not self.rewritten:
            self._f.flush()
            self._reported = self._size
            self._on_written(self._size)
        return n

    def flush(self) -> None:
        self._f.flush()

    def seekable(self) -> bool:
        return False  # writers that can stream do

    def seek(self, *args: Any) -> int:
        self.rewritten = True
        return self._f.seek(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class _Upload:
    """The upload of one object from a local file that may still be growing.

    Whole parts are sent as soon as :meth:`written` reports them, at most
    ``_UPLOADS_IN_FLIGHT`` at once, each read from the file when its turn comes (so that
    many parts are all the memory it holds); :meth:`finish` sends the rest and completes the
    upload, its last step, or sends a file of one part as one ``PutObject``. Each part
    carries its ``Content-MD5``; the completed object's ETag is compared with the MD5s.
    Until :meth:`finish` returns, nothing is visible under the object's name, and
    :meth:`abort` removes every part sent. As a context manager, an error in its block
    aborts it, and its file descriptor is closed in any case.
    """

    def __init__(self, store: S3Store, path: str, local: str):
        self.store, self.path, self.local = store, path, local
        self.bucket, self.key = split_url(path)
        self.upload_id: Optional[str] = None
        self.parts: List["Future[bytes]"] = []
        self.sent = 0  # bytes of the file handed to parts
        self.completed = False
        self.failed: Optional[BaseException] = None  # of a request made by `written`
        self._fd: Optional[int] = None

    def written(self, size: int) -> None:
        """The file holds ``size`` bytes: send its whole parts not sent yet. The last part
        is left to :meth:`finish`, so that it is never empty.

        Never raises: the writer calling it is inside the serializer, which would hide the
        error; after a failure nothing more is sent, and :meth:`finish` raises it.
        """
        if self.failed or any(p.done() and p.exception() is not None for p in self.parts):
            return
        try:
            self._send_whole_parts(size)
        except Exception as e:  # noqa: BLE001 (raised by finish, in the caller's thread)
            self.failed = e

    def _send_whole_parts(self, size: int) -> None:
        while size - self.sent > _PART:
            self._send(self.sent, _PART)

    def finish(self, size: int, rewritten: bool = False) -> None:
        """Send the rest of the file of ``size`` bytes, complete the upload and verify it.

        Args:
            rewritten: the writer went back over bytes that may have been sent: start over.
        """
        if rewritten and self.upload_id is not None:
            self.abort()
            self.parts, self.sent = [], 0
        if self.failed is not None:
            raise self.failed
        if self.upload_id is None and size <= _PART:
            with open(self.local, "rb") as f:
                self.store._put(self.path, f.read())
            return
        self._send_whole_parts(size)
        self._send(self.sent, size - self.sent)
        digests = [part.result() for part in self.parts]
        done = self.store.call(
            self.path, "write", "complete_multipart_upload", Bucket=self.bucket, Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={
                "Parts": [{"ETag": d.hex(), "PartNumber": i + 1} for i, d in enumerate(digests)]
            },
        )  # fmt: skip
        self.completed = True
        expected = f"{_md5(b''.join(digests)).hex()}-{len(digests)}"
        if _etag(done) != expected:
            self.store._verify_by_reading(self.local, self.path, _etag(done), expected)

    def _send(self, start: int, nbytes: int) -> None:
        if self.upload_id is None:
            self.upload_id = self.store.call(
                self.path, "write", "create_multipart_upload", Bucket=self.bucket, Key=self.key
            )["UploadId"]
        if self._fd is None:
            self._fd = os.open(self.local, os.O_RDONLY)
        number = len(self.parts) + 1
        self.parts.append(self.store.upload_pool.submit(self._part, number, start, nbytes))
        self.sent = start + nbytes

    def _part(self, number: int, start: int, nbytes: int) -> bytes:
        assert self._fd is not None
        data = read_exact(self._fd, start, nbytes, self.local)
        digest = _md5(data)
        response = self.store.call(
            self.path, "write", "upload_part", Bucket=self.bucket, Key=self.key,
            UploadId=self.upload_id, PartNumber=number, Body=data,
            ContentMD5=base64.b64encode(digest).decode(),
        )  # fmt: skip
        if _etag(response) not in (digest.hex(), ""):
            logger.debug(f"{self.path}: part {number} ETag is not its MD5")
        return digest

    def abort(self) -> None:
        """Stop: cancel the parts not started, wait for the others, abort the upload."""
        for part in self.parts:
            part.cancel()
        wait(self.parts)
        if self.upload_id is not None and not self.completed:
            self.store._abort(self.path, self.bucket, self.key, self.upload_id)
        self.upload_id = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "_Upload":
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            if kind is not None:
                self.abort()
        finally:
            self.close()


_TEMP_DIRS: List[str] = []  # downloads of objects read whole, removed at exit


@atexit.register
def _remove_downloads() -> None:
    for directory in _TEMP_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class _Piece:
    """One ranged GET: ``[start, end)`` of the object, fetched ahead of its reads."""

    start: int
    end: int
    future: "Future[memoryview]"
    needed: int  # bytes the advice asked for; the piece is dropped once as many were read
    read: int = 0


@dataclass
class _Guard:
    """A check of bytes ``[start, end)`` owed before any of ``[end, data_end)`` is read."""

    start: int
    end: int
    data_end: int
    check: Check
    done: bool = False


class S3Source(ByteSource):
    """Ranged, concurrent, ETag-pinned reads of one object (see :meth:`S3Store.open_bytes`).

    Ranges given to :meth:`advise` are fetched ahead, in 8 MiB GETs on the store's threads,
    and dropped once read; any other read is a direct GET.
    """

    remote = True

    def __init__(self, store: S3Store, url: str, bucket: str, key: str, size: int, etag: str):
        self.store, self.name, self.bucket, self.key = store, url, bucket, key
        self.size, self.etag = size, etag
        self._pieces: List[_Piece] = []
        self._guards: List[_Guard] = []
        self._guard_ends: List[int] = []
        self._lock = threading.Lock()

    def _get(self, start: int, end: int) -> memoryview:
        """Bytes ``[start, end)`` of the object as it was at the open, in new memory."""
        # Not zeroed first: its pages are faulted in once, by the read into them.
        out = torch.empty(max(end - start, 0), dtype=torch.uint8).numpy().data
        self._get_into(start, end, out)
        return out

    def _get_into(self, start: int, end: int, out: memoryview) -> None:
        """Read bytes ``[start, end)`` of the object as it was at the open into ``out``."""
        if end <= start:
            return
        try:
            response = self.store.call(
                self.name, "read", "get_object", Bucket=self.bucket, Key=self.key,
                Range=f"bytes={start}-{end - 1}", IfMatch=self.etag,
            )  # fmt: skip
        except FileNotFoundError:  # it was there at the open
            raise changed_error(self.name, "the object was deleted") from None
        if self.etag and _etag(response) not in ("", self.etag):
            raise changed_error(self.name, "the object was replaced (its ETag changed)")
        from botocore.exceptions import BotoCoreError

        body, done = response["Body"], 0
        try:
            # Straight from the socket into place, a megabyte at a time: reading the body
            # whole would gather it in chunks and join them, two more copies.
            while done < end - start:
                got = body.readinto(out[done : min(end - start, done + _READ_CHUNK)])
                if not got:
                    break
                done += got
        except (BotoCoreError, ConnectionError) as e:
            body.close()
            raise explain(self.name, e, "read") from None
        if done != end - start:  # a body read to its end has gone back to the pool
            body.close()
            raise changed_error(self.name, f"it ends before byte {end}")
        self.store.count(done)

    def _check_bounds(self, offset: int, nbytes: int) -> None:
        if offset < 0 or nbytes < 0:
            raise CheckpointFormatError(
                self.name, f"it points at byte {offset} (the file is corrupt)."
            )
        if offset + nbytes > self.size:
            raise changed_error(self.name, f"it ends before byte {offset + nbytes}")

    def read(self, offset: int, nbytes: int) -> bytes:
        self._check_bounds(offset, nbytes)
        self._run_guards(offset, offset + nbytes)
        out = bytearray(nbytes)
        self._fill(offset, offset + nbytes, memoryview(out))
        return bytes(out)

    def read_into(self, offset: int, nbytes: int, into: torch.Tensor) -> None:
        self._check_bounds(offset, nbytes)
        self._run_guards(offset, offset + nbytes)
        if nbytes:
            view = (ctypes.c_char * nbytes).from_address(into.data_ptr())
            self._fill(offset, offset + nbytes, memoryview(view).cast("B"))

    def _fill(self, start: int, end: int, out: memoryview, count: bool = True) -> None:
        """Copy ``[start, end)`` into ``out``: from fetched pieces, the rest by direct GETs.

        ``count``: the bytes count as read from their pieces (not for the header checks:
        headers lie in the gaps between the ranges asked for).
        """
        pos, direct = start, []
        for piece in self._overlapping(start, end):
            if piece.start > pos:
                direct.append((pos, piece.start))
            data = piece.future.result()  # a failed GET raises its explained error here
            a, b = max(pos, piece.start), min(end, piece.end)
            out[a - start : b - start] = memoryview(data)[a - piece.start : b - piece.start]
            if count:
                self._consumed(piece, b - a)
            pos = b
        if pos < end:
            direct.append((pos, end))
        parts = [(a, min(a + _PIECE, b)) for a, b in direct for a in range(a, b, _PIECE)]
        if len(parts) == 1:
            a, b = parts[0]
            self._get_into(a, b, out[a - start : b - start])
            return
        futures = [
            self.store.pool.submit(self._get_into, a, b, out[a - start : b - start])
            for a, b in parts
        ]
        for future in futures:
            future.result()

    def _overlapping(self, start: int, end: int) -> List[_Piece]:
        with self._lock:
            i = bisect.bisect_right([p.start for p in self._pieces], start) - 1
            return [p for p in self._pieces[max(i, 0) :] if p.start < end and p.end > start]

    def _consumed(self, piece: _Piece, nbytes: int) -> None:
        with self._lock:
            piece.read += nbytes
            # Read as far as the advice asked: its memory goes back. A read of it after
            # that is a direct GET, never wrong.
            if piece.read >= piece.needed and piece in self._pieces:
                self._pieces.remove(piece)

    def advise(self, ranges: Sequence[Tuple[int, int]]) -> Optional[threading.Thread]:
        spans = sorted(
            (max(0, o), min(self.size, o + n)) for o, n in ranges if min(self.size, o + n) > o
        )
        merged: List[List[int]] = []
        for a, b in spans:  # a round trip costs as much as a megabyte of transfer
            if merged and a - merged[-1][1] <= _MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for m in merged:  # a record's header comes with the first of its data
            for g in self._guards:
                if not g.done and g.end <= m[1] and g.data_end > m[0] and g.start < m[0]:
                    m[0] = g.start
        with self._lock:
            covered = [(p.start, p.end) for p in self._pieces]
            for a, b in merged:
                for x, y in _uncovered(a, b, covered):
                    for s in range(x, y, _PIECE):
                        e = min(s + _PIECE, y)
                        # The bytes asked for in it: once as many were read, it is dropped.
                        needed = sum(max(0, min(e, q) - max(s, p)) for p, q in spans)
                        future = self.store.pool.submit(self._get, s, e)
                        self._pieces.append(_Piece(s, e, future, needed or e - s))
                        covered.append((s, e))
            self._pieces.sort(key=lambda p: p.start)
        return None

    def add_check(self, start: int, end: int, data_end: int, check: Check) -> None:
        self._guards.append(_Guard(start, end, data_end, check))
        if len(self._guards) > 1 and self._guards[-2].end > end:
            self._guards.sort(key=lambda g: g.end)
        self._guard_ends = [g.end for g in self._guards]

    def run_checks(self, start: int, end: int) -> None:
        self._run_guards(start, end)

    def _run_guards(self, start: int, end: int) -> None:
        """Run the checks owed by the records whose data ``[start, end)`` touches."""
        # The records' data ranges are disjoint and sorted by their start (a guard's end).
        j = bisect.bisect_left(self._guard_ends, end) - 1
        while j >= 0:
            g = self._guards[j]
            if g.data_end <= start:
                break
            if not g.done and g.data_end > g.end:
                out = bytearray(g.end - g.start)
                self._fill(g.start, g.end, memoryview(out), count=False)
                g.check(bytes(out))
                g.done = True
            j -= 1

    def check_unchanged(self) -> None:
        try:
            now = self.store.info(self.name)
        except FileNotFoundError:
            raise changed_error(self.name, "the object was deleted") from None
        if now.etag != self.etag or now.size != self.size:
            raise changed_error(self.name, "the object was replaced (its ETag changed)")

    def reopen(self) -> "S3Source":
        return self  # every GET is pinned to the ETag: the fetched ranges stay valid

    def address_space(self) -> torch.UntypedStorage:
        # Untouched anonymous memory: only the offsets of the tensors viewing it are used.
        return torch.UntypedStorage(self.size)


def _uncovered(a: int, b: int, covered: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The parts of ``[a, b)`` outside the ``covered`` ranges."""
    out, pos = [], a
    for x, y in sorted(covered):
        if y <= pos or x >= b:
            continue
        if x > pos:
            out.append((pos, x))
        pos = max(pos, y)
    if pos < b:
        out.append((pos, b))
    return out
