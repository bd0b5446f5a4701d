"""A ``DefaultTrainer`` that checkpoints through the configured checkpointer and resumes exactly."""

import logging
import os
import weakref

from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import build_checkpointer
from ..checkpoint.build import checkpoint_dir
from ..config import with_trainer_defaults
from .ddp import wrap_model
from .loader import make_resumable
from .sampling import SamplingState
from .save_hooks import CheckpointOnSignal, RaiseFailedSaves

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)

# Hooks that change the state a checkpoint holds; the sampling state is taken after them.
_STATE_HOOKS = (hooks.IterationTimer, hooks.LRScheduler, hooks.PreciseBN)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` whose checkpointer comes from ``build_checkpointer(cfg, ...)``.

    The periodic checkpoint hook, ``resume_or_load`` (``--resume``) and evaluation all use it.
    The ``trainer`` checkpointable is kept, so iteration, hook state (the LR scheduler) and
    the AMP grad scaler are saved and restored as with the stock class.

    Exact resume: the training loader built by ``build_detection_train_loader`` is made
    resumable (see ``engine.loader``), and the ``SamplingState`` hook saves its position and
    the random states of every rank (the ``sampling`` part). Training N iterations, or N/2,
    a resume and N/2 more, gives the same weights.

    Several processes: the model is wrapped in DDP with ``device_ids`` only on GPUs, so CPU
    training over gloo works; only the main process writes checkpoints and reports.

    Saving (``CHECKPOINT.SAVE``): in the background unless ``ASYNC`` is False (its default,
    None, means True here; see ``config.with_trainer_defaults``); a failed background save
    is raised at the next step;
    :meth:`train` joins the save in flight before it returns or re-raises; with
    ``ON_SIGNAL`` a signal makes training checkpoint and exit with status 75.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__'s sequence, with the model wrapped by wrap_model (stock
        # create_ddp_model gives a CPU model device_ids, which DDP refuses) and the
        # configured checkpointer built at once.
        TrainerBase.__init__(self)
        directory = checkpoint_dir(cfg)  # refused before anything is built or written
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = with_trainer_defaults(DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size()))
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        resumable = make_resumable(data_loader)
        if resumable is None:
            logger.info(
                "The training loader is not one of build_detection_train_loader; its position "
                "is not saved, so a resumed run restarts its index stream."
            )
        model = wrap_model(model, broadcast_buffers=False)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, resumable or data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(cfg, model, directory, trainer=weakref.proxy(self))
        defer = getattr(self.checkpointer, "defer_until_step", None)
        if defer is not None and cfg.CHECKPOINT.SAVE.ASYNC:
            # Between a save and the next optimizer step only forward and backward run, so
            # the weights and momenta are copied beside them (see save/snapshot.py).
            defer(model, optimizer)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """The stock hooks, the sampling state after those that change the saved state, and
        the saving hooks."""
        out = super().build_hooks()
        at = max((i for i, h in enumerate(out) if isinstance(h, _STATE_HOOKS)), default=-1)
        sampling = SamplingState(self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.SOLVER.MAX_ITER)
        out.insert(at + 1, sampling)
        out.append(RaiseFailedSaves())
        if self.cfg.CHECKPOINT.SAVE.ON_SIGNAL:
            out.append(CheckpointOnSignal(self.cfg.CHECKPOINT.SAVE.ON_SIGNAL))
        return out

    def train(self):
        """As ``DefaultTrainer.train``; every pending save is durable when it returns or raises.

        Under several processes the ranks return together, after the main process's last
        save is durable, so code after ``train()`` may read it on any rank.

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
        comm.synchronize()
        return result

    def resume_or_load(self, resume: bool = True) -> None:
        """As ``DefaultTrainer.resume_or_load``, through the checkpointer's resume.

        When the iteration is not among the restored parts, training starts at iteration 0
        instead of one past the trainer's initial counter. A checkpoint without the
        ``sampling`` part (saved before it existed) resumes as before, with a note.
        """
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        report = getattr(self.checkpointer, "last_report", None)
        parts = report.checkpointables if resume and report is not None else {}
        restored = getattr(self.checkpointer, "restored_iteration", None)
        if restored is None:  # another checkpointer class: the stock rule
            restored = resume and self.checkpointer.has_checkpoint()
        self.start_iter = self.iter + 1 if resume and restored else 0
        if parts.get("trainer.sampling") == "absent":
            logger.info(
                "The checkpoint has no sampling state (it predates exact resume): "
                "training resumes with a new data order and new random states."
            )

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
