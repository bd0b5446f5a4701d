"""Training-loop hooks of the saving side: failed background saves, and preemption."""

import logging

from detectron2.engine.train_loop import HookBase
from detectron2.utils import comm

from ..checkpoint.formats.registry import periodic_name
from ..checkpoint.save.signals import PREEMPTED_EXIT_CODE, PreemptionSignals
from .sampling import SamplingState

__all__ = ["RaiseFailedSaves", "CheckpointOnSignal", "PREEMPTED_EXIT_CODE"]

logger = logging.getLogger(__name__)


class RaiseFailedSaves(HookBase):
    """Raise the error of a failed background save in the training loop, at the next step.

    Goes after the periodic checkpointer, so a save and its failure are one step apart.
    """

    def after_step(self) -> None:
        check = getattr(self.trainer.checkpointer, "raise_if_failed", None)
        if check is not None:
            check()


class CheckpointOnSignal(HookBase):
    """On one of ``signals``: finish the step, write a checkpoint, wait for it, and exit.

    The exit status is :data:`PREEMPTED_EXIT_CODE` (75). ``--resume`` continues from the
    checkpoint, named like a periodic one (``model_<iteration>``). Under several processes
    the ranks agree on the step (one small all-gather per step), so all stop together.

    Args:
        signals: names as in ``CHECKPOINT.SAVE.ON_SIGNAL``.
    """

    def __init__(self, signals):
        self._signals = PreemptionSignals(signals)

    def before_train(self) -> None:
        self._signals.install()

    def after_train(self) -> None:
        self._signals.uninstall()

    def _requested(self) -> bool:
        mine = self._signals.received is not None
        if comm.get_world_size() > 1:
            return any(comm.all_gather(mine))
        return mine

    def after_step(self) -> None:
        if not self._requested():
            return
        trainer = self.trainer
        what = self._signals.received or "a signal on another rank"
        name = periodic_name("model", trainer.iter)
        logger.warning(f"Received {what}: saving {name} after iteration {trainer.iter}, then exit.")
        for hook in trainer._hooks:  # every rank's sampling state, for the main process
            if isinstance(hook, SamplingState):
                hook.gather()
        trainer.checkpointer.save(name, iteration=trainer.iter)
        wait = getattr(trainer.checkpointer, "wait", None)
        if wait is not None:
            wait()
        comm.synchronize()  # no rank exits (and restarts) before the checkpoint is durable
        logger.warning(
            f"Checkpoint {name} is durable; exiting with status {PREEMPTED_EXIT_CODE} "
            "(resume with --resume)."
        )
        raise SystemExit(PREEMPTED_EXIT_CODE)
