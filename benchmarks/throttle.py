"""A slow disk on demand: cap the read bandwidth of the benchmark's worker processes.

The load benchmark runs its cold-cache cases on whatever disk holds the checkpoint. To see
how a load behaves on a slower disk (a network volume, a busy node) without another
machine, the workers can be started inside a block-I/O cgroup whose read bandwidth on the
checkpoint's disk is capped, with the kernel's own throttling:

* cgroup v1: ``blkio.throttle.read_bps_device`` under the ``blkio`` hierarchy;
* cgroup v2: ``io.max`` (``rbps=``) under a hierarchy with the ``io`` controller.

Reads from the page cache are not throttled, only reads that go to the disk, so warm runs
are unaffected. It needs root (writing cgroup files). :class:`ReadThrottle` raises
:class:`ThrottleError`, with what to do, where it cannot be set up.
"""

import os
from typing import Optional, Tuple

__all__ = ["ReadThrottle", "ThrottleError", "disk_of"]

_V1_ROOT = "/sys/fs/cgroup/blkio"
_V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


class ThrottleError(RuntimeError):
    """The read throttle cannot be set up here; the message says why and what to do."""


def disk_of(path: str) -> Tuple[int, int]:
    """``(major, minor)`` of the whole disk that holds ``path`` (a partition's parent)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    sys_dir = f"/sys/dev/block/{major}:{minor}"
    if not os.path.isdir(sys_dir):
        raise ThrottleError(
            f"{path} is on device {major}:{minor}, which is not a block device (an overlay, "
            "tmpfs or network file system); put the checkpoint on a local disk with --ckpt."
        )
    if os.path.exists(os.path.join(sys_dir, "partition")):
        with open(os.path.join(os.path.realpath(sys_dir), "..", "dev")) as f:
            major, minor = map(int, f.read().strip().split(":"))
    return major, minor


class ReadThrottle:
    """A cgroup that caps disk reads at ``mbps`` MB/s on the disk holding ``path``.

    Use as a context manager; start processes with ``preexec_fn=throttle.enter`` to put
    them in it. The cgroup is removed on exit.

    Args:
        path: a file on the disk to throttle.
        mbps: the read bandwidth cap in MB/s (10^6 bytes per second).
    """

    def __init__(self, path: str, mbps: float):
        if mbps <= 0:
            raise ThrottleError(f"the read cap must be positive, not {mbps} MB/s.")
        self.mbps = mbps
        self.device = disk_of(path)
        self.cgroup: Optional[str] = None

    def __enter__(self) -> "ReadThrottle":
        dev = "{}:{}".format(*self.device)
        bps = int(self.mbps * 1e6)
        name = f"d2ckpt-bench-{os.getpid()}"
        try:
            if os.path.isdir(_V1_ROOT):
                self.cgroup = os.path.join(_V1_ROOT, name)
                os.makedirs(self.cgroup, exist_ok=True)
                self._write("blkio.throttle.read_bps_device", f"{dev} {bps}")
            else:
                root = next((r for r in _V2_ROOTS if _has_io_controller(r)), None)
                if root is None:
                    raise ThrottleError(
                        "no cgroup hierarchy with block-I/O throttling is mounted (neither "
                        f"{_V1_ROOT} nor a cgroup v2 'io' controller)."
                    )
                self.cgroup = os.path.join(root, name)
                os.makedirs(self.cgroup, exist_ok=True)
                self._write("io.max", f"{dev} rbps={bps}")
        except PermissionError as e:
            self.__exit__()
            raise ThrottleError(
                f"cannot create a throttling cgroup ({e.strerror}: {e.filename}). Run the "
                "benchmark as root, or without --throttle-mbps."
            ) from None
        except OSError as e:
            self.__exit__()
            raise ThrottleError(f"cannot set the read cap ({e.strerror}: {e.filename}).") from None
        return self

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.cgroup, name), "w") as f:
            f.write(value)

    def enter(self) -> None:
        """Move the calling process into the cgroup (a ``preexec_fn`` for ``subprocess``)."""
        with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def __exit__(self, *exc) -> None:
        if self.cgroup and os.path.isdir(self.cgroup):
            try:
                os.rmdir(self.cgroup)  # only empty once its processes have ended
            except OSError:
                pass
        self.cgroup = None


def _has_io_controller(root: str) -> bool:
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            return "io" in f.read().split()
    except OSError:
        return False
