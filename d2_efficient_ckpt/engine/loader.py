"""A training loader whose position in its index stream can be saved and restored.

detectron2's ``build_detection_train_loader`` yields an infinite stream: the sampler's
indices are split among the data-loader workers, each worker maps its samples with its own
random state, and (with aspect-ratio grouping) the main process holds samples back in two
buckets. None of that is recorded, so a resumed run sees other data in another order.

:class:`ResumableTrainLoader` takes the same dataset, mapper and sampler and keeps the same
stream, with three changes that make its state small and exact:

* each sample is tagged with its position in this rank's index stream, and the workers
  deal positions out one by one, so the main process receives the stream in order whatever
  the number of workers;
* each sample is mapped under a random state seeded by (seed, rank, position), so its
  augmentation does not depend on the worker that mapped it;
* the state is the next position, the samples waiting in the grouping buckets (position and
  dataset index; they are mapped again on resume) and the seeds.
"""

import itertools
import logging
import operator
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.common import AspectRatioGroupedDataset, MapDataset, ToIterableDataset
from detectron2.utils import comm
from torch.utils import data as torchdata

from .rng import sample_seed, seeded_for_sample

__all__ = ["ResumableTrainLoader", "make_resumable"]

logger = logging.getLogger(__name__)

# Other dataset indices tried when the mapper returns None for a sample, as MapDataset does.
_MAX_RETRIES = 10


def _identity(x: Any) -> Any:
    return x


class _SampleMapper:
    """Maps the sample at a stream position, under that position's random state."""

    def __init__(self, dataset, map_func: Callable, seed: int, rank: int):
        self.dataset = dataset
        self.map_func = map_func
        self.seed = seed
        self.rank = rank

    def __call__(self, position: int, index: int) -> Any:
        seed = sample_seed(self.seed, self.rank, position)
        with seeded_for_sample(seed):
            out = self.map_func(self.dataset[index])
            retry = random.Random(seed)
            tries = 0
            while out is None and tries < _MAX_RETRIES:
                tries += 1
                index = retry.randrange(len(self.dataset))
                out = self.map_func(self.dataset[index])
        if out is None:
            raise RuntimeError(
                f"The dataset mapper returned None for stream position {position} and for "
                f"{_MAX_RETRIES} other samples; check the mapper and the dataset."
            )
        return out


class _PositionStream(torchdata.IterableDataset):
    """(position, dataset index, mapped sample) from ``start`` on; worker k of n takes positions
    ``start + k``, ``start + k + n``, ..., so the loader's round-robin returns them in order."""

    def __init__(self, sampler, mapper: _SampleMapper, start: int):
        self.sampler = sampler
        self.mapper = mapper
        self.start = start

    def __iter__(self) -> Iterator[Tuple[int, int, Any]]:
        info = torchdata.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        first = self.start + worker
        indices = itertools.islice(iter(self.sampler), first, None, workers)
        for position, index in zip(itertools.count(first, workers), indices):
            yield position, int(index), self.mapper(position, int(index))


