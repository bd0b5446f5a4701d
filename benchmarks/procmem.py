"""Linux process-memory helpers for the load benchmark, and page-cache warming and timing.

Everything here reads ``/proc`` or files, so it adds no dependency. On a system without
``/proc`` the functions return ``None`` rather than raise, and the benchmark says so in its
output. Page-cache residency and eviction are the package's own
(``d2_efficient_ckpt.checkpoint.storage.page_cache``), shared with its tests.
"""

import os
import platform
import threading
import time
from typing import Dict, Optional

__all__ = [
    "MemorySampler",
    "machine_info",
    "read_status",
    "reset_peak_rss",
    "timed_read",
    "warm_page_cache",
]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_status(pid: str = "self") -> Dict[str, int]:
    """Memory lines of ``/proc/<pid>/status`` in bytes.

    Args:
        pid: a process id or ``"self"``.

    Returns:
        ``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` and ``RssShmem`` (those present).
    """
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (``/proc/self/clear_refs``, 5).

    Returns:
        Whether the kernel accepted it; if not, ``VmHWM`` counts from process start.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemorySampler:
    """Polls this process's resident memory in a background thread.

    ``/proc/self/statm`` is read every ``interval`` seconds; anonymous RSS is its resident
    pages minus its shared (file-backed and shmem) pages, i.e. ``RssAnon``. The thread
    needs the GIL for each sample, so while the main thread runs pure Python the effective
    interval is the interpreter's switch interval (5 ms by default); while it sits in a
    large copy or a read (GIL released) it is ``interval``.

    Use as a context manager; ``peak_anon`` and ``peak_rss`` are bytes, ``samples`` the
    number of readings taken. An ``interval`` of 0 starts no thread: only the readings at
    entry, at exit and from explicit :meth:`sample` calls count.
    """

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak_anon = 0
        self.peak_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self._thread = threading.Thread(target=self._run, name="mem-sampler", daemon=True)

    def sample(self) -> None:
        """Take one reading now (also called from the main thread at start and end)."""
        # One positional read: the sampler thread and the main thread share the descriptor,
        # and a seek followed by a read could interleave with the other's and read nothing.
        fields = os.pread(self._fd, 256, 0).split()
        resident = int(fields[1]) * _PAGE
        anon = resident - int(fields[2]) * _PAGE
        if anon > self.peak_anon:
            self.peak_anon = anon
        if resident > self.peak_rss:
            self.peak_rss = resident
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> "MemorySampler":
        self.sample()
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        os.close(self._fd)


def warm_page_cache(path: str, chunk: int = 16 << 20) -> float:
    """Read the whole file once so that it is in the page cache.

    Returns:
        Seconds taken (near zero when it was already cached).
    """
    buf = bytearray(chunk)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - t0


def timed_read(path: str, nbytes: int, chunk: int = 4 << 20) -> float:
    """Seconds to read the first ``nbytes`` of a file (through the page cache)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    done = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while done < nbytes:
            n = f.readinto(view[: min(chunk, nbytes - done)])
            if not n:
                break
            done += n
    return time.perf_counter() - t0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> Dict[str, object]:
    """CPU model, core count, memory, OS and library versions (no host names or paths)."""
    import torch

    try:
        import detectron2

        d2 = detectron2.__version__
    except ImportError:
        d2 = None
    info: Dict[str, object] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_bytes": _mem_total(),
        "os": platform.system(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "detectron2": d2,
        "page_size": _PAGE,
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_at_start"] = list(os.getloadavg())
    return info
