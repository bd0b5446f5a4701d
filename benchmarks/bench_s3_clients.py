#!/usr/bin/env python
"""boto3 against obstore on one real S3 server (SeaweedFS on loopback), in the same run.

The script starts its own SeaweedFS server (``weed mini`` on 127.0.0.1 with one admin
identity, so every request is signed and checked; see ``tests/helpers/s3server.py``), writes
one object of ``--size-mb`` MiB of random bytes, and times, for each client:

    get_full          one GET of the whole object, streamed into a preallocated buffer
                      (boto3: ``Body.readinto``; obstore: ``get(...).stream()`` chunks copied
                      into it, as obstore cannot read into a buffer of the caller's)
    get_ranged_T      8 MiB ranged GETs covering the object, T threads (8 and 16), each range
                      written into its place in the buffer
    get_ranges_10     obstore only: one ``obstore.get_ranges`` call (``coalesce=0``; it runs
                      at most 10 requests at once), then the ranges copied into the buffer
    put_single        one PUT of the whole object
    put_multipart     a multipart upload of 16 MiB parts, 8 in flight
    latency_1000B     a 1000-byte ranged GET on a warm connection (median of ``--latency-n``)

boto3 runs twice where its checksums change the work: with its defaults (``when_supported``:
a CRC32 of every upload, and of every full GET it reads back) and with
``request_checksum_calculation`` / ``response_checksum_validation`` ``when_required``. Over
plain http botocore also hashes every upload with SHA-256 for its signature (it streams
with ``aws-chunked`` and unsigned payloads only over https); ``--tls`` measures over https.

The local floor is one memcpy of the object into the preallocated buffer (five per round).
Cases run in rounds, every case once per round, the order of the clients alternating
between rounds; the figures are medians over ``--repeats`` rounds. Every GET is checked
byte for byte and every upload by its size, outside the timed part.

Example:
    python benchmarks/bench_s3_clients.py                      # 256 MiB, 3 rounds
    python benchmarks/bench_s3_clients.py --size-mb 64 --repeats 1

Writes ``<out-dir>/s3_clients_cpu.json`` (``s3_clients_tls_cpu.json`` with ``--tls``) and
prints the table.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import boto3
import obstore
from obstore.store import S3Store
from tabulate import tabulate

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, REPO_ROOT)

from tests.helpers.s3server import ADMIN, REGION, SeaweedServer, weed_binary  # noqa: E402

MiB = 1024 * 1024
RANGE_SIZE = 8 * MiB
PART_SIZE = 16 * MiB
PARTS_IN_FLIGHT = 8
RANGE_THREADS = (8, 16)
BUCKET = "bench"
KEY = "object"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size-mb", type=int, default=256, help="object size in MiB")
    p.add_argument("--repeats", type=int, default=3, help="rounds; figures are medians")
    p.add_argument("--latency-n", type=int, default=50, help="small GETs per latency figure")
    p.add_argument("--tls", action="store_true", help="talk to the server over https")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    return p.parse_args(argv)


# -- clients ---------------------------------------------------------------------------------


def boto3_client(server: SeaweedServer, checksums: str) -> Any:
    """A boto3 client with a connection pool large enough for the widest case."""
    return server.client(
        max_pool_connections=max(RANGE_THREADS) + 4,
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
        retries={"total_max_attempts": 1},  # a failure shows, instead of a slow repeat
    )


def obstore_store(server: SeaweedServer) -> S3Store:
    """An obstore store for the bench bucket, with the server's address and admin keys."""
    if server.ca_bundle is not None:
        # obstore's TLS takes extra root certificates from this variable.
        os.environ["SSL_CERT_FILE"] = server.ca_bundle
    return S3Store(
        BUCKET,
        endpoint=server.endpoint,
        region=REGION,
        access_key_id=ADMIN.access_key,
        secret_access_key=ADMIN.secret_key,
        virtual_hosted_style_request=False,
        # object_store's default timeout is 30 s for a whole request.
        client_options={"allow_http": True, "timeout": "600s"},
    )


# -- the cases -------------------------------------------------------------------------------


def boto3_get_full(c: Any, dst: memoryview) -> None:
    body = c.get_object(Bucket=BUCKET, Key=KEY)["Body"]
    pos = 0
    while pos < len(dst):
        n = body.readinto(dst[pos : pos + 8 * MiB])
        if n == 0:
            raise RuntimeError(f"boto3: object ended at {pos} of {len(dst)} bytes")
        pos += n
    if body.read(1):
        raise RuntimeError("boto3: object longer than expected")
    body.close()


def obstore_get_full(store: S3Store, dst: memoryview) -> None:
    pos = 0
    for chunk in obstore.get(store, KEY).stream(min_chunk_size=8 * MiB):
        view = memoryview(chunk)
        dst[pos : pos + len(view)] = view
        pos += len(view)
    if pos != len(dst):
        raise RuntimeError(f"obstore: {pos} bytes, expected {len(dst)}")


