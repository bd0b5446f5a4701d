"""Read torch's zip checkpoint format (``torch.save`` since 1.6) with the safe unpickler.

The archive's records are checked before anything is built: stored (not compressed), one
record per name, local headers that agree with the central directory, records inside the
file and not overlapping. ``data.pkl`` must match its CRC-32. The pickle then runs on
:mod:`.safe_pickle` with its torch and numpy allowlists.

Tensors view one private mapping of the file (as ``torch.load(mmap=True)`` does), so a load
reads only the storages it uses. Nothing in this package copies from that mapping: data is
read with ``pread`` calls that check their length (:class:`~..storage.mapped.FileReader`), so a
file that shrinks during a load ends in an error, not in ``SIGBUS``.
"""

import os
import struct
import sys
import zipfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import CheckpointFormatError
from ..storage.mapped import FileIdentity, MappedFile, open_exact, read_exact
from .safe_pickle import MalformedPickle, UnsafeGlobal, pickle_error, unpickle
from .safe_pickle.allowlist import StorageRef, Token, itemsize, numpy_globals, torch_globals

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


def is_complete_zip(path: str) -> bool:
    """Whether a file that starts like a zip archive has its central directory (at its end:
    a truncated archive has none).

    Raises:
        OSError: the file cannot be read.
    """
    try:
        with os.fdopen(open_exact(path), "rb") as f:  # never a FIFO swapped in since
            return zipfile.is_zipfile(f)
    except zipfile.BadZipFile:  # raised for some damaged end records (e.g. "multi-disk")
        return False


def _records(path: str, fd: int, size: int) -> Tuple[str, Records]:
    """``(prefix, {name: (data offset, size, crc)})`` of the archive, all checked."""
    try:
        with open(fd, "rb", closefd=False) as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointFormatError(
            path,
            f"the torch zip archive is truncated or corrupt ({e}).",
            "The save was probably interrupted; load an earlier checkpoint.",
        ) from None
    if hasattr(os, "posix_fadvise"):
        # The headers are announced together, so that a cold file costs one batch of reads
        # instead of one round trip per record (``fd`` reads exactly, see ``open_exact``).
        for info in infos:
            os.posix_fadvise(
                fd, info.header_offset, 30 + len(info.filename) + 64, os.POSIX_FADV_WILLNEED
            )
    records: Records = {}
    spans = []
    for info in infos:
        name = info.filename
        if name in records:
            raise CheckpointFormatError(
                path, f"the archive holds the record '{name}' twice.", "The file is corrupt."
            )
        start = _record_start(path, fd, size, info)
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


def _record_start(path: str, fd: int, size: int, info: zipfile.ZipInfo) -> int:
    """Where the bytes of one record start, after checking it against its local header."""
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
    encoded = name.encode("utf-8", "surrogateescape")
    head = read_exact(fd, info.header_offset, 30 + len(encoded), path)
    magic, name_len, extra_len = _LOCAL_HEADER.unpack_from(head)
    if magic != MAGIC or name_len != len(encoded) or head[30:] != encoded:
        raise CheckpointFormatError(
            path, f"record '{name}' has a damaged local header.", "The file is corrupt."
        )
    start = info.header_offset + 30 + name_len + extra_len
    if info.file_size != info.compress_size or start + info.file_size > size:
        raise CheckpointFormatError(
            path,
            f"record '{name}' runs past the end of the file.",
            "The file is truncated; load an earlier checkpoint.",
        )
    return start


def corrupt_records(path: str) -> List[str]:
    """Names of the archive's records whose bytes fail their CRC-32 (read in 8 MiB pieces).

    Raises:
        CheckpointFormatError: the archive itself is damaged (see :func:`load_torch_zip`).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        _, records = _records(path, fd, FileIdentity.of_fd(fd).size)
        bad = []
        for name, (start, size, crc) in records.items():
            value = 0
            for offset in range(start, start + size, 8 << 20):
                value = zlib.crc32(
                    read_exact(fd, offset, min(8 << 20, start + size - offset), path), value
                )
            if value != crc:
                bad.append(name)
        return bad
    finally:
        os.close(fd)


def load_torch_zip(path: str, *, mmap: bool = True) -> Tuple[Any, MappedFile]:
    """Unpickle a torch zip checkpoint safely.

    Args:
        path: a local file.
        mmap: tensors view a private mapping of the file (read when used); ``False`` reads
            every storage into fresh memory now.

    Returns:
        The unpickled object and the :class:`MappedFile` its tensors view.

    Raises:
        CheckpointFormatError: a damaged archive or pickle, or one that is not data.
        UnsafeCheckpointError: the pickle names a global outside the allowlist.
    """
    fd = open_exact(path)
    try:
        identity = FileIdentity.of_fd(fd)
        prefix, records = _records(path, fd, identity.size)
        _check_byteorder(path, fd, records.get(prefix + "byteorder"))
        start, nbytes, crc = records[prefix + "data.pkl"]
        pkl = read_exact(fd, start, nbytes, path)
        if zlib.crc32(pkl) != crc:
            raise CheckpointFormatError(
                path, "its data.pkl record fails its CRC check.", "The file is corrupt."
            )
        whole: Optional[torch.UntypedStorage] = None
        if mmap:
            # torch's stubs type from_file as the storage base class's; it is untyped here.
            storage: torch.UntypedStorage = torch.UntypedStorage.from_file(  # type: ignore[assignment]
                path, shared=False, nbytes=identity.size
            )
            whole = storage
            mapped = MappedFile(path, storage.data_ptr(), identity.size, identity)
            mapped.check_unchanged()  # the mapping must not extend past the file's end
        else:
            mapped = MappedFile(path, 0, 0, identity)
        storages = _Storages(path, fd, prefix, records, whole, identity.size)
        try:
            obj, _ = unpickle(pkl, find_global=find_global, persistent_load=storages.load)
        except (MalformedPickle, UnsafeGlobal) as e:
            raise pickle_error(path, e) from None
        return obj, mapped
    finally:
        os.close(fd)


def _check_byteorder(path: str, fd: int, record: Optional[Tuple[int, int, int]]) -> None:
    if record is None:
        return
    text = read_exact(fd, record[0], record[1], path)
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
        path: str,
        fd: int,
        prefix: str,
        records: Records,
        whole: Optional[torch.UntypedStorage],
        file_size: int,
    ):
        self.path, self.fd, self.prefix, self.records = path, fd, prefix, records
        self.whole, self.file_size = whole, file_size
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
            read_exact(self.fd, start, size, self.path, into=storage)
        return storage.untyped_storage()
