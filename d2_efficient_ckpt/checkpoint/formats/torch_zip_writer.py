"""Write torch's zip checkpoint format (what ``torch.save`` writes) in one pass over memory.

``torch.save`` pickles the object, then hands every storage to its zip writer, which computes
the record's CRC-32 with a byte-at-a-time table and calls the file object's ``write`` from C++.
Saving a 333 MB training state that way spends more time in the CRC than the disk needs to
write it. This writer produces the same archive:

    * the same records in the same order (``data.pkl``, ``.format_version``,
      ``.storage_alignment``, ``byteorder``, ``data/<key>`` for each storage in the order the
      pickle meets them, ``version``, ``.data/serialization_id``) under the prefix
      ``archive/``, as ``torch.save`` uses for a file object;
    * the same pickle, byte for byte: protocol 2, storages as persistent ids
      ``("storage", <Type>Storage, key, location, numel)``, keys numbered in the order the
      storages are first met, storages shared by several tensors written once;
    * stored (uncompressed) records whose data starts at a multiple of 64 bytes, padded by an
      ``FB`` extra field; the CRC-32 and sizes in a data descriptor after each record; a
      central directory and zip64 end records, with zip64 fields wherever a size or an offset
      does not fit in 32 bits.

Each storage goes to the file object in chunks of 1 MiB, straight from the tensor's memory:
the CRC-32 (ISA-L's, about 20 GB/s, through ``isal``; zlib's where it is not installed) and the
caller's hash (``HashingWriter`` in ``save/integrity.py``) read a chunk while it is in the CPU's
cache, and the same ``memoryview`` is written. Nothing is copied through Python objects.

Only the serialization id differs from a ``torch.save`` of the same object: torch derives
its from a process-wide counter as well, ours only from the records (their names, sizes and
CRC-32s), so that the same state always makes the same file.
"""

import hashlib
import io
import pickle
import struct
import sys
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

import torch
from torch.serialization import location_tag

try:  # ISA-L's CRC-32 with carry-less multiplication; zlib's is 8x slower here
    from isal.isal_zlib import crc32 as _crc32

    CRC32_IMPLEMENTATION = "isal"
except ImportError:  # pragma: no cover (isal is a dependency; kept for odd platforms)
    from zlib import crc32 as _crc32

    CRC32_IMPLEMENTATION = "zlib"

__all__ = [
    "ARCHIVE",
    "ALIGNMENT",
    "CRC32_IMPLEMENTATION",
    "crc32",
    "descriptor_size",
    "is_zip64",
    "write_torch_zip",
]

ARCHIVE = "archive"  # torch.save's record prefix when it writes to a file object
ALIGNMENT = 64  # where torch.save starts a record's data (``.storage_alignment``)
PICKLE_PROTOCOL = 2  # torch.save's default
CHUNK = 1 << 20  # bytes per write: hashed and CRC'd while in the CPU's cache
# Sizes and offsets from this one on need zip64 fields (a module constant, so that tests can
# lower it and check the zip64 layout without writing 4 GiB).
ZIP64_LIMIT = 0xFFFFFFFF

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, without name and extra
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header
_DESCRIPTOR = struct.Struct("<IIII")  # signature, CRC-32, compressed and stored size
_DESCRIPTOR64 = struct.Struct("<IIQQ")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")
_UTF8 = 0x0800  # general purpose flag: the name is UTF-8
_DESCRIPTOR_FOLLOWS = 0x0008  # general purpose flag: CRC and sizes follow the data
_ZIP64_VERSION = 45
_MAX32 = 0xFFFFFFFF  # a 32-bit field that says "see the zip64 field"


def is_zip64(size: int, offset: int) -> bool:
    """Whether a record of ``size`` bytes whose header is at ``offset`` is written with zip64
    fields and a data descriptor of 8-byte sizes (24 bytes, not 16): torch's writer's rule,
    which readers that find the records from the layout (``torch_zip``) must follow."""
    return size >= ZIP64_LIMIT or offset >= ZIP64_LIMIT


def descriptor_size(flag_bits: int, size: int, offset: int) -> int:
    """Bytes of the data descriptor after a record's data (0 without flag bit 3)."""
    if not flag_bits & _DESCRIPTOR_FOLLOWS:
        return 0
    return _DESCRIPTOR64.size if is_zip64(size, offset) else _DESCRIPTOR.size


def _narrow(value: int) -> int:
    """A 32-bit field's value: itself, or the marker where a zip64 field holds it."""
    return _MAX32 if value >= ZIP64_LIMIT else value


def crc32(data, value: int = 0) -> int:
    """CRC-32 of ``data`` (any buffer), continuing from ``value``: zlib's, accelerated."""
    return _crc32(data, value)


class _Pickler(pickle.Pickler):
    """The pickle of ``torch.save``: storages become persistent ids, numbered as met."""

    def __init__(self, f: BinaryIO):
        super().__init__(f, protocol=PICKLE_PROTOCOL)
        self.storages: Dict[str, torch.UntypedStorage] = {}
        self._keys: Dict[int, str] = {}
        self._dtypes: Dict[int, torch.dtype] = {}

    def persistent_id(self, obj: Any) -> Optional[Tuple[Any, ...]]:
        if isinstance(obj, torch.storage.TypedStorage):
            storage = obj.untyped()
            dtype = obj.dtype
            kind = getattr(torch, obj.pickle_storage_type())
            numel = obj.size()
        elif isinstance(obj, torch.UntypedStorage):
            storage, dtype, kind, numel = obj, torch.uint8, torch.UntypedStorage, obj.nbytes()
        else:
            return None
        if storage.device.type != "meta" and storage.data_ptr() != 0:
            # torch.load cannot give one storage two dtypes; torch.save refuses them too.
            if self._dtypes.setdefault(storage.data_ptr(), dtype) != dtype:
                raise RuntimeError(
                    "Cannot save multiple tensors or storages that view the same data as "
                    "different types"
                )
        key = self._keys.setdefault(storage._cdata, str(len(self._keys)))
        self.storages[key] = storage
        return ("storage", kind, key, location_tag(storage), numel)