class ResumableTrainLoader:
    """An iterable of training batches with ``state_dict``/``load_state_dict``.

    Args:
        dataset: the map-style dataset of unmapped records.
        map_func: the mapper (``DatasetMapper``); may return None to skip a record.
        sampler: the training sampler (this rank's infinite index stream).
        batch_size: samples per batch on this rank.
        num_workers: data-loader worker processes.
        aspect_ratio_grouping: batch landscape and portrait images separately.
        collate_fn: applied to each batch (a list of samples); None keeps the list.
        seed: base of the per-sample seeds; shared by all ranks.
    """

    def __init__(
        self,
        dataset,
        map_func: Callable,
        sampler,
        batch_size: int,
        *,
        num_workers: int = 0,
        aspect_ratio_grouping: bool = True,
        collate_fn: Optional[Callable] = None,
        seed: int = 0,
    ):
        self.dataset = dataset
        self.map_func = map_func
        self.sampler = sampler
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.collate_fn = collate_fn
        self.seed = int(seed)
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()
        self.position = 0  # next stream position to be taken from the workers
        # Samples waiting in the grouping buckets, as (position, dataset index).
        self._waiting: List[List[Tuple[int, int]]] = [[], []]

    def _mapper(self) -> _SampleMapper:
        return _SampleMapper(self.dataset, self.map_func, self.seed, self.rank)

    def _stream(self, start: int) -> Iterator[Tuple[int, int, Any]]:
        kwargs: Dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs["worker_init_fn"] = worker_init_reset_seed
            kwargs["prefetch_factor"] = 2 if self.aspect_ratio_grouping else 2 * self.batch_size
        loader = torchdata.DataLoader(
            _PositionStream(self.sampler, self._mapper(), start),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            # Its own generator: creating the loader draws nothing from the global torch RNG.
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )
        return iter(loader)

    def __iter__(self) -> Iterator[Any]:
        mapper = self._mapper()
        buckets: List[List[Tuple[int, int, Any]]] = [[], []]
        # Samples held back when the state was saved are mapped again, in their order.
        for position, index in sorted(p for b in self._waiting for p in b):
            sample = mapper(position, index)
            buckets[self._bucket_of(sample)].append((position, index, sample))
        for position, index, sample in self._stream(self.position):
            self.position = position + 1
            bucket = buckets[self._bucket_of(sample)]
            bucket.append((position, index, sample))
            if len(bucket) < self.batch_size:
                continue
            batch = [s for _, _, s in bucket]
            del bucket[:]
            # What a checkpoint taken before the next batch must hold back.
            self._waiting = [[(p, i) for p, i, _ in b] for b in buckets]
            yield batch if self.collate_fn is None else self.collate_fn(batch)

    def _bucket_of(self, sample: Any) -> int:
        if not self.aspect_ratio_grouping:
            return 0
        return 0 if sample["width"] > sample["height"] else 1

    def state_dict(self) -> Dict[str, Any]:
        """Position, waiting samples, seeds, and the sizes that make the position exact."""
        return {
            "position": self.position,
            "waiting": [[list(p) for p in b] for b in self._waiting],
            "seed": self.seed,
            "sampler_seed": getattr(self.sampler, "_seed", None),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Dict[str, Any], *, position: Optional[int] = None) -> None:
        """Continue from ``state`` at the next ``iter()``.

        Args:
            state: from :meth:`state_dict`.
            position: start here instead, with no waiting samples (an inexact resume).
        """
        self.seed = int(state["seed"])
        if state.get("sampler_seed") is not None and hasattr(self.sampler, "_seed"):
            self.sampler._seed = int(state["sampler_seed"])
        if position is None:
            self.position = int(state["position"])
            self._waiting = [[(int(p), int(i)) for p, i in b] for b in state["waiting"]]
        else:
            self.position = int(position)
            self._waiting = [[], []]


def _unwrap(loader) -> Optional[Dict[str, Any]]:
    # The structure build_batch_data_loader makes: [AspectRatioGroupedDataset of] a DataLoader
    # of ToIterableDataset(MapDataset(records, mapper), sampler).
    grouping = isinstance(loader, AspectRatioGroupedDataset)
    inner = loader.dataset if grouping else loader
    if not isinstance(inner, torchdata.DataLoader):
        return None
    stream = inner.dataset
    if not isinstance(stream, ToIterableDataset) or not stream.shard_sampler:
        return None
    mapped = stream.dataset
    if not isinstance(mapped, MapDataset):
        return None
    if grouping:
        batch_size, collate = loader.batch_size, None
    else:
        batch_size, collate = inner.batch_size, inner.collate_fn
        if not inner.drop_last or batch_size is None:
            return None
    return {
        "dataset": mapped._dataset,
        "map_func": mapped._map_func,
        "sampler": stream.sampler,
        "batch_size": batch_size,
        "num_workers": inner.num_workers,
        "aspect_ratio_grouping": grouping,
        "collate_fn": None if collate is None or _is_trivial(collate) else collate,
    }


def _is_trivial(collate: Callable) -> bool:
    return getattr(collate, "__name__", "") == "trivial_batch_collator" or isinstance(
        collate, operator.itemgetter
    )


def make_resumable(loader, seed: Optional[int] = None) -> Optional[ResumableTrainLoader]:
    """The same stream as ``loader`` (built by ``build_detection_train_loader``), resumable.

    Args:
        loader: a training loader.
        seed: base of the per-sample seeds; by default the sampler's seed, or one seed
            shared by all ranks.

    Returns:
        A :class:`ResumableTrainLoader`, or None when ``loader`` has another structure
        (an iterable dataset, a custom loader): its position cannot be recorded.
    """
    parts = _unwrap(loader)
    if parts is None:
        return None
    if seed is None:
        seed = getattr(parts["sampler"], "_seed", None)
    if seed is None:
        seed = comm.shared_random_seed()
    return ResumableTrainLoader(seed=seed, **parts)