def ranges(size: int) -> List[range]:
    return [range(a, min(a + RANGE_SIZE, size)) for a in range(0, size, RANGE_SIZE)]


def boto3_get_ranged(c: Any, dst: memoryview, pool: ThreadPoolExecutor) -> None:
    def one(r: range) -> None:
        body = c.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={r.start}-{r.stop - 1}")["Body"]
        pos = r.start
        while pos < r.stop:
            n = body.readinto(dst[pos : r.stop])
            if n == 0:
                raise RuntimeError(f"boto3: range {r} ended at {pos}")
            pos += n
        body.close()

    list(pool.map(one, ranges(len(dst))))


def obstore_get_ranged(store: S3Store, dst: memoryview, pool: ThreadPoolExecutor) -> None:
    def one(r: range) -> None:
        got = memoryview(obstore.get_range(store, KEY, start=r.start, end=r.stop))
        dst[r.start : r.stop] = got

    list(pool.map(one, ranges(len(dst))))


def obstore_get_ranges(store: S3Store, dst: memoryview) -> None:
    rs = ranges(len(dst))
    got = obstore.get_ranges(
        store, KEY, starts=[r.start for r in rs], ends=[r.stop for r in rs], coalesce=0
    )
    for r, b in zip(rs, got):
        dst[r.start : r.stop] = memoryview(b)


def boto3_put_single(key: str, c: Any, data: bytes) -> None:
    c.put_object(Bucket=BUCKET, Key=key, Body=data)


