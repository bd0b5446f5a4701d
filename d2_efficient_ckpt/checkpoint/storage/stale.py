"""Temporary files of interrupted saves: which are provably dead, and their removal.

A writer holds an exclusive ``flock`` on its temporary file until the file is renamed or
removed (see ``atomic``). The kernel drops the lock when the writer dies, whatever PID
namespace it ran in, so on a local file system a temporary file whose lock can be taken is
dead. Two cases need more:

* a file of size 0 may belong to a writer between creating the file and locking it; it is
  dead only once it is older than :data:`FRESH_S`;
* on shared storage (NFS, SMB, Lustre, FUSE, ...) the lock may be local to each machine, so
  a writer on another machine does not show; there a file is also required to be unmodified
  for ``shared_age_s`` seconds (``CHECKPOINT.SAVE.STALE_TEMP_AGE_S``).

:func:`is_dead` is that decision, a pure function; :func:`remove_stale_temp_files` gathers
the facts and never raises: a file it cannot open or remove (read-only, another user's) is
left where it is, with a warning.
"""

import errno
import fcntl
import logging
import os
import re
import time
from typing import List, Optional

from .atomic import is_temp_file

__all__ = ["FRESH_S", "is_dead", "is_shared_storage", "remove_stale_temp_files"]

logger = logging.getLogger(__name__)

_OCTAL = re.compile(r"\\([0-7]{3})")

# A writer locks its file right after creating it; an empty file younger than this may
# still be in that instant.
FRESH_S = 60.0

# File systems of one machine's own disks or memory: a lock taken there is seen by every
# process of that machine. Anything else is treated as storage other machines may write.
_LOCAL_FS = {
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "overlay", "zfs", "f2fs",
    "jfs", "reiserfs", "vfat", "msdos", "exfat", "ntfs", "ntfs3", "hfs", "hfsplus", "apfs",
    "devtmpfs", "bcachefs", "nilfs2",
}  # fmt: skip


def is_dead(*, lock_free: bool, size: int, age_s: float, shared: bool, shared_age_s: float) -> bool:
    """Whether a temporary file's writer is provably gone.

    Args:
        lock_free: its ``flock`` could be taken (no live writer on this machine holds it).
        size: its size in bytes.
        age_s: seconds since it was last modified.
        shared: it lies on storage other machines may write (see :func:`is_shared_storage`).
        shared_age_s: on such storage, how long it must be unmodified.
    """
    if not lock_free:
        return False
    if size == 0 and age_s < FRESH_S:
        return False
    return not shared or age_s >= shared_age_s


def _mount_fstype(path: str) -> Optional[str]:
    """The file system type of the mount holding ``path`` (Linux), or None if unknown."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, fstype = -1, None
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 2 or len(fields) < 5:
            continue
        # Mount points escape spaces and the like as octal (\040).
        mount = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, fstype = len(mount), fields[sep + 1]
    return fstype


def is_shared_storage(directory: str) -> bool:
    """Whether ``directory`` may be written by other machines (anything not a local disk)."""
    fstype = _mount_fstype(directory)
    if fstype is None:
        return False  # not Linux: no mount table, and locks are the best evidence there is
    return fstype not in _LOCAL_FS


def _lock_free(path: str) -> Optional[bool]:
    """Whether the file's lock can be taken; None when the file cannot even be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return True  # no locks on this file system: the age decides
    finally:
        os.close(fd)  # releases the lock we took


def remove_stale_temp_files(directory: str, shared_age_s: float = 3600.0) -> List[str]:
    """Delete the temporary files of dead writers in ``directory``; return their names.

    Never raises: a directory that cannot be listed, or a file that cannot be opened or
    removed, is logged and left alone.

    Args:
        directory: the checkpoint directory.
        shared_age_s: on shared storage, how long a temporary file must be unmodified.
    """
    removed: List[str] = []
    kept: List[str] = []
    try:
        names = [n for n in os.listdir(directory) if is_temp_file(n)]
    except OSError:
        return removed
    if not names:
        return removed
    shared = is_shared_storage(directory)
    now = time.time()
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        free = _lock_free(path)
        if free is None:
            kept.append(f"{name} (cannot be opened)")
            continue
        dead = is_dead(
            lock_free=free,
            size=st.st_size,
            age_s=now - st.st_mtime,
            shared=shared,
            shared_age_s=shared_age_s,
        )
        if not dead:
            continue
        try:
            os.remove(path)
            removed.append(name)
        except FileNotFoundError:
            pass
        except OSError as e:
            kept.append(f"{name} ({e.strerror})")
    if removed:
        logger.warning(
            f"Removed {len(removed)} incomplete file(s) left in {directory} by an interrupted "
            f"save: {', '.join(sorted(removed))}"
        )
    if kept:
        logger.warning(
            f"Left {len(kept)} temporary file(s) of an interrupted save in {directory} that "
            f"cannot be removed: {', '.join(sorted(kept))}. They are never read; delete them "
            "by hand to free their space."
        )
    return removed
