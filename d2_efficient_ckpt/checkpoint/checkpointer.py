"""``EfficientDetectionCheckpointer``: a drop-in replacement for ``DetectionCheckpointer``.

Differences from the stock class, all on by default and all configurable:
    * lazy reads: torch zip files are memory-mapped, safetensors read key by key;
    * safe reads: pickles are limited to tensors, numpy arrays and containers;
    * selective keys (INCLUDE/EXCLUDE/RENAME) and selective checkpointables;
    * device-mapped restore: tensors go straight into the model's parameters on their device,
      optimizer state onto its parameter's device, with no full host copy.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import ParseResult, parse_qs, urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm
from fvcore.common.checkpoint import _IncompatibleKeys
from torch.nn.parallel import DistributedDataParallel

from .build import CHECKPOINTER_REGISTRY
from .errors import (
    ArchitectureMismatchError,
    CheckpointConfigError,
    CheckpointFormatError,
    PartialLoadError,
)
from .explain.base import explain
from .formats import open_checkpoint
from .formats.tensors import as_tensor, dtype_of, shape_of
from .keys.plan import KeyPlan, architecture_difference, plan_keys
from .keys.selection import KeySelector
from .options import LoadOptions
from .report.load_report import LoadReport
from .report.policy import check_policy, enforce_policy
from .restore.arena import HostArena
from .restore.device import resolve_map_location
from .restore.model import copy_into_model
from .restore.parity import (
    clean_metadata,
    count_params,
    default_checkpointables,
    rename_metadata,
    resizable_keys,
    resolve_missing,
    tied_keys,
)
from .restore.parts import TRAINER_PARTS, select_trainer_state, trainer_entry_problem
from .restore.state import materialize, tensors_in
from .save import check_cheap, describe_skipped, plan_resume
from .save.atomic import atomic_write_bytes
from .save.checkpointer_side import SavingMixin
from .storage.mapped import FileReader, MappedFile

__all__ = ["EfficientDetectionCheckpointer"]

logger = logging.getLogger(__name__)


@dataclass
class _Load:
    """Everything one ``load()`` call needs between its steps; dropped when it ends.

    Attributes:
        options: the load options (config plus this call's keywords).
        wanted: checkpointables, or trainer parts, to restore.
        url: the path as parsed (its query may ask for matching heuristics).
        mapping: the mapped file its tensors view, for prefetching and checked reads.
        model_shapes: the model's key shapes, for the explanations.
        checkpoint_keys: the checkpoint's model keys as stored, for the explanations.
        device: where the checkpointables' tensors go (``CHECKPOINT.LOAD.MAP_LOCATION``),
            resolved once per load.
        arena: host memory for the restored checkpointables, faulted in while the model
            loads.
        same_architecture: refuse a checkpoint of another architecture before anything is
            restored (a resume).
    """

    options: LoadOptions
    wanted: List[str]
    url: Optional[ParseResult] = None
    mapping: Optional[MappedFile] = None
    model_shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    checkpoint_keys: List[str] = field(default_factory=list)
    device: Optional[torch.device] = None
    arena: Optional[HostArena] = None
    same_architecture: bool = False


@CHECKPOINTER_REGISTRY.register()
class EfficientDetectionCheckpointer(SavingMixin, DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` that loads lazily, safely and selectively.

    It has the stock constructor and methods; ``load`` and ``resume_or_load`` also take
    keyword options that override ``cfg.CHECKPOINT.LOAD``. After each load,
    ``last_report`` holds a :class:`LoadReport`.

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
        # A DDP-wrapped model means every rank loads together, so a collective check is safe;
        # a bare model may be loaded by one rank alone (e.g. for visualization).
        self._collective = isinstance(model, DistributedDataParallel)
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.logger = logger  # the package's own logger name, not fvcore's
        self.cfg = cfg
        self.load_options = LoadOptions.from_cfg(cfg)
        self.last_report: Optional[LoadReport] = None
        self._current: Optional[_Load] = None

    @classmethod
    def from_config(cls, cfg, model, save_dir: str = "", **checkpointables: Any) -> Dict[str, Any]:
        """The constructor's keyword arguments for ``cfg``, as detectron2's ``from_config``.

        ``build_checkpointer`` calls ``cls(**cls.from_config(cfg, model, save_dir, ...))``.
        """
        return {"model": model, "save_dir": save_dir, "cfg": cfg, **checkpointables}

    @property
    def _load_state(self) -> _Load:
        # Steps called outside load() (as some tests and subclasses do) get the defaults.
        if self._current is None:
            self._current = _Load(self.load_options, list(self.load_options.checkpointables))
        return self._current

    # ------------------------------------------------------------------ loading
    def resume_or_load(self, path: str, *, resume: bool = True, **options: Any) -> Dict[str, Any]:
        """As the stock method; ``options`` are the keyword options of :meth:`load`.

        Resuming from this run's own ``last_checkpoint`` restores every model key unless
        ``CHECKPOINT.LOAD.SELECT_ON_RESUME`` is set or keys are selected in ``options``:
        INCLUDE/EXCLUDE/RENAME in a config describe how to take ``MODEL.WEIGHTS`` into
        this model, and a checkpoint of this model needs none of it.
        """
        if resume:
            if self.save_to_disk and self.save_dir:
                self.saver.clean_stale()  # temporary files of a killed run
            own = dict(options)  # MODEL.WEIGHTS, if nothing is resumed, keeps the selection
            if not self.load_options.select_on_resume:
                for key in ("include", "exclude", "rename"):
                    own.setdefault(key, ())
            resumed = self._resume(own)
            if resumed is not None:
                return resumed
        else:
            self._start_run()  # a run started without --resume is a new run
        return self.load(path, checkpointables=[], **options)

    def _resume(self, options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        # The resume rule (save/fallback.py); a file that fails to load, or is of another
        # architecture, is skipped like a broken one and the rule is asked again.
        if not self.save_dir:
            return None
        broken: Dict[str, str] = {}
        while True:
            choice = plan_resume(self.save_dir, broken)
            if choice.skipped or choice.passed_over or choice.list_error:
                self.logger.warning(describe_skipped(choice))
            if choice.used is None:
                if choice.list_error:
                    raise CheckpointFormatError(
                        self.save_dir,
                        f"--resume cannot go on: {choice.list_error}, and the file "
                        "last_checkpoint names is not usable, so no earlier checkpoint of "
                        "this run can be found.",
                        "Fix the folder's permissions or storage, or train without --resume.",
                    )
                self._start_run()
                self.last_report = None  # not the report of a file the rule passed over
                return None
            path = os.path.join(self.save_dir, choice.used)
            self._note_other_format(choice.used)
            try:
                out = self._load_checked(path, options)
            except CheckpointFormatError as e:
                broken[choice.used] = getattr(e, "problem", "") or str(e)
                continue
            if self.save_to_disk:
                self.saver.continue_run(choice.run)
            if self.last_report is not None:
                self.last_report.skipped_files = list(choice.skipped)
                if comm.is_main_process() and choice.skipped:
                    self._write_report_json(self.last_report)
            return out

    def _start_run(self) -> None:
        if self.save_to_disk and self.save_dir:
            self.saver.start_run()

    def _note_other_format(self, name: str) -> None:
        suffix = self.saver.options.suffix
        if not name.endswith(suffix):
            self.logger.info(
                f"Resuming from {name}, although CHECKPOINT.SAVE.FORMAT writes {suffix} files: "
                "it is this run's newest checkpoint; the next saves use the configured format."
            )

    def _load_checked(self, path: str, options: Dict[str, Any]) -> Dict[str, Any]:
        """:meth:`load` of a resume: every checkpointable, and nothing restored from a file
        of another architecture."""
        options = dict(options)
        current = self._new_load(options.pop("checkpointables", None), options)
        current.same_architecture = True
        self._current = current
        try:
            return self._load(path)
        finally:
            self._current = None

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
        overrides = dict(
            include=include,
            exclude=exclude,
            rename=rename,
            mmap=mmap,
            weights_only=weights_only,
            map_location=map_location,
            on_mismatch=on_mismatch,
            allow_mismatch=allow_mismatch,
        )
        self._current = self._new_load(checkpointables, overrides)
        try:
            return self._load(path)
        finally:
            self._current = None

    def _new_load(self, checkpointables: Optional[List[str]], overrides: Dict[str, Any]) -> _Load:
        options = self.load_options.override(**overrides)
        if checkpointables is None:  # the configured parts, plus other registered entries
            checkpointables = default_checkpointables(
                self.checkpointables, options.checkpointables, LoadOptions().checkpointables
            )
        return _Load(options, list(checkpointables))

    def _load(self, path: str) -> Dict[str, Any]:
        # fvcore's sequence: file, model, incompatible keys, checkpointables.
        if not path:
            self.logger.info("No checkpoint found. Initializing model from scratch")
            self.last_report = None
            return {}
        self.logger.info(f"[EfficientDetectionCheckpointer] Loading from {path} ...")
        local = self._local_path(path)
        if os.path.isfile(local):  # a file this package saved: its size against its record
            check_cheap(local, require_record=False)
        checkpoint = self._load_file(local)
        self.last_report = LoadReport(path=local, format=checkpoint.pop("__format__", ""))
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        self._load_checkpointables(checkpoint, self._load_state.wanted, local)
        if comm.is_main_process():
            self._write_report_json(self.last_report)
        return checkpoint

    def _local_path(self, path: str) -> str:
        """A local file for ``path`` (URLs are fetched); every rank must be able to read it."""
        parsed = urlparse(path)
        self._load_state.url = parsed
        local = self.path_manager.get_local_path(parsed._replace(query="").geturl())
        if self._collective and comm.get_world_size() > 1:
            self._check_all_ranks_have(local)
        return local

    def _check_all_ranks_have(self, path: str) -> None:
        # Every rank reads the file itself (each to its own device), so all must see it.
        everyone = comm.all_gather(os.path.isfile(path))
        if not all(everyone):
            lacking = [rank for rank, has in enumerate(everyone) if not has]
            raise CheckpointFormatError(
                path,
                f"ranks {lacking} cannot read the file.",
                "Put checkpoints on storage that every machine mounts at the same path.",
            )

    def _load_file(self, filename: str) -> Dict[str, Any]:
        current = self._load_state
        opts = current.options
        opened = open_checkpoint(filename, mmap=opts.mmap, weights_only=opts.weights_only)
        current.mapping = opened.mapping
        model, rest = opened.split_model()
        problem = trainer_entry_problem(rest.get("trainer"))
        if problem:
            raise CheckpointFormatError(filename, problem)
        data = {"model": model, **rest}
        if current.url is not None:
            queries = parse_qs(current.url.query)
            if queries.pop("matching_heuristics", "False") == ["True"]:
                data["matching_heuristics"] = True
            if queries:
                raise CheckpointConfigError(
                    f"Unsupported query {queries} in checkpoint path {current.url.geturl()}; "
                    "only matching_heuristics=True is known."
                )
        lazy = "memory-mapped" if opened.lazy else "eager"
        safe = "weights only" if opts.weights_only else "UNSAFE pickle allowed"
        self.logger.info(f"Reading {filename} as {opened.format} ({lazy}, {safe}).")
        data["__format__"] = opened.format
        return data

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        current = self._load_state
        report = self.last_report = self.last_report or LoadReport()
        state = checkpoint.pop("model")
        model_sd = self.model.state_dict()
        current.model_shapes = {
            k: tuple(v.shape) for k, v in model_sd.items() if not torch.nn.parameter.is_lazy(v)
        }
        report.num_keys_model = len(model_sd)
        if checkpoint.get("matching_heuristics", False) is True:  # returned, as stock
            state = self._match_names(state, model_sd, checkpoint.get("__author__"))
        else:
            current.checkpoint_keys = list(state)  # the names as stored, for the explanations
        plan = self._plan(state, model_sd)
        if current.same_architecture:
            differs = architecture_difference(plan, len(model_sd))
            if differs:
                raise ArchitectureMismatchError(report.path or "checkpoint", differs)
        _record_plan(report, plan)
        to_copy = {key: as_tensor(state[ck]) for key, ck in plan.copy.items()}
        self._prefetch(to_copy, checkpoint, leaves_keys_out=bool(plan.skipped))
        # Module versions follow renamed keys; name matching built a state without them.
        metadata = rename_metadata(clean_metadata(getattr(state, "_metadata", None)), plan.names)
        with FileReader(current.mapping) as reader:
            report.loaded = copy_into_model(self.model, to_copy, metadata, reader)
        tied = tied_keys(self.model, model_sd)
        report.missing, report.tied, report.filled = resolve_missing(
            report.missing, report.loaded, self.model, metadata, tied
        )
        report.num_params_loaded = count_params(model_sd, report.loaded + list(report.tied), tied)
        report.num_params_model = count_params(model_sd, model_sd, tied)
        self._drop_expected_incompatibilities(report)
        return _IncompatibleKeys(
            missing_keys=list(report.missing),
            unexpected_keys=list(report.unexpected),
            incorrect_shapes=list(report.shape_mismatch),
        )

    def _match_names(self, state: Any, model_sd: Dict[str, Any], author: Any) -> Dict[str, Any]:
        # detectron2's name-matching heuristics need every tensor; zoo files are small.
        with FileReader(self._load_state.mapping) as reader:
            full = {k: reader.read(v) for k, v in state.items()}
        try:
            return align_and_update_state_dicts(model_sd, full, c2_conversion=author == "Caffe2")
        except AssertionError:  # detectron2 asserts that no two names become one
            raise CheckpointFormatError(
                self._load_state.url.geturl() if self._load_state.url else "checkpoint",
                "two of its names become one detectron2 name under the matching heuristics "
                "(e.g. Caffe2 blobs 'fc_w' and 'fc.w').",
                "Load a file whose names are unique after conversion.",
            ) from None

    def _plan(self, state: Any, model_sd: Dict[str, Any]) -> KeyPlan:
        """The key plan of this load (see ``keys/plan.py``), from shapes only."""
        opts = self._load_state.options
        lazy = torch.nn.parameter.is_lazy
        return plan_keys(
            {ck: (shape_of(state, ck), dtype_of(state, ck)) for ck in state},
            {k: (None if lazy(v) else tuple(v.shape), v.dtype) for k, v in model_sd.items()},
            KeySelector(opts.include, opts.exclude, opts.rename),
            resizable_keys(self.model, model_sd),  # observers, lazy tensors
        )

    def _prefetch(
        self, to_copy: Dict[str, Any], checkpoint: Dict[str, Any], leaves_keys_out: bool
    ) -> None:
        mapping = self._load_state.mapping
        if mapping is None:
            return
        if leaves_keys_out:
            mapping.read_only_what_is_used()
        mapping.prefetch(to_copy.values())
        # The entries a resume restores next are read from disk, and the host memory they go
        # to is faulted in, while the model copies.
        entries = self._wanted_entry_tensors(checkpoint)
        mapping.prefetch(entries)
        if self._checkpointable_device().type == "cpu":
            self._load_state.arena = HostArena.for_tensors(entries, prefault=True)

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        """Explain, then log (main process only), then enforce the policy (every rank).

        Replaces fvcore's per-key warnings by one table through ``self.logger`` and a JSON
        report in the output directory; see ``report/`` and ``explain/``.
        """
        report = self.last_report
        if report is None:
            super()._log_incompatible_keys(incompatible)
            return
        self._explain(report)
        self._log_report(report)
        self._enforce_policy(report)

    def _explain(self, report: LoadReport) -> None:
        current = self._load_state
        opts = current.options
        report.explanations = explain(
            report,
            model_shapes=current.model_shapes,
            ckpt_keys=current.checkpoint_keys or None,
            cfg=self.cfg,
        )
        check_policy(report, opts.on_mismatch, opts.allow_mismatch)  # fills report.policy

    def _log_report(self, report: LoadReport) -> None:
        if not comm.is_main_process():
            return
        loud = report.has_mismatch and self._load_state.options.on_mismatch != "ignore"
        self.logger.log(
            logging.WARNING if loud else logging.INFO,
            f"Checkpoint load report for {report.path}:\n{report.format_table()}",
        )

    def _enforce_policy(self, report: LoadReport) -> None:
        opts = self._load_state.options
        if not report.policy.get("broken"):
            return
        if comm.is_main_process():
            self._write_report_json(report)  # the load stops here; keep the evidence
        enforce_policy(report, opts.on_mismatch, opts.allow_mismatch)

    def _report_json_path(self, report: LoadReport) -> Optional[str]:
        out_dir = ""
        if self.cfg is not None and self.cfg.get("OUTPUT_DIR"):
            out_dir = self.cfg.OUTPUT_DIR
        out_dir = out_dir or self.save_dir
        if not out_dir or not report.path:
            return None
        stem = os.path.splitext(os.path.basename(report.path))[0] or "checkpoint"
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        return os.path.join(out_dir, f"load_report_{stem}.json")

    def _write_report_json(self, report: LoadReport) -> None:
        path = self._report_json_path(report)
        if path is None:
            return
        try:
            self.path_manager.mkdirs(os.path.dirname(path))
            # Atomic: a symlink planted under the report's name is replaced, not followed.
            atomic_write_bytes(path, report.to_json_bytes(), durable=False)
        except OSError as e:
            self.logger.warning(f"Could not write the load report {path}: {e}")

    def _drop_expected_incompatibilities(self, report: LoadReport) -> None:
        # pixel_mean/std come from the config anyway; cell_anchors became non-persistent
        # buffers, so old checkpoints carry them and new models don't.
        buffers = dict(self.model.named_buffers(recurse=False))
        report.missing = [
            k for k in report.missing if not (k in ("pixel_mean", "pixel_std") and k in buffers)
        ]
        report.unexpected = [
            k for k in report.unexpected if "anchor_generator.cell_anchors" not in k
        ]

    def _load_checkpointables(
        self, checkpoint: Dict[str, Any], wanted: List[str], path: str
    ) -> None:
        report = self.last_report
        device = self._checkpointable_device()
        report.map_location = str(device)
        parts = [w for w in wanted if w in TRAINER_PARTS or w == "hooks"]
        for key, obj in self.checkpointables.items():
            saved = checkpoint.get(key)
            if saved is None:
                report.checkpointables[key] = "absent"
                continue
            if key == "trainer" and isinstance(saved, dict) and hasattr(obj, "state_dict"):
                # The trainer entry bundles optimizer, scheduler, iteration, hooks and scaler.
                merged, status = select_trainer_state(
                    saved, obj.state_dict(), ["trainer"] if "trainer" in wanted else parts
                )
                report.checkpointables.update({f"trainer.{p}": s for p, s in status.items()})
                restored = [p for p, s in status.items() if s == "restored"]
                if not restored:
                    report.checkpointables[key] = "skipped"
                    continue
                whole = "skipped" not in status.values()
                self.logger.info(f"Loading trainer state ({', '.join(restored)}) from {path} ...")
                checkpoint.pop(key)
                # Restoring every part passes the saved state through untouched, so trainers
                # with extra state of their own get it back as with the stock class.
                self._restore(key, obj, saved if whole else merged, device, path)
                report.checkpointables[key] = "restored" if whole else "partial"
                continue
            if key not in wanted:
                report.checkpointables[key] = "skipped"
                continue
            self.logger.info(f"Loading {key} from {path} ...")
            self._restore(key, obj, checkpoint.pop(key), device, path)
            report.checkpointables[key] = "restored"

    def _checkpointable_device(self) -> torch.device:
        current = self._load_state
        if current.device is None:
            current.device = resolve_map_location(current.options.map_location, self.model)
        return current.device

    def _restore(self, key: str, obj: Any, state: Any, device: torch.device, path: str) -> None:
        """``obj.load_state_dict`` of a checkpointable; a failure names what was loaded."""
        try:
            obj.load_state_dict(self._materialize(state, device))
        except Exception as e:
            raise PartialLoadError(
                f"Restoring '{key}' from {path} failed ({type(e).__name__}: {e}). The model "
                "weights were already loaded, so the training state is half restored: fix or "
                f"replace the checkpoint, or leave '{key}' out of CHECKPOINT.LOAD.CHECKPOINTABLES."
            ) from e

    def _wanted_entry_tensors(self, checkpoint: Dict[str, Any]) -> List[torch.Tensor]:
        wanted = self._load_state.wanted
        out: List[torch.Tensor] = []
        for key in self.checkpointables:
            saved = checkpoint.get(key)
            if saved is None:
                continue
            if key == "trainer" and isinstance(saved, dict):
                parts = ["trainer"] if "trainer" in wanted else wanted
                saved, _ = select_trainer_state(saved, {}, parts)
            elif key not in wanted:
                continue
            out.extend(tensors_in(saved))
        return out

    def _materialize(self, state: Any, device: torch.device) -> Any:
        mapping = self._load_state.mapping
        if mapping is None:
            return materialize(state, device)
        if device.type != "cpu":
            mapping.prefetch(tensors_in(state))  # staged reads to the device
        with mapping.reader() as reader:
            return materialize(state, device, reader, self._load_state.arena)

    @property
    def restored_iteration(self) -> bool:
        """Whether the last load restored the trainer's iteration counter."""
        if self.last_report is None:
            return False
        return self.last_report.checkpointables.get("trainer.iteration") == "restored"


def _record_plan(report: LoadReport, plan: KeyPlan) -> None:
    """Copy the key plan's decisions into the report."""
    report.renamed = list(plan.renamed)
    report.skipped = dict(plan.skipped)
    report.unexpected = list(plan.unexpected)
    report.missing = list(plan.missing)
    report.shape_mismatch = list(plan.shape_mismatch)
    report.dtype_changed = list(plan.dtype_changed)
