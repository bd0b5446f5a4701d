"""Chunks of per-file work in worker processes, results in order, with a progress bar.

Reading 100,000s of small files (label files, image headers) and formatting millions of
numbers as json text are CPU-bound Python, so threads do not help; worker processes do.
Small jobs stay in this process, where starting workers would cost more than it saves,
and so does everything in a daemonic process (a data-loader worker), which may not start
children.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Optional, Sequence, TypeVar

from tqdm import tqdm

__all__ = ["PARALLEL_MIN", "map_chunks", "worker_count"]

T = TypeVar("T")
R = TypeVar("R")

#: Below this many items (files, rows) the work stays in this process.
PARALLEL_MIN = 4000


def worker_count(workers: int) -> int:
    """``workers``, or ``min(8, cpu count)`` for 0; 1 inside a daemonic process."""
    if multiprocessing.current_process().daemon:
        return 1
    if workers <= 0:
        return min(8, os.cpu_count() or 1)
    return workers


def map_chunks(
    fn: Callable[[T], R],
    chunks: Sequence[T],
    sizes: Sequence[int],
    workers: int = 0,
    desc: str = "",
    unit: str = "it",
    parallel_min: Optional[int] = None,
) -> Iterator[R]:
    """``fn(chunk)`` for every chunk, in order, in worker processes when the job is large.

    Args:
        fn: a module-level function (it is pickled by name).
        chunks: its arguments, one per call (pickled to the workers).
        sizes: items per chunk, for the progress bar and the size of the job.
        workers: worker processes; 0 picks ``min(8, cpu count)``, 1 runs here.
        desc: progress-bar label; no bar when empty or when the job is small.
        unit: progress-bar unit.
        parallel_min: fewer items than this run here (None: :data:`PARALLEL_MIN`).

    Yields:
        The results, in the order of ``chunks``.
    """
    total = sum(sizes)
    if parallel_min is None:
        parallel_min = PARALLEL_MIN
    workers = worker_count(workers)
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not desc or total < parallel_min)
    with bar:
        if workers == 1 or total < parallel_min or len(chunks) < 2:
            for chunk, size in zip(chunks, sizes):
                yield fn(chunk)
                bar.update(size)
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            for result, size in zip(pool.map(fn, chunks), sizes):
                yield result
                bar.update(size)
