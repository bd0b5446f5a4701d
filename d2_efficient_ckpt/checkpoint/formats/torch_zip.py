"""Read torch's zip checkpoint format (``torch.save`` since 1.6) with the safe unpickler.

The archive's records are checked before anything is built: stored (not compressed), one
record per name, local headers that agree with the central directory, records inside the
file and not overlapping. ``data.pkl`` must match its CRC-32. The pickle then runs on
:mod:`.safe_pickle` with its torch and numpy allowlists.

Tensors view one private mapping of the file (as ``torch.load(mmap=True)`` does), so a load
reads only the storages it uses. Nothing in this package copies from that mapping: data is
read with ``pread`` calls that check their length (:class:`~..storage.mapped.FileReader`), so a
file that shrinks during a load ends in an error, not in ``SIGBUS``.

The archive is read through a :class:`~..storage.source.ByteSource`. On a remote store a
round trip per record header would cost more than the weights, so there each record's start
is taken from the layout the central directory gives (records follow each other), and its
local header is checked, as locally, before any byte of its data is used
(:meth:`~..storage.source.ByteSource.add_check`): a load reads only the headers of the
records it uses, fetched together with their data.
"""

import struct
import sys
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..errors import CheckpointFormatError
from ..storage.mapped import MappedFile
from ..storage.registry import open_bytes
from ..storage.source import ByteSource
from .safe_pickle import MalformedPickle, UnsafeGlobal, pickle_error, unpickle
from .safe_pickle.allowlist import StorageRef, Token, itemsize, numpy_globals, torch_globals
from .torch_zip_writer import descriptor_size

__all__ = ["MAGIC", "load_torch_zip", "find_global", "corrupt_records", "is_complete_zip"]

MAGIC = b"PK\x03\x04"  # the first bytes of a zip archive (its first local header)
_GLOBALS = {**numpy_globals(), **torch_globals()}
_LOCAL_HEADER = struct.Struct("<4s22xHH")
# (data offset, size, CRC-32) of each record, by name.
Records = Dict[str, Tuple[int, int, int]]


def find_global(module: str, name: str) -> Any:
    """The allowlisted object for a global of a torch or numpy pickle."""
    try:
        return _GLOBALS[(module, name)]
    except KeyError:
        raise UnsafeGlobal(f"{module}.{name}") from None


def is_complete_zip(source: ByteSource) -> bool:
    """Whether bytes that start like a zip archive have its central directory (at their
    end: a truncated archive has none).

    Raises:
        OSError: the bytes cannot be read.
    """
    try:
        return zipfile.is_zipfile(source.fileobj())
    except (zipfile.BadZipFile, CheckpointFormatError):  # e.g. a "multi-disk" end record
        return False


