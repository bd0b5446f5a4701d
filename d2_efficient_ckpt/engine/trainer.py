"""A ``DefaultTrainer`` that checkpoints through the configured checkpointer."""

import logging
import os
import weakref

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from ..checkpoint import build_checkpointer
from .save_hooks import CheckpointOnSignal, RaiseFailedSaves

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose checkpointer comes from ``build_checkpointer(cfg, ...)``.

    The periodic checkpoint hook, ``resume_or_load`` (``--resume``) and evaluation all use it.
    The ``trainer`` checkpointable is kept, so iteration, hook state (the LR scheduler) and
    the AMP grad scaler are saved and restored as with the stock class.

    Saving (``CHECKPOINT.SAVE``): a failed background save is raised at the next step;
    :meth:`train` joins the save in flight before it returns or re-raises; with
    ``ON_SIGNAL`` a signal makes training checkpoint and exit with status 75.
    """

    def build_hooks(self):
        # DefaultTrainer.__init__ creates the stock DetectionCheckpointer and then calls
        # build_hooks(); swapping here means PeriodicCheckpointer gets the new instance.
        self.checkpointer = build_checkpointer(
            self.cfg,
            self.model,
            self.cfg.OUTPUT_DIR,
            trainer=weakref.proxy(self),
        )
        hooks = super().build_hooks() + [RaiseFailedSaves()]
        if self.cfg.CHECKPOINT.SAVE.ON_SIGNAL:
            hooks.append(CheckpointOnSignal(self.cfg.CHECKPOINT.SAVE.ON_SIGNAL))
        return hooks

    def train(self):
        """As ``DefaultTrainer.train``; every pending save is durable when it returns or raises.

        Raises:
            CheckpointSaveError: the last background save failed.
        """
        wait = getattr(self.checkpointer, "wait", None)
        try:
            result = super().train()
        except BaseException:
            if wait is not None:
                try:
                    wait()
                except Exception as e:  # the training error is the one to report
                    logger.error(f"A background save failed as well: {e}")
            raise
        if wait is not None:
            wait()
        return result

    def resume_or_load(self, resume: bool = True) -> None:
        """As ``DefaultTrainer.resume_or_load``, honouring ``CHECKPOINT.LOAD.CHECKPOINTABLES``.

        When the iteration is not among the restored parts, training starts at iteration 0
        instead of one past the trainer's initial counter.
        """
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            restored = getattr(self.checkpointer, "restored_iteration", True)
            self.start_iter = self.iter + 1 if restored else 0

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None) -> DatasetEvaluator:
        """COCO-style box AP for every dataset, whatever format it was declared in.

        Args:
            cfg: the training config.
            dataset_name: a registered dataset name.
            output_folder: where evaluation files go; ``OUTPUT_DIR/inference`` by default.

        Returns:
            A :class:`COCOEvaluator` for boxes.
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)
