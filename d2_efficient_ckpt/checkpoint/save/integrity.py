"""Integrity records: a JSON sidecar with the size and xxh3-64 hash of a checkpoint file.

``model_0000009.pth`` gets ``model_0000009.pth.integrity.json``. The hash is computed while
the file is written (no second pass), and checked afterwards by reading the file back.
xxh3-64 runs at about 25 GB/s on one core here, against 1.8 GB/s for SHA-256 and 0.9 GB/s
for BLAKE2b, so a full check of a 333 MB R50-FPN training checkpoint costs about 15 ms of
hashing on top of the read.

Right after a save, the file's pages are still in the page cache: a plain read-back would
compare the hash with the very copy in memory the write just made, and could not see what
the disk holds. The check after a save therefore reads with ``O_DIRECT`` (``direct=True``),
from the device into one aligned buffer: it sees the bytes on disk, costs the CPU only the
hash (the device copies by DMA), and leaves the page cache alone. Where ``O_DIRECT`` is not
available (tmpfs, macOS, Windows) it falls back to ordinary reads.

Two levels of checking:
    * :func:`check_cheap`: the record exists, parses and names the file's current size.
      Catches truncated and half-written files without reading them; used on resume.
    * :func:`check_full`: the cheap check plus the hash of every byte. Catches flipped bits;
      used after every save (``CHECKPOINT.SAVE.VERIFY``) and by ``verify``.
"""

import errno
import json
import mmap
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import BinaryIO, List, Optional, Tuple

import xxhash

from ..errors import CheckpointFormatError
from ..storage.atomic import NotRegularFileError
from ..storage.registry import is_remote, open_bytes, store_for

__all__ = [
    "HASH_NAME",
    "RECORD_SUFFIX",
    "IntegrityError",
    "IntegrityRecord",
    "HashingWriter",
    "record_path",
    "write_record",
    "read_record",
    "hash_file",
    "hash_with_source",
    "READ_DEVICE",
    "READ_PAGE_CACHE",
    "READ_STORE",
    "check_cheap",
    "check_full",
    "compare_with",
]

HASH_NAME = "xxh3_64"
RECORD_SUFFIX = ".integrity.json"
# A record is a few hundred bytes; anything much longer is not one.
_RECORD_LIMIT = 64 << 10
_BLOCK = 8 << 20


class IntegrityError(CheckpointFormatError):
    """A checkpoint does not match its integrity record (or the record is unusable)."""

    def __init__(self, path: str, problem: str):
        super().__init__(
            path,
            problem,
            "The file is corrupt or incomplete: resume from an earlier checkpoint (--resume does "
            "this by itself), or check it with `python -m d2_efficient_ckpt verify`.",
        )
        self.problem = problem


@dataclass
class IntegrityRecord:
    """What a complete checkpoint file looks like.

    Attributes:
        file: the checkpoint's base name (the record sits next to it).
        size: its size in bytes.
        hash: hex digest of every byte, by ``algorithm``.
        algorithm: the hash function (``xxh3_64``).
        iteration: the training iteration stored in the checkpoint, -1 if none.
        created: seconds since the epoch when the write finished.
        run: identity of the training run that wrote it ("" if unknown): a resume falls back
            only to files of its own run, and retention deletes only those.
    """

    file: str
    size: int
    hash: str
    algorithm: str = HASH_NAME
    iteration: int = -1
    created: float = 0.0
    run: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode("utf-8")


