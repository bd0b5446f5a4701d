"""One background writer thread with back-pressure and error propagation.

At most one job runs at a time: :meth:`AsyncWriter.submit` first waits for the job in flight.
An exception raised by a job is kept and raised in the caller's thread by the next
:meth:`submit`, :meth:`wait` or :meth:`raise_if_failed`, so a failed save is never lost.
The thread is not a daemon: an interpreter that exits normally still finishes the write.
It runs at a lower CPU priority (nice +10) than the training loop.
"""

import logging
import os
import threading
from typing import Callable, Optional

__all__ = ["AsyncWriter"]

logger = logging.getLogger(__name__)


class AsyncWriter:
    """Runs jobs one at a time in a background thread."""

    def __init__(self, name: str = "checkpoint-writer"):
        self._name = name
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._what = ""

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Callable[[], None], what: str = "") -> None:
        """Run ``job`` in the background once the previous one has finished.

        Raises:
            BaseException: the error of the previous job, if it failed; ``job`` is then
                not started.
        """
        self.wait()
        self._what = what
        self._thread = threading.Thread(target=self._run, args=(job,), name=self._name)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        _lower_priority()
        try:
            job()
        except BaseException as e:  # kept for the caller's thread, which decides
            self._error = e
            logger.error(f"Background save of {self._what or 'a checkpoint'} failed: {e}")

    def wait(self) -> None:
        """Join the job in flight, then raise its error if it failed."""
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the error of a finished job (once); return at once otherwise."""
        error, self._error = self._error, None
        if error is not None:
            raise error


# On Linux a thread has its own nice value: the writer yields the CPU to the training
# threads when cores are scarce, and still gets it whenever training waits.
_NICE_INCREMENT = 10


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + _NICE_INCREMENT)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass
