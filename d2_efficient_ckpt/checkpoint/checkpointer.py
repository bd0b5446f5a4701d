"""``EfficientDetectionCheckpointer``: a drop-in replacement for ``DetectionCheckpointer``.

Lazy, safe, selective, device-mapped loads and crash-safe saves (see ``docs/design.md``).
The class is an adapter: a load is ``load/pipeline.py``, a resume ``resume/resume.py``, a
save ``save/``. It keeps fvcore's and detectron2's public methods and ``_load_file``, their
extension point for reading.
"""

import logging
from typing import Any, Dict, List, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from fvcore.common.checkpoint import _IncompatibleKeys
from torch.nn.parallel import DistributedDataParallel

from .build import CHECKPOINTER_REGISTRY
from .load.pipeline import LoadRequest, run_load
from .load.report_file import write_report_json
from .load.source import (
    CheckpointDict,
    Source,
    open_request,
    open_source,
    overrides,
    parse_checkpoint_url,
    source_of,
    warn_unused_hooks,
)
from .options import LoadOptions
from .report.load_report import LoadReport
from .restore.state_dict_rules import default_checkpointables
from .resume.broadcast import load_on_main
from .resume.mixin import ResumeMixin
from .resume.resume import every_rank_reads, resume_from_directory
from .save.mixin import SavingMixin
from .storage.registry import is_remote, store_for

__all__ = ["EfficientDetectionCheckpointer"]

logger = logging.getLogger(__name__)


@CHECKPOINTER_REGISTRY.register()
class EfficientDetectionCheckpointer(ResumeMixin, SavingMixin, DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` that loads lazily, safely and selectively.

    It has the stock constructor and methods; ``load`` and ``resume_or_load`` also take
    keyword options that override ``cfg.CHECKPOINT.LOAD``. After each load,
    ``last_report`` holds its :class:`LoadReport`.

    A subclass may override ``_load_file`` as with the stock class. Changing the dict that
    ``super()._load_file()`` returns in place keeps lazy, checked reads; returning another
    dict reads eagerly, with a warning that says so.

    Args:
        model: the model; a DDP wrapper is unwrapped as in the stock class.
        save_dir: where ``save`` writes and ``last_checkpoint`` lives.
        save_to_disk: defaults to "main process only".
        cfg: optional config; ``cfg.CHECKPOINT.LOAD`` gives the default load options.
        **checkpointables: objects with ``state_dict``/``load_state_dict``.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        cfg=None,
        **checkpointables: Any,
    ):
        # DDP: every rank loads together (collective checks); a bare model may load alone.
        self._collective = isinstance(model, DistributedDataParallel)
        if save_dir:
            store_for(save_dir, "save_dir")  # refused before anything is written there
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.logger = logger  # the package's own logger name, not fvcore's
        self.cfg = cfg
        self.load_options = LoadOptions.from_cfg(cfg)
        self.last_report: Optional[LoadReport] = None
        warn_unused_hooks(type(self), EfficientDetectionCheckpointer)

    @classmethod
    def from_config(cls, cfg, model, save_dir: str = "", **checkpointables: Any) -> Dict[str, Any]:
        """The constructor's keyword arguments for ``cfg`` (``build_checkpointer`` uses it)."""
        return {"model": model, "save_dir": save_dir, "cfg": cfg, **checkpointables}

    # ------------------------------------------------------------------ loading
    def resume_or_load(self, path: str, *, resume: bool = True, **options: Any) -> Dict[str, Any]:
        """As the stock method; ``options`` are the keyword options of :meth:`load`.

        Resuming from this run's own ``last_checkpoint`` restores every model key unless
        ``CHECKPOINT.LOAD.SELECT_ON_RESUME`` is set or keys are selected in ``options``:
        INCLUDE/EXCLUDE/RENAME in a config describe how to take ``MODEL.WEIGHTS`` into
        this model, and a checkpoint of this model needs none of it. The file is chosen by
        the resume rule (``docs/resume.md``); under several processes, with
        ``CHECKPOINT.LOAD.BROADCAST_FROM_MAIN``, only the main process reads it.
        """
        distributed = self._collective and comm.get_world_size() > 1
        if not (distributed and self.load_options.broadcast_from_main):
            return self._resume_or_load(path, resume, options, distributed)
        out, self.last_report = load_on_main(
            lambda: self._resume_or_load(path, resume, options, False),
            self.model,
            self.checkpointables,
            lambda: self.last_report,
        )
        return out

    def _resume_or_load(
        self, path: str, resume: bool, options: Dict[str, Any], distributed: bool
    ) -> Dict[str, Any]:
        saver = self.saver if self.save_to_disk and self.save_dir else None
        if resume and self.save_dir:
            own = dict(options)  # MODEL.WEIGHTS, if nothing is resumed, keeps the selection
            if not self.load_options.select_on_resume:
                for key in ("include", "exclude", "rename"):
                    own.setdefault(key, ())
            resumed = resume_from_directory(
                self.save_dir,
                lambda p, skipped: self._load(
                    self._request(p, own, same_architecture=True, skipped_files=skipped), False
                ),
                clean=saver.clean_stale if saver is not None else None,
                distributed=distributed,
                writes_suffix=saver.options.suffix if saver is not None else "",
                log=self.logger,
            )
            if resumed is not None:
                if saver is not None:
                    saver.continue_run(resumed.run)
                return resumed.result
            self.last_report = None  # not the report of a file the rule passed over
        if saver is not None:
            saver.start_run()  # nothing resumed: a new run
        return self._load(self._request(path, options, checkpointables=[]), distributed)

    def load(
        self,
        path: str,
        checkpointables: Optional[List[str]] = None,
        *,
        include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None,
        rename: Optional[Sequence[Sequence[str]]] = None,
        mmap: Optional[bool] = None,
        weights_only: Optional[bool] = None,
        map_location: Optional[str] = None,
        on_mismatch: Optional[str] = None,
        allow_mismatch: Optional[Sequence[str]] = None,
    ) -> Dict[str, Any]:
        """Load a checkpoint into the model and (some of) the checkpointables.

        Args:
            path: file path or URL; ``?matching_heuristics=True`` may follow. Empty loads
                nothing.
            checkpointables: names of checkpointables to restore; ``None`` means those in
                ``CHECKPOINT.LOAD.CHECKPOINTABLES``. For the ``trainer`` entry the names
                ``optimizer``, ``scheduler``, ``iteration``, ``hooks`` and ``scaler`` select
                its parts.
            include, exclude, rename, mmap, weights_only, map_location, on_mismatch,
                allow_mismatch: override ``CHECKPOINT.LOAD`` for this call.

        Returns:
            The checkpoint entries that were not consumed, as the stock class does.

        Raises:
            CheckpointFormatError: missing, truncated or unknown file; no model entry.
            UnsafeCheckpointError: the file needs pickle globals outside the allowlist.
            PartialLoadError: the copy into the model failed midway.
            CheckpointPolicyError: ``on_mismatch`` is ``"error"`` and keys outside
                ``allow_mismatch`` are missing, unexpected or of another shape; raised after
                the model weights were copied and before any checkpointable is restored.
        """
        given = dict(locals())  # the keyword arguments: the LoadOptions fields they override
        overrides = {k: v for k, v in given.items() if k not in ("self", "path", "checkpointables")}
        distributed = self._collective and comm.get_world_size() > 1
        return self._load(self._request(path, overrides, checkpointables), distributed)

    def plan(self, path: str, **options: Any) -> LoadReport:
        """The report of loading ``path`` into the model, without reading any weights.

        ``options`` are :meth:`load`'s; the model is unchanged, no report file is written,
        and a broken policy is recorded in ``report.policy``, not raised (``diff`` uses it).
        """
        request = self._request(path, options, checkpointables=[], copy=False)
        report = run_load(self._open(request), self.model, {}, request, cfg=self.cfg).report
        self.last_report = report
        return report

    def _request(
        self, path: str, options: Dict[str, Any], checkpointables: Optional[List[str]] = None,
        **fields: Any,
    ) -> LoadRequest:  # fmt: skip
        opts = self.load_options.override(**options)
        if checkpointables is None:  # the configured parts, plus other registered entries
            checkpointables = default_checkpointables(
                self.checkpointables, opts.checkpointables, LoadOptions().checkpointables
            )
        path, heuristics = parse_checkpoint_url(path)
        if path and not is_remote(path):  # a local file (iopath's URLs are fetched)
            path = self.path_manager.get_local_path(path)
        return LoadRequest(path, opts, tuple(checkpointables), heuristics, **fields)

    def _load(self, request: LoadRequest, check_ranks: bool) -> Dict[str, Any]:
        if not request.path:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            self.last_report = None
            return {}
        self.logger.info(f"[EfficientDetectionCheckpointer] Loading from {request.path} ...")
        if check_ranks:
            every_rank_reads(request.path)
        self.last_report = None
        result = run_load(
            self._open(request), self.model, self.checkpointables, request,
            cfg=self.cfg, publish=self._publish, log=self.logger,
        )  # fmt: skip
        return result.extra

    def _open(self, request: LoadRequest) -> Source:
        # The built-in reader, or a subclass's _load_file (fvcore's extension point).
        own = overrides(type(self), EfficientDetectionCheckpointer, "_load_file")
        return open_request(request, self.load_options, self._load_file if own else None)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """fvcore's hook: the file's entries, read lazily and safely (``CHECKPOINT.LOAD``)."""
        return CheckpointDict.of(open_source(filename, self.load_options))

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        """fvcore's hook, for callers of fvcore's steps: copy ``checkpoint["model"]`` in."""
        path = getattr(checkpoint, "path", "")
        request = LoadRequest(path, self.load_options)
        result = run_load(source_of(path, checkpoint, type(self).__name__), self.model, {}, request)
        checkpoint.pop("model")
        self.last_report = result.report
        return result.incompatible

    def _publish(self, report: LoadReport) -> None:
        # Once per load (see load/pipeline.py): the report is kept, and written as JSON.
        self.last_report = report
        if comm.is_main_process():
            out_dir = self.cfg.get("OUTPUT_DIR", "") if self.cfg is not None else ""
            write_report_json(report, out_dir or self.save_dir)

    @property
    def restored_iteration(self) -> bool:
        """Whether the last load restored the trainer's iteration counter."""
        parts = self.last_report.checkpointables if self.last_report is not None else {}
        return parts.get("trainer.iteration") == "restored"
