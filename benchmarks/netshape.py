"""A network link on demand: cap the bandwidth of one loopback port.

The object-storage benchmark runs its server on 127.0.0.1, where the link costs nothing and
both ends share the machine's cores: there every byte costs CPU time, not link time, which
is not what a node reading from object storage sees. :class:`ShapedPort` puts the traffic
to and from one TCP port of the loopback device (both directions: downloads and uploads)
behind a token bucket of the kernel's ``htb`` queue, and leaves all other loopback traffic
in an unshaped class:

* ``tc qdisc add dev lo root handle 1: htb default 1``, class ``1:1`` at 100 Gbit/s (every
  other packet), class ``1:2`` at the link's rate;
* two ``u32`` filters sending the port's packets (as source and as destination) to ``1:2``.

No latency is added (``netem`` is not in every kernel); a round trip on loopback is tens of
microseconds, so the link is a fast one of a data centre, not a WAN. It needs root and
``tc`` (iproute2), and a loopback device with no root queue of its own; :class:`ShapedPort`
raises :class:`ShapeError`, with what to do, where it cannot be set up, and always removes
what it added.
"""

import os
import shutil
import subprocess
from typing import List, Optional

__all__ = ["ShapedPort", "ShapeError"]


class ShapeError(RuntimeError):
    """The link cannot be shaped here; the message says why and what to do."""


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=check)


class ShapedPort:
    """``with ShapedPort(port, mbps):`` the port's traffic runs at ``mbps`` megabits per
    second each way.

    Args:
        port: the TCP port on 127.0.0.1 (the server's).
        mbps: the rate, in megabits per second.
        device: the loopback device.
    """

    def __init__(self, port: int, mbps: float, device: str = "lo"):
        self.port, self.mbps, self.device = port, mbps, device
        self._added = False

    def describe(self) -> str:
        """The link in words, for the report."""
        return f"{self.mbps:g} Mbit/s each way to and from the server's port (tc htb)"

    def __enter__(self) -> "ShapedPort":
        return self.start()

    def start(self) -> "ShapedPort":
        """Add the queue; :meth:`remove` takes it away.

        Raises:
            ShapeError: it cannot be added here (nothing is left behind).
        """
        if os.geteuid() != 0:
            raise ShapeError("shaping the loopback link needs root (tc); run without --link-mbps")
        if shutil.which("tc") is None:
            raise ShapeError("tc is not installed (apt-get install iproute2)")
        current = _tc("qdisc", "show", "dev", self.device).stdout
        if "htb 1:" in current:
            raise ShapeError(
                f"{self.device} already has a queue ({current.strip()}); remove it with "
                f"'tc qdisc del dev {self.device} root' if it is a leftover of this script"
            )
        rate = f"{self.mbps:g}mbit"
        steps: List[List[str]] = [
            ["qdisc", "add", "dev", self.device, "root", "handle", "1:", "htb", "default", "1"],
            ["class", "add", "dev", self.device, "parent", "1:", "classid", "1:1", "htb",
             "rate", "100gbit"],
            ["class", "add", "dev", self.device, "parent", "1:", "classid", "1:2", "htb",
             "rate", rate, "ceil", rate],
        ]  # fmt: skip
        for side in ("sport", "dport"):
            steps.append(
                ["filter", "add", "dev", self.device, "parent", "1:", "protocol", "ip", "prio",
                 "1", "u32", "match", "ip", side, str(self.port), "0xffff", "flowid", "1:2"]
            )  # fmt: skip
        try:
            for step in steps:
                done = _tc(*step, check=False)
                if done.returncode != 0:
                    raise ShapeError(f"tc {' '.join(step)} failed: {done.stderr.strip()}")
                self._added = True
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> Optional[str]:
        """Remove the queue this object added; the error text if that failed."""
        if not self._added:
            return None
        self._added = False
        done = _tc("qdisc", "del", "dev", self.device, "root", check=False)
        return done.stderr.strip() or None

    def __exit__(self, *exc: object) -> None:
        self.remove()
