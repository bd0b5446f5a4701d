"""The ``sampling`` part of the trainer state: what the next iterations depend on.

For each rank: the training loader's position in its index stream (see ``loader``) and the
random states of torch, CUDA, numpy and Python ``random`` (see ``rng``). Only the main
process writes checkpoints, so on checkpoint steps every rank sends its state to all
(one small all-gather) before the checkpointer asks for it.
"""

import logging
from typing import Any, Dict, List, Optional

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

from .loader import ResumableTrainLoader
from .rng import capture_rng_state, restore_rng_state

__all__ = ["SamplingState", "resume_position"]

logger = logging.getLogger(__name__)

# Version of the saved layout; a reader refuses layouts it does not know with a warning.
_FORMAT = 1


def resume_position(states: List[Optional[Dict[str, Any]]], world_size: int) -> int:
    """Where each rank's stream starts when the world size changed since the save.

    The ranks had taken about ``min(position) * saved world size`` indices of the global
    stream together; the new ranks share that out. Samples near the cut may be seen twice
    or not at all, which is why such a resume is not exact.

    Args:
        states: the saved loader states, one per saved rank (None where unknown).
        world_size: the number of ranks now.
    """
    positions = [int(s["position"]) for s in states if s is not None]
    if not positions:
        return 0
    return min(positions) * len(states) // world_size


def _processes(n: int) -> str:
    return f"{n} process" if int(n) == 1 else f"{n} processes"


class SamplingState(HookBase):
    """Saves and restores the loader position and the random states, for an exact resume.

    Its ``state_dict`` is the trainer's ``hooks.SamplingState`` entry, restored as the
    ``sampling`` part of ``CHECKPOINT.LOAD.CHECKPOINTABLES``. A restored state takes effect
    in ``before_train``, after everything else was built and loaded.

    Args:
        checkpoint_period: ``SOLVER.CHECKPOINT_PERIOD``; with ``max_iter`` it says at which
            steps the periodic checkpointer saves, so the ranks gather their states then.
        max_iter: the last iteration plus one.
    """

    def __init__(self, checkpoint_period: int, max_iter: int):
        self._period = int(checkpoint_period)
        self._max_iter = int(max_iter)
        self._gathered: Optional[tuple] = None  # (iteration, one state per rank)
        self._pending: Optional[Dict[str, Any]] = None

    # ----------------------------------------------------------------- saving
    def _loader(self) -> Optional[ResumableTrainLoader]:
        loader = getattr(self.trainer._trainer, "data_loader", None)
        return loader if isinstance(loader, ResumableTrainLoader) else None

    def _local_state(self) -> Dict[str, Any]:
        loader = self._loader()
        return {
            "rng": capture_rng_state(),
            "loader": None if loader is None else loader.state_dict(),
        }

    def _save_due(self, iteration: int) -> bool:
        # The periodic checkpointer's rule (fvcore's PeriodicCheckpointer.step).
        return (iteration + 1) % self._period == 0 or iteration >= self._max_iter - 1

    def gather(self) -> None:
        """Collect every rank's state on every rank (collective; all ranks must call it)."""
        if comm.get_world_size() > 1:
            self._gathered = (self.trainer.iter, comm.all_gather(self._local_state()))

    def after_step(self) -> None:
        if comm.get_world_size() > 1 and self._save_due(self.trainer.iter):
            self.gather()

    def state_dict(self) -> Dict[str, Any]:
        if self._pending is not None:  # restored, not yet applied: it is the state to keep
            return self._pending
        world = comm.get_world_size()
        if world == 1:
            ranks: List[Optional[Dict[str, Any]]] = [self._local_state()]
        elif self._gathered is not None and self._gathered[0] == self.trainer.iter:
            ranks = list(self._gathered[1])
        else:  # a save outside the checkpoint steps: only this rank's state is known
            ranks = [None] * world
            ranks[comm.get_rank()] = self._local_state()
        return {"format": _FORMAT, "world_size": world, "ranks": ranks}

    # ----------------------------------------------------------------- loading
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._pending = state

    def before_train(self) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        if int(state.get("format", 0)) != _FORMAT:
            logger.warning(
                f"The checkpoint's sampling state has format {state.get('format')!r}, not "
                f"{_FORMAT}; data order and random states start afresh."
            )
            return
        rank, world = comm.get_rank(), comm.get_world_size()
        ranks = list(state["ranks"])
        loader = self._loader()
        if int(state["world_size"]) == world:
            mine = ranks[rank]
            if mine is None:
                logger.warning(
                    f"The checkpoint has no sampling state for rank {rank} (it was saved "
                    "outside a checkpoint step); this rank's data order is not exact."
                )
                return
            restore_rng_state(mine["rng"])
            if loader is not None and mine["loader"] is not None:
                loader.load_state_dict(mine["loader"])
                logger.info(
                    f"Restored the sampling state: the loader continues at position "
                    f"{loader.position} of its index stream, with the saved random states."
                )
            else:
                logger.info(
                    "Restored the random states; the training loader's position is not "
                    "recorded, so its index stream restarts."
                )
        else:
            if rank == 0:
                logger.warning(
                    f"The checkpoint was saved by {_processes(state['world_size'])} and this run "
                    f"has {world}: training resumes, but the data order cannot be exact (the "
                    "index stream restarts near the saved position; random states start afresh)."
                )
            loaders = [None if r is None else r["loader"] for r in ranks]
            known = next((s for s in loaders if s is not None), None)
            if loader is not None and known is not None:
                loader.load_state_dict(known, position=resume_position(loaders, world))
        # The trainer takes a new iterator, which starts at the restored position.
        self.trainer._trainer._data_loader_iter_obj = None
