"""Preemption: turn the signals a cluster sends before it stops a job into a polled flag.

A signal handler may run between any two bytecodes, so it only records the signal; the
training loop polls :attr:`PreemptionSignals.received` after each step, writes a checkpoint
there, and exits with :data:`PREEMPTED_EXIT_CODE`.
"""

import logging
import signal
import threading
from typing import Any, Dict, List, Optional, Sequence

from .errors import SaveConfigError

__all__ = ["PREEMPTED_EXIT_CODE", "PreemptionSignals", "parse_signals"]

logger = logging.getLogger(__name__)

# EX_TEMPFAIL from sysexits.h: "temporary failure, try again"; a requeued job resumes.
PREEMPTED_EXIT_CODE = 75


def parse_signals(names: Sequence[str]) -> List[signal.Signals]:
    """``["SIGTERM", "usr1"]`` -> signal numbers.

    Raises:
        SaveConfigError: a name this platform does not know, or one that cannot be caught.
    """
    out: List[signal.Signals] = []
    for name in names:
        key = str(name).upper()
        key = key if key.startswith("SIG") else "SIG" + key
        sig = signal.Signals.__members__.get(key)
        if sig is None or sig in (signal.SIGKILL, getattr(signal, "SIGSTOP", None)):
            raise SaveConfigError(
                f"CHECKPOINT.SAVE.ON_SIGNAL has '{name}', which cannot be caught here. Use "
                "names such as SIGTERM, SIGUSR1 or SIGUSR2."
            )
        out.append(sig)
    return out


class PreemptionSignals:
    """Records the first of ``names`` received while installed.

    Args:
        names: signal names, as in ``CHECKPOINT.SAVE.ON_SIGNAL``.
    """

    def __init__(self, names: Sequence[str]):
        self.signals = parse_signals(names)
        self.received: Optional[str] = None
        self._previous: Dict[signal.Signals, Any] = {}

    def install(self) -> bool:
        """Install the handlers (main thread only); return whether they were installed."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("CHECKPOINT.SAVE.ON_SIGNAL is ignored outside the main thread.")
            return False
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def uninstall(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