class HashingWriter:
    """A write-only file object that hashes and counts every byte on its way to ``f``.

    Attributes:
        size: bytes written.
        error: the first ``OSError`` of the underlying file (full disk, ...), if any.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self._hash = xxhash.xxh3_64()
        self.size = 0
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        self._hash.update(data)
        try:
            n = self._f.write(data)
        except OSError as e:
            # torch's zip writer turns this into an unrelated RuntimeError; keep the cause.
            self.error = e
            raise
        self.size += memoryview(data).nbytes
        return n

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def record_path(path: str) -> str:
    """The sidecar of ``path``."""
    return path + RECORD_SUFFIX


def write_record(path: str, record: IntegrityRecord) -> None:
    """Write the sidecar of ``path`` atomically."""
    record.created = record.created or time.time()
    store_for(path).write_bytes(record_path(path), record.to_json())


def read_record(path: str) -> Optional[IntegrityRecord]:
    """The record of ``path``, or None when there is no sidecar.

    The sidecar is read without blocking (a FIFO under its name is refused), and must name
    ``path`` itself: a record copied from another checkpoint describes that one.

    Raises:
        IntegrityError: the sidecar exists but cannot be read or parsed, or it is the record
            of another file.
    """
    side = record_path(path)
    try:
        raw = json.loads(store_for(side).read_small(side, _RECORD_LIMIT).decode("utf-8"))
        record = IntegrityRecord(
            file=_text(raw["file"]),
            size=_natural(raw["size"], "size"),
            hash=_text(raw["hash"]),
            algorithm=_text(raw.get("algorithm", HASH_NAME)),
            iteration=_natural(raw.get("iteration", -1), "iteration", least=-1),
            created=_seconds(raw.get("created", 0.0)),
            run=_text(raw.get("run", "")),
        )
    except FileNotFoundError:
        return None
    except NotRegularFileError as e:
        raise IntegrityError(path, f"its integrity record {side} is {e.strerror}.") from e
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
        raise IntegrityError(path, f"its integrity record {side} is unreadable ({e}).") from e
    if record.file != os.path.basename(path):
        raise IntegrityError(
            path,
            f"its integrity record {side} is the record of another file ('{record.file}'), "
            "so it says nothing about this one.",
        )
    return record


def _text(value: object) -> str:
    if type(value) is not str or len(value) > 4096:
        raise ValueError("a field that should be a short string is not one")
    return value


def _natural(value: object, name: str, least: int = 0) -> int:
    # Every number of a record is checked before any arithmetic: JSON allows integers of any
    # length and Infinity, which int() and float() turn into errors of their own.
    if type(value) is not int or not least <= value < 1 << 63:
        raise ValueError(f"'{name}' is not an integer from {least} to 2**63")
    return value


def _seconds(value: object) -> float:
    if type(value) not in (int, float) or not 0 <= value < 1e12:  # type: ignore[operator]
        raise ValueError("'created' is not a time in seconds")
    return float(value)  # type: ignore[arg-type]


def hash_file(path: str, progress=None, *, direct: bool = False) -> str:
    """The xxh3-64 hex digest of the whole file; ``progress`` gets ``update(nbytes)``.

    Args:
        path: the file.
        progress: an object with ``update(nbytes)`` (a tqdm bar), or None.
        direct: read from the device, past the page cache, where the file system allows it
            (``O_DIRECT``); otherwise, or where it does not, ordinary buffered reads.
    """
    return hash_with_source(path, progress, direct=direct)[0]


# Where a check read the bytes it hashed (see ``compare_with``).
READ_DEVICE = "the device"
READ_PAGE_CACHE = "the page cache"
READ_STORE = "the store"


def hash_with_source(path: str, progress=None, *, direct: bool = False) -> Tuple[str, str]:
    """:func:`hash_file`, and where its bytes came from: ``(digest, READ_...)``.

    With ``direct`` on a file system that refuses ``O_DIRECT`` (tmpfs, some network file
    systems), the bytes come from the page cache, and the check says so: it compared the
    record with memory, not with the disk.
    """
    h = xxhash.xxh3_64()
    if is_remote(path):  # an object: concurrent ranged GETs of one version of it
        with open_bytes(path) as source:
            source.advise([(0, source.size)])
            for start in range(0, source.size, _BLOCK):
                block = source.read(start, min(_BLOCK, source.size - start))
                h.update(block)
                if progress is not None:
                    progress.update(len(block))
        return h.hexdigest(), READ_STORE
    if direct:
        digest = _hash_file_direct(path, progress)
        if digest is not None:
            return digest, READ_DEVICE
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            h.update(block)
            if progress is not None:
                progress.update(len(block))
    return h.hexdigest(), READ_PAGE_CACHE


# errno values by which a file system says it does not do O_DIRECT (on open or on read).
_NO_DIRECT_IO = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
# Direct reads in flight while the block before them is hashed. One: on the virtual disk of
# the benchmarks two concurrent 8 MiB reads were slower than one after the other in 4 of 5
# rounds (benchmarks/README.md, "Saves at the disk's speed"); the hash, on another thread,
# still never waits for the device nor the device for the hash.
_DEPTH = 1


def _hash_file_direct(path: str, progress=None) -> Optional[str]:
    """:func:`hash_file` by ``O_DIRECT`` reads; None where the file system does not do them.

    ``_DEPTH`` reads of ``_BLOCK`` bytes are in flight on a helper thread while the block
    before them is hashed here (both release the GIL), so the check takes the device's read
    time, not the read plus the hash.
    """
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError as e:
        if e.errno in _NO_DIRECT_IO:
            return None
        raise
    # Anonymous mappings are page-aligned, as O_DIRECT wants its buffers; every read starts
    # at a multiple of the block size, and only the last one may come back short.
    buffers = [mmap.mmap(-1, _BLOCK) for _ in range(_DEPTH + 1)]
    try:
        return _hash_direct(fd, buffers, progress)
    finally:
        for b in buffers:
            b.close()
        os.close(fd)


def _hash_direct(fd: int, buffers: List[mmap.mmap], progress) -> Optional[str]:
    h = xxhash.xxh3_64()
    size = os.fstat(fd).st_size
    blocks = -(-size // _BLOCK)

    def read(k: int) -> int:
        return os.preadv(fd, [buffers[k % len(buffers)]], k * _BLOCK)

    with ThreadPoolExecutor(_DEPTH, thread_name_prefix="d2ckpt-verify") as pool:
        pending = deque(pool.submit(read, k) for k in range(min(_DEPTH, blocks)))
        for k in range(blocks):
            try:
                n = pending.popleft().result()
            except OSError as e:
                if e.errno in _NO_DIRECT_IO and k == 0:
                    return None  # refused at the first read: no O_DIRECT here
                raise
            if k + _DEPTH < blocks:  # its buffer is neither this one nor one in flight
                pending.append(pool.submit(read, k + _DEPTH))
            with memoryview(buffers[k % len(buffers)]) as view:
                h.update(view[:n])
            if progress is not None:
                progress.update(n)
            if n < min(_BLOCK, size - k * _BLOCK):
                break  # the file got shorter: the digest will not match
    return h.hexdigest()


def _size_of(path: str) -> int:
    """The size of a regular file or an object; IntegrityError if there is none."""
    if is_remote(path):
        try:
            return store_for(path).info(path).size
        except FileNotFoundError:
            raise IntegrityError(path, "the object does not exist.") from None
    if not os.path.isfile(path):
        there = os.path.lexists(path)
        raise IntegrityError(
            path, "it is not a regular file." if there else "the file does not exist."
        )
    return os.path.getsize(path)


def check_cheap(path: str, *, require_record: bool = True) -> Optional[IntegrityRecord]:
    """Check that ``path`` exists with the size its record names; return the record.

    Args:
        path: the checkpoint file.
        require_record: a missing sidecar is an error (else it returns None).

    Raises:
        IntegrityError: missing file, missing or unreadable record, or another size.
    """
    size = _size_of(path)
    record = read_record(path)
    if record is None:
        if require_record:
            raise IntegrityError(path, f"it has no integrity record ({record_path(path)}).")
        return None
    if size != record.size:
        kind = "truncated" if size < record.size else "longer than written"
        raise IntegrityError(
            path, f"it is {kind}: {size} bytes on disk, {record.size} bytes were written."
        )
    return record


def check_full(path: str, *, require_record: bool = True, progress=None, direct: bool = False):
    """:func:`check_cheap`, then the hash of every byte against the record.

    With ``direct`` the bytes are read from the device (see :func:`hash_file`): the check
    after a save uses it, so that it compares the record with the disk, not with the page
    cache the write has just filled.

    Raises:
        IntegrityError: as :func:`check_cheap`, or the content changed (flipped bytes).
    """
    record = check_cheap(path, require_record=require_record)
    if record is None:
        return None
    if record.algorithm != HASH_NAME:
        raise IntegrityError(path, f"its record uses the unknown hash '{record.algorithm}'.")
    compare_with(path, record.size, record.hash, progress=progress, direct=direct)
    return record


def compare_with(
    path: str,
    size: int,
    digest: str,
    *,
    direct: bool = False,
    progress=None,
    name: Optional[str] = None,
) -> str:
    """Read ``path`` whole and check it has ``size`` bytes hashing to ``digest``; return where
    the bytes were read from (``READ_DEVICE``, ``READ_PAGE_CACHE`` or ``READ_STORE``).

    Args:
        path: the file to read (a checkpoint, or the temporary file of one being saved).
        size, digest: what was written.
        direct: read from the device, past the page cache (see :func:`hash_file`).
        progress: as in :func:`hash_file`.
        name: the checkpoint to name in the error, if not ``path``.

    Raises:
        IntegrityError: the size or the content differ.
        OSError: the file cannot be read.
    """
    name = name or path
    actual = store_for(path).info(path).size if is_remote(path) else os.path.getsize(path)
    if actual != size:
        raise IntegrityError(name, f"it is {actual} bytes on disk, {size} bytes were written.")
    found, source = hash_with_source(path, progress, direct=direct)
    if found != digest:
        raise IntegrityError(
            name,
            f"its content changed after it was written: {HASH_NAME} is {found}, the record "
            f"says {digest} (flipped or overwritten bytes).",
        )
    return source