class _ZipWriter:
    """Stored records with aligned data, each followed by its data descriptor."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._pos = 0
        # (name, header offset, CRC-32, size) of each record written.
        self._records: List[Tuple[bytes, int, int, int]] = []

    def _emit(self, data) -> None:
        self._f.write(data)
        self._pos += memoryview(data).nbytes

    def record(self, name: str, data) -> None:
        """Write one record whose content is the buffer ``data`` (a ``memoryview``)."""
        view = memoryview(data).cast("B")
        size = view.nbytes
        raw = f"{ARCHIVE}/{name}".encode("utf-8")
        offset = self._pos
        big = is_zip64(size, offset)
        # A zip64 record says so in its local header (its sizes are in the data descriptor,
        # which then has 8-byte sizes).
        zip64 = struct.pack("<HHQQ", 1, 16, 0, 0) if big else b""
        pad = -(offset + _LOCAL.size + len(raw) + len(zip64) + 4) % ALIGNMENT
        extra = zip64 + struct.pack("<2sH", b"FB", pad) + b"Z" * pad
        flags = _UTF8 | (_DESCRIPTOR_FOLLOWS if size else 0)
        version = _ZIP64_VERSION if big else 0
        sizes = _MAX32 if big else 0  # where the zip64 field holds them, as the format says
        header = _LOCAL.pack(
            0x04034B50, version, flags, 0, 0, 0, 0, sizes, sizes, len(raw), len(extra)
        )
        self._emit(header + raw + extra)
        crc = 0
        for start in range(0, size, CHUNK):
            chunk = view[start : start + CHUNK]
            crc = _crc32(chunk, crc)
            self._emit(chunk)
        if size:
            if big:
                self._emit(_DESCRIPTOR64.pack(0x08074B50, crc, size, size))
            else:
                self._emit(_DESCRIPTOR.pack(0x08074B50, crc, size, size))
        self._records.append((raw, offset, crc, size))

    def content_id(self) -> bytes:
        """40 digits that depend only on the records written so far (their names, sizes and
        CRC-32s): the same state always makes the same file."""
        h = hashlib.blake2b(digest_size=16)
        for raw, _, crc, size in self._records:
            h.update(struct.pack("<IQH", crc, size, len(raw)) + raw)
        return str(int.from_bytes(h.digest(), "big")).zfill(40).encode()

    def finish(self) -> None:
        """Write the central directory and the end records."""
        start = self._pos
        for raw, offset, crc, size in self._records:
            fields = [v for v in (size, size, offset) if v >= ZIP64_LIMIT]
            extra = (
                struct.pack(f"<HH{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            )
            small = [_narrow(v) for v in (size, size, offset)]
            flags = _UTF8 | (_DESCRIPTOR_FOLLOWS if size else 0)
            version = _ZIP64_VERSION if fields else 0
            self._emit(
                _CENTRAL.pack(
                    0x02014B50,
                    version,
                    version,
                    flags,
                    0,
                    0,
                    0,
                    crc,
                    small[0],
                    small[1],
                    len(raw),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    small[2],
                )  # fmt: skip
                + raw
                + extra
            )
        size = self._pos - start
        count = len(self._records)
        end64 = self._pos
        self._emit(
            _EOCD64.pack(
                0x06064B50,
                _EOCD64.size - 12,
                0x031E,
                _ZIP64_VERSION,
                0,
                0,
                count,
                count,
                size,
                start,
            )  # fmt: skip
        )
        self._emit(_LOCATOR64.pack(0x07064B50, 0, end64, 1))
        small = [_narrow(v) for v in (size, start)]
        entries = min(count, 0xFFFF)  # more: the zip64 end record has the count
        self._emit(_EOCD.pack(0x06054B50, 0, 0, entries, entries, small[0], small[1], 0))


def _bytes_of(storage: torch.UntypedStorage) -> memoryview:
    """The bytes of a storage as a ``memoryview`` of its memory (a copy for device storages)."""
    if storage.device.type != "cpu":
        storage = storage.cpu()
    if storage.nbytes() == 0:
        return memoryview(b"")
    flat = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))
    return flat.numpy().data  # the array's own buffer: no copy


def write_torch_zip(data: Any, f: BinaryIO) -> None:
    """Write ``data`` to the binary file object ``f`` as ``torch.save(data, f)`` does.

    ``f`` gets header bytes and then each storage's memory in chunks of :data:`CHUNK` bytes
    (``memoryview`` objects valid only during the call to ``write``).

    Raises:
        RuntimeError: two tensors view the same memory with different dtypes (as torch).
        pickle.PicklingError, TypeError: ``data`` holds something that cannot be pickled.
    """
    pickled = io.BytesIO()
    pickler = _Pickler(pickled)
    pickler.dump(data)
    zf = _ZipWriter(f)
    zf.record("data.pkl", pickled.getbuffer())
    zf.record(".format_version", b"1")
    zf.record(".storage_alignment", str(ALIGNMENT).encode())
    zf.record("byteorder", sys.byteorder.encode())
    for key, storage in pickler.storages.items():
        zf.record(f"data/{key}", _bytes_of(storage))
    zf.record("version", b"3\n")
    zf.record(".data/serialization_id", zf.content_id())
    zf.finish()