def _records(source: ByteSource) -> Tuple[str, Records]:
    """``(prefix, {name: (data offset, size, crc)})`` of the archive, all checked."""
    path = source.name
    if source.remote:
        # Its end holds the central directory, its start data.pkl: two concurrent fetches.
        edge = min(source.size, 256 << 10)
        source.advise([(0, edge), (source.size - edge, edge)])
    try:
        with zipfile.ZipFile(source.fileobj()) as zf:
            infos = zf.infolist()
            directory = zf.start_dir
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointFormatError(
            path,
            f"the torch zip archive is truncated or corrupt ({e}).",
            "The save was probably interrupted; load an earlier checkpoint.",
        ) from None
    for info in infos:
        _check_record(path, source.size, info)
    if source.remote:
        starts = _starts_from_layout(source, infos, directory)
    else:
        starts = _starts_from_headers(source, infos, directory)
    records: Records = {}
    spans = []
    for info, start in zip(infos, starts):
        name = info.filename
        if name in records:
            raise CheckpointFormatError(
                path, f"the archive holds the record '{name}' twice.", "The file is corrupt."
            )
        if start + info.file_size > source.size:
            raise CheckpointFormatError(
                path,
                f"record '{name}' runs past the end of the file.",
                "The file is truncated; load an earlier checkpoint.",
            )
        records[name] = (start, info.file_size, info.CRC)
        spans.append((info.header_offset, start + info.file_size, name))
    spans.sort()
    for (_, end, name), (nxt, _, other) in zip(spans, spans[1:]):
        if nxt < end:
            raise CheckpointFormatError(
                path, f"records '{name}' and '{other}' overlap.", "The file is corrupt."
            )
    pickles = [n for n in records if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointFormatError(
            path, "the archive does not hold exactly one data.pkl record.", "The file is corrupt."
        )
    return pickles[0][: -len("data.pkl")], records


def _check_record(path: str, size: int, info: zipfile.ZipInfo) -> None:
    """What the central directory says of one record, checked before any of it is read."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise CheckpointFormatError(
            path,
            f"record '{name}' is compressed or encrypted; torch.save never writes such records.",
            "Re-save the checkpoint with torch.save.",
        )
    if not 0 <= info.header_offset < size:
        raise CheckpointFormatError(
            path, f"record '{name}' starts outside the file.", "The file is corrupt."
        )
    if info.file_size != info.compress_size:
        raise CheckpointFormatError(path, f"record '{name}' has two sizes.", "The file is corrupt.")


def _header_check(path: str, info: zipfile.ZipInfo, start: int):
    """A check of a record's local header bytes ``[header_offset, start)``."""
    name = info.filename
    encoded = name.encode("utf-8", "surrogateescape")

    def check(head: bytes) -> None:
        if len(head) < 30:
            raise _damaged_header(path, name)
        magic, name_len, extra_len = _LOCAL_HEADER.unpack_from(head)
        if (
            magic != MAGIC
            or name_len != len(encoded)
            or head[30 : 30 + name_len] != encoded
            or info.header_offset + 30 + name_len + extra_len != start
        ):
            raise _damaged_header(path, name)

    return check


def _damaged_header(path: str, name: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        path, f"record '{name}' has a damaged local header.", "The file is corrupt."
    )


def _record_start(source: ByteSource, info: zipfile.ZipInfo) -> int:
    """Where the bytes of one record start, after checking it against its local header."""
    encoded = info.filename.encode("utf-8", "surrogateescape")
    head = source.read(info.header_offset, 30 + len(encoded))
    _, name_len, extra_len = _LOCAL_HEADER.unpack_from(head)
    start = info.header_offset + 30 + name_len + extra_len
    _header_check(source.name, info, start)(head)
    return start


def _descriptor_size(info: zipfile.ZipInfo) -> int:
    """Bytes of the data descriptor after a record's data, as torch's writer puts them.

    With flag bit 3 (torch sets it on every record) a descriptor follows the data: its
    signature, the CRC-32 and two sizes, of 4 bytes each or of 8 in a zip64 record. A
    writer that leaves the signature out fails the local header check, by name.
    """
    return descriptor_size(info.flag_bits, info.file_size, info.header_offset)


def _starts_from_headers(
    source: ByteSource, infos: List[zipfile.ZipInfo], directory: int
) -> List[int]:
    """Each record's data start from its local header, checked against the layout."""
    # The headers are announced together, so that a cold file costs one batch of reads
    # instead of one round trip per record (the source reads exactly, see open_exact).
    source.advise([(i.header_offset, 30 + len(i.filename) + 64) for i in infos])
    starts = [_record_start(source, info) for info in infos]
    # The one layout rule of both readers: a local header whose length disagrees with where
    # the records lie would shift the bytes read as a tensor.
    for info, start, expected in zip(infos, starts, _layout_starts(source.name, infos, directory)):
        if start != expected:
            raise _damaged_header(source.name, info.filename)
    return starts


def _layout_starts(path: str, infos: List[zipfile.ZipInfo], directory: int) -> List[int]:
    """Each record's data start as the layout gives it: records follow each other, so one
    ends (with its data descriptor) where the next record, or the directory, begins."""
    order = sorted(range(len(infos)), key=lambda i: infos[i].header_offset)
    starts = [0] * len(infos)
    for k, i in enumerate(order):
        info = infos[i]
        end = infos[order[k + 1]].header_offset if k + 1 < len(order) else directory
        start = end - info.file_size - _descriptor_size(info)
        if start < info.header_offset + 30 + len(info.filename.encode("utf-8", "surrogateescape")):
            raise _damaged_header(path, info.filename)
        starts[i] = start
    return starts


def _starts_from_layout(
    source: ByteSource, infos: List[zipfile.ZipInfo], directory: int
) -> List[int]:
    """:func:`_layout_starts`, each checked against its record's local header before any of
    its data is read (see :meth:`~..storage.source.ByteSource.add_check`)."""
    starts = _layout_starts(source.name, infos, directory)
    for info, start in zip(infos, starts):
        check = _header_check(source.name, info, start)
        source.add_check(info.header_offset, start, start + info.file_size, check)
    return starts


def corrupt_records(path: str) -> List[str]:
    """Names of the archive's records whose bytes fail their CRC-32 (read in 8 MiB pieces).

    Raises:
        CheckpointFormatError: the archive itself is damaged (see :func:`load_torch_zip`).
    """
    with _opened(path) as source:
        _, records = _records(source)
        bad = []
        for name, (start, size, crc) in records.items():
            value = 0
            for offset in range(start, start + size, 8 << 20):
                value = zlib.crc32(source.read(offset, min(8 << 20, start + size - offset)), value)
            if value != crc:
                bad.append(name)
        return bad


def _opened(path: str) -> ByteSource:
    try:
        return open_bytes(path)
    except OSError as e:
        raise CheckpointFormatError(path, f"it cannot be read ({e.strerror or e}).") from None


def load_torch_zip(where: Union[str, ByteSource], *, mmap: bool = True) -> Tuple[Any, MappedFile]:
    """Unpickle a torch zip checkpoint safely.

    Args:
        where: a path or URL, or an open source. It is closed at the end (its descriptor
            released); the mapping's readers reopen it.
        mmap: tensors view the source's address space (read when used); ``False`` reads
            every storage into fresh memory now.

    Returns:
        The unpickled object and the :class:`MappedFile` its tensors view.

    Raises:
        CheckpointFormatError: a damaged archive or pickle, or one that is not data.
        UnsafeCheckpointError: the pickle names a global outside the allowlist.
    """
    source = _opened(where) if isinstance(where, str) else where
    path = source.name
    try:
        prefix, records = _records(source)
        _check_byteorder(source, records.get(prefix + "byteorder"))
        start, nbytes, crc = records[prefix + "data.pkl"]
        pkl = source.read(start, nbytes)
        if zlib.crc32(pkl) != crc:
            raise CheckpointFormatError(
                path, "its data.pkl record fails its CRC check.", "The file is corrupt."
            )
        whole: Optional[torch.UntypedStorage] = None
        if mmap:
            whole = source.address_space()
            mapped = MappedFile(source, whole.data_ptr(), source.size)
        else:
            mapped = MappedFile(source, 0, 0)
        storages = _Storages(source, prefix, records, whole)
        try:
            obj, _ = unpickle(pkl, find_global=find_global, persistent_load=storages.load)
        except (MalformedPickle, UnsafeGlobal) as e:
            raise pickle_error(path, e) from None
        return obj, mapped
    finally:
        source.close()  # a closed source still reopens for the reads of its tensors


def _check_byteorder(source: ByteSource, record: Optional[Tuple[int, int, int]]) -> None:
    path = source.name
    if record is None:
        return
    text = source.read(record[0], record[1])
    if text not in (b"little", b"big"):
        raise CheckpointFormatError(path, "its byteorder record is damaged.")
    if text.decode() != sys.byteorder:
        raise CheckpointFormatError(
            path,
            f"it was saved on a {text.decode()}-endian machine.",
            "Load it with torch.load on a trusted machine and save it again here.",
        )


class _Storages:
    """The pickle's ``persistent_load``: each storage id to its record, checked, once."""

    def __init__(
        self,
        source: ByteSource,
        prefix: str,
        records: Records,
        whole: Optional[torch.UntypedStorage],
    ):
        self.source, self.prefix, self.records = source, prefix, records
        self.whole, self.file_size = whole, source.size
        self.refs: Dict[str, StorageRef] = {}

    def load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise MalformedPickle(f"unknown persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if not (isinstance(kind, Token) and isinstance(kind.value, torch.dtype)):
            raise MalformedPickle("a storage of an unknown type")
        if not (isinstance(key, str) and type(numel) is int and numel >= 0):
            raise MalformedPickle("a storage id that is not a name and a size")
        ref = self.refs.get(key)
        if ref is not None:
            if ref.dtype != kind.value:
                raise MalformedPickle(f"storage '{key}' is used with two dtypes")
            return ref
        record = self.records.get(f"{self.prefix}data/{key}")
        if record is None:
            raise MalformedPickle(f"storage '{key}' has no record in the archive")
        rstart, rsize, _ = record
        if numel * itemsize(kind.value) != rsize:
            raise MalformedPickle(f"storage '{key}' has {rsize} bytes, not {numel} elements")
        ref = StorageRef(key, self._storage(rstart, rsize), kind.value, self.file_size)
        self.refs[key] = ref
        return ref

    def _storage(self, start: int, size: int) -> torch.UntypedStorage:
        if self.whole is not None:
            return self.whole[start : start + size]
        storage = torch.empty(size, dtype=torch.uint8)
        if size:
            self.source.read_into(start, size, storage)
        return storage.untyped_storage()