def boto3_put_multipart(key: str, c: Any, data: bytes, pool: ThreadPoolExecutor) -> None:
    upload = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

    def one(number: int) -> Dict[str, Any]:
        a = (number - 1) * PART_SIZE
        # A bytes slice is a copy (16 MiB, a few ms): botocore takes bytes or a file object.
        r = c.upload_part(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            Body=data[a : a + PART_SIZE],
        )
        part = {"PartNumber": number, "ETag": r["ETag"]}
        if "ChecksumCRC32" in r:
            part["ChecksumCRC32"] = r["ChecksumCRC32"]
        return part

    try:
        parts = list(pool.map(one, range(1, -(-len(data) // PART_SIZE) + 1)))
        c.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        c.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
        raise


def obstore_put_single(key: str, store: S3Store, data: bytes) -> None:
    obstore.put(store, key, data, use_multipart=False)


def obstore_put_multipart(key: str, store: S3Store, data: bytes) -> None:
    obstore.put(
        store,
        key,
        data,
        use_multipart=True,
        chunk_size=PART_SIZE,
        max_concurrency=PARTS_IN_FLIGHT,
    )


def latency_boto3(c: Any, n: int) -> List[float]:
    out = []
    for i in range(n):
        a = (i * 7919 * 1000) % (1 << 20)
        t = time.perf_counter()
        c.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={a}-{a + 999}")["Body"].read()
        out.append(time.perf_counter() - t)
    return out


def latency_obstore(store: S3Store, n: int) -> List[float]:
    out = []
    for i in range(n):
        a = (i * 7919 * 1000) % (1 << 20)
        t = time.perf_counter()
        obstore.get_range(store, KEY, start=a, length=1000)
        out.append(time.perf_counter() - t)
    return out


# -- driver ----------------------------------------------------------------------------------


def timed(fn: Callable[..., None], *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    weed = subprocess.run([weed_binary(), "version"], capture_output=True, text=True).stdout
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "obstore": obstore.__version__,
        "seaweedfs": weed.split()[2] if len(weed.split()) > 2 else weed.strip(),
        "load_avg_start": os.getloadavg()[0],
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    size = args.size_mb * MiB
    data = os.urandom(size)
    dst = bytearray(size)
    dst[:] = data  # every page faulted in before any timing
    view = memoryview(dst)
    info = machine()
    print(
        f"[bench] {args.size_mb} MiB, {args.repeats} rounds, {info['cores']} cores, "
        f"{info['cpu']}, boto3 {info['boto3']}, obstore {info['obstore']}, "
        f"SeaweedFS {info['seaweedfs']}",
        flush=True,
    )

    times: Dict[Tuple[str, str], List[float]] = {}
    latencies: Dict[str, List[float]] = {}

    def record(case: str, client: str, seconds: float) -> None:
        times.setdefault((case, client), []).append(seconds)

    def get_case(case: str, client: str, fn: Callable[..., None], *call: Any) -> None:
        view[:] = zeros  # a GET that writes nothing cannot pass the check
        record(case, client, timed(fn, *call))
        if dst != data:
            raise RuntimeError(f"{client} {case}: the buffer differs from the object")

    def put_case(case: str, client: str, fn: Callable[..., None], *call: Any) -> None:
        key = f"up/{case}"
        record(case, client, timed(fn, key, *call))
        got = setup.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        if got != size:
            raise RuntimeError(f"{client} {case}: stored {got} bytes of {size}")
        setup.delete_object(Bucket=BUCKET, Key=key)

    zeros = bytes(size)
    with SeaweedServer(identities=[ADMIN], tls=args.tls) as server:
        server.make_bucket(BUCKET)
        setup = server.client()
        setup.put_object(Bucket=BUCKET, Key=KEY, Body=data)
        b3 = boto3_client(server, "when_supported")
        b3_lean = boto3_client(server, "when_required")
        obs = obstore_store(server)
        latency_boto3(b3, 2)  # connections and credentials warm before any timing
        latency_boto3(b3_lean, 2)
        latency_obstore(obs, 2)
        pools = {t: ThreadPoolExecutor(t) for t in set(RANGE_THREADS) | {PARTS_IN_FLIGHT}}
        mp_pool = pools[PARTS_IN_FLIGHT]
        lean = "boto3 (checksums when_required)"

        def boto3_round() -> None:
            get_case("get_full", "boto3", boto3_get_full, b3, view)
            get_case("get_full", lean, boto3_get_full, b3_lean, view)
            # Ranged GETs validate no checksum and send none: the same work in both set-ups.
            for t in RANGE_THREADS:
                get_case(f"get_ranged_{t}", "boto3", boto3_get_ranged, b3, view, pools[t])
            put_case("put_single", "boto3", boto3_put_single, b3, data)
            put_case("put_single", lean, boto3_put_single, b3_lean, data)
            put_case("put_multipart", "boto3", boto3_put_multipart, b3, data, mp_pool)
            put_case("put_multipart", lean, boto3_put_multipart, b3_lean, data, mp_pool)
            latencies.setdefault("boto3", []).extend(latency_boto3(b3, args.latency_n))

        def obstore_round() -> None:
            get_case("get_full", "obstore", obstore_get_full, obs, view)
            for t in RANGE_THREADS:
                get_case(f"get_ranged_{t}", "obstore", obstore_get_ranged, obs, view, pools[t])
            get_case("get_ranges_10", "obstore", obstore_get_ranges, obs, view)
            put_case("put_single", "obstore", obstore_put_single, obs, data)
            put_case("put_multipart", "obstore", obstore_put_multipart, obs, data)
            latencies.setdefault("obstore", []).extend(latency_obstore(obs, args.latency_n))

        started = time.monotonic()
        for rnd in range(args.repeats):
            for _ in range(5):  # short and noisy on a shared machine: five per round
                record("memcpy", "local floor", timed(view.__setitem__, slice(None), data))
            for fn in (
                (boto3_round, obstore_round) if rnd % 2 == 0 else (obstore_round, boto3_round)
            ):
                fn()
            print(
                f"[bench] round {rnd + 1}/{args.repeats} done ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        for pool in pools.values():
            pool.shutdown()
    info["load_avg_end"] = os.getloadavg()[0]

    memcpy = statistics.median(times[("memcpy", "local floor")])
    rows = []
    case_order = ["memcpy", "get_full"] + [f"get_ranged_{t}" for t in RANGE_THREADS]
    case_order += ["get_ranges_10", "put_single", "put_multipart"]
    for case in case_order:
        for (c, client), ts in times.items():
            if c != case:
                continue
            med = statistics.median(ts)
            rows.append(
                [
                    case,
                    client,
                    len(ts),
                    f"{med:.3f}",
                    f"{min(ts):.3f}-{max(ts):.3f}",
                    f"{size / med / 1e9:.2f}",
                    f"{med / memcpy:.0f}x",
                ]
            )
    headers = ["case", "client", "n", "median s", "min-max s", "GB/s", "x memcpy"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    lat_rows = []
    for client, ls in latencies.items():
        ms = sorted(x * 1e3 for x in ls)
        p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
        lat_rows.append(
            [
                "latency_1000B",
                client,
                len(ms),
                f"{statistics.median(ms):.2f}",
                f"{p90:.2f}",
                f"{ms[0]:.2f}-{ms[-1]:.2f}",
            ]
        )
    lat_headers = ["case", "client", "n", "median ms", "p90 ms", "min-max ms"]
    print()
    print(tabulate(lat_rows, headers=lat_headers, tablefmt="github"))
    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, f"s3_clients{'_tls' if args.tls else ''}_cpu.json")
    with open(out, "w") as f:
        json.dump(
            {
                "machine": info,
                "args": {**vars(args), "out_dir": os.path.relpath(args.out_dir, REPO_ROOT)},
                "size_bytes": size,
                "range_bytes": RANGE_SIZE,
                "part_bytes": PART_SIZE,
                "parts_in_flight": PARTS_IN_FLIGHT,
                "times_s": {f"{c}|{n}": ts for (c, n), ts in times.items()},
                "latency_s": latencies,
                "table": {"headers": headers, "rows": rows},
                "latency_table": {"headers": lat_headers, "rows": lat_rows},
            },
            f,
            indent=1,
        )
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
