"""Read torch's legacy (pre-1.6, non-zip) checkpoint format with the safe unpickler.

The file is five things in a row: three small pickles (a magic number, the protocol
version, the writer's type sizes), the main pickle, whose tensors name storages by key, a
pickle of the storage keys, and then each storage as an 8-byte element count followed by
its bytes. Every storage is allocated only after its size was checked against the file,
and read with exact-length reads.
"""

import os
import struct
from typing import Any, Dict, List, Tuple

import torch

from ..errors import CheckpointFormatError
from ..storage.mapped import FileIdentity, open_exact, read_exact
from .safe_pickle import MalformedPickle, UnsafeGlobal, pickle_error, unpickle
from .safe_pickle.allowlist import StorageRef, Token
from .torch_zip import find_global

__all__ = ["load_torch_legacy", "LEGACY_MAGIC", "HEAD"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# How every legacy file starts: the first pickle, LEGACY_MAGIC in protocol 2.
HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_PROTOCOL_VERSION = 1001


def load_torch_legacy(path: str) -> Any:
    """Unpickle a legacy torch checkpoint into fresh memory.

    Raises:
        CheckpointFormatError: truncated or damaged file, or a pickle that is not data.
        UnsafeCheckpointError: the pickle names a global outside the allowlist.
    """
    fd = open_exact(path)
    try:
        identity = FileIdentity.of_fd(fd)
        data = read_exact(fd, 0, identity.size, path)
    finally:
        os.close(fd)
    budget = [identity.size]  # storages may not add up to more bytes than the file has
    pending: Dict[str, Tuple[StorageRef, torch.Tensor]] = {}

    def persistent_load(pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise MalformedPickle(f"unknown persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel, view = pid
        if not (isinstance(kind, Token) and isinstance(kind.value, torch.dtype)):
            raise MalformedPickle("a storage of an unknown type")
        if not (isinstance(key, str) and type(numel) is int and numel >= 0) or view is not None:
            raise MalformedPickle("a storage id that is not a name and a size")
        if key in pending:
            if pending[key][0].dtype != kind.value:
                raise MalformedPickle(f"storage '{key}' is used with two dtypes")
            return pending[key][0]
        nbytes = numel * torch.empty((), dtype=kind.value).element_size()
        budget[0] -= nbytes
        if budget[0] < 0:
            raise MalformedPickle("its storages claim more bytes than the file has")
        buf = torch.empty(nbytes, dtype=torch.uint8)
        ref = StorageRef(key, buf.untyped_storage(), kind.value, identity.size)
        pending[key] = (ref, buf)
        return ref

    try:
        # The header's values are compared only once they are known to be integers: an
        # array there would make == elementwise, and its truth value an error.
        magic, pos = unpickle(data, find_global=find_global, start=0)
        if type(magic) is not int or magic != LEGACY_MAGIC:
            raise MalformedPickle("not a torch legacy file (wrong magic number)")
        version, pos = unpickle(data, find_global=find_global, start=pos)
        if type(version) is not int or version != _PROTOCOL_VERSION:
            raise MalformedPickle(f"unknown legacy protocol version {version!r}")
        info, pos = unpickle(data, find_global=find_global, start=pos)
        if not isinstance(info, dict) or not info.get("little_endian", False):
            raise MalformedPickle("written on a big-endian machine or with unknown type sizes")
        obj, pos = unpickle(
            data, find_global=find_global, persistent_load=persistent_load, start=pos
        )
        keys, pos = unpickle(data, find_global=find_global, start=pos)
    except (MalformedPickle, UnsafeGlobal) as e:
        raise pickle_error(path, e) from None
    _fill_storages(path, data, pos, keys, pending)
    return obj


def _fill_storages(
    path: str, data: bytes, pos: int, keys: List[Any], pending: Dict[str, Any]
) -> None:
    if (
        not isinstance(keys, list)
        or not all(type(k) is str for k in keys)
        or sorted(keys) != sorted(pending)
    ):
        raise CheckpointFormatError(path, "its list of storages does not match its tensors.")
    for key in keys:
        ref, buf = pending[key]
        if pos + 8 > len(data):
            raise _truncated(path)
        (count,) = struct.unpack_from("<q", data, pos)
        pos += 8
        nbytes = buf.numel()
        if count * torch.empty((), dtype=ref.dtype).element_size() != nbytes:
            raise CheckpointFormatError(
                path, f"storage '{key}' has a size that disagrees with its tensors."
            )
        if pos + nbytes > len(data):
            raise _truncated(path)
        if nbytes:
            buf.numpy()[:] = memoryview(data)[pos : pos + nbytes]
        pos += nbytes


def _truncated(path: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        path, "the file is truncated (its storages end early).", "Load an earlier checkpoint."
    )
