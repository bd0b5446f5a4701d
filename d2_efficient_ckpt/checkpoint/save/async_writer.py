"""One background writer thread with back-pressure and error propagation.

At most one job runs at a time: :meth:`AsyncWriter.submit` first waits for the job in flight.
An exception raised by a job is kept and raised in the caller's thread by the next
:meth:`submit`, :meth:`wait` or :meth:`raise_if_failed`, so a failed save is never lost.
The thread is not a daemon: an interpreter that exits normally still finishes the write.

Priority: on Linux the writer thread runs at nice 19, the lowest, so that it takes the CPU
time training leaves idle instead of taking a core from training's compute threads (on a
machine with few cores, one stolen time slice stalls every thread of an intra-op parallel
region, not one). Once the caller waits for it (:meth:`AsyncWriter.wait`, or back-pressure
in :meth:`AsyncWriter.submit`), nothing runs beside it that it could slow down: it gets the
caller's priority back where the system allows raising it (root, ``CAP_SYS_NICE`` or
``RLIMIT_NICE``), and otherwise goes on at nice 19.

Exit: a failed job whose error nobody collected (a script that saves and ends without
``wait()``) makes the interpreter exit with status :data:`EXIT_SAVE_FAILED` once every
writer thread has finished, after the error is printed, so that no scheduler records a run
that lost its last checkpoint as a success. The check is registered when this module is
imported, so it runs after the exit handlers registered later (user code, most libraries).
"""

import atexit
import logging
import os
import sys
import threading
import weakref
from typing import Callable, Optional

__all__ = ["AsyncWriter", "EXIT_SAVE_FAILED"]

logger = logging.getLogger(__name__)

EXIT_SAVE_FAILED = 1

_WRITERS: "weakref.WeakSet[AsyncWriter]" = weakref.WeakSet()


class AsyncWriter:
    """Runs jobs one at a time in a background thread."""

    def __init__(self, name: str = "checkpoint-writer"):
        self._name = name
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._what = ""
        _WRITERS.add(self)

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
        _set_nice(threading.get_native_id(), _WRITER_NICE)
        try:
            job()
        except BaseException as e:  # kept for the caller's thread, which decides
            self._error = e
            logger.error(f"Background save of {self._what or 'a checkpoint'} failed: {e}")

    def wait(self) -> None:
        """Join the job in flight, then raise its error if it failed."""
        thread = self._thread
        if thread is not None:
            if thread.is_alive() and thread.native_id is not None:
                # The caller now waits: the writer no longer competes with anything of ours.
                _set_nice(thread.native_id, _nice_of(threading.get_native_id()))
            thread.join()
            self._thread = None
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the error of a finished job (once); return at once otherwise."""
        error, self._error = self._error, None
        if error is not None:
            raise error


# On Linux a thread has its own nice value; 19 is the lowest priority there is.
_WRITER_NICE = 19


def _nice_of(tid: int) -> Optional[int]:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except (AttributeError, OSError):  # not a Unix
        return None


def _set_nice(tid: int, nice: Optional[int]) -> None:
    """Set a thread's nice value where the system allows it; otherwise leave it as it is."""
    if nice is None:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (AttributeError, OSError):  # not Linux (the process's value), or not permitted
        pass


def _exit_if_a_save_failed() -> None:
    """At interpreter exit: a failed background save nobody collected fails the process."""
    lost = [w for w in list(_WRITERS) if w._error is not None]
    if not lost:
        return
    for w in lost:
        print(
            f"error: the background save of {w._what or 'a checkpoint'} failed and was never "
            f"waited for: {w._error}",
            file=sys.stderr,
        )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream must not hide the exit status
            pass
    os._exit(EXIT_SAVE_FAILED)


atexit.register(_exit_if_a_save_failed)
