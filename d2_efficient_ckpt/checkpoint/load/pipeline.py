"""One load as a pipeline: open -> plan -> prefetch -> copy -> report -> restore.

Each step takes what the previous ones returned and returns its own result; nothing is
kept between loads. :func:`run_load` runs the steps after the open step (see ``source``):

- **plan** decides everything from names and shapes: the key plan (``keys/plan.py``),
  whether the file is of this architecture (a resume), and which checkpointables and
  trainer parts are restored (``restore/checkpointables.py``). With ``copy=False`` the
  pipeline stops after the report: ``diff --config-file`` reads no weights.
- **prefetch** starts reading the bytes the copy and the restore need, and faults in the
  host memory the restored state goes to, while the model copies.
- **copy** writes the model's tensors from the file, with length-checked reads.
- **report** builds the :class:`LoadReport` once, with its explanations, and applies
  ``CHECKPOINT.LOAD.ON_MISMATCH`` once; a load the policy stops ends here, and a plan
  returns its report whatever the policy says.
- **restore** restores the checkpointables.

``publish`` is called once per load with the report: when the policy stops it, or at the
end (the checkpointer writes it as JSON).
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils import comm
from fvcore.common.checkpoint import _IncompatibleKeys

from ..errors import ArchitectureMismatchError, CheckpointFormatError
from ..explain.base import explain
from ..formats.tensors import as_tensor, dtype_of, shape_of
from ..keys.plan import KeyPlan, architecture_difference, plan_keys
from ..keys.selection import KeySelector
from ..options import LoadOptions
from ..report.load_report import LoadReport
from ..report.policy import PolicyOutcome, check_policy, raise_if_broken
from ..restore.arena import HostArena
from ..restore.checkpointables import RestorePlan, plan_restore, run_restore
from ..restore.device import resolve_map_location
from ..restore.model import copy_into_model
from ..restore.state_dict_rules import (
    clean_metadata,
    count_params,
    rename_metadata,
    resizable_keys,
    resolve_missing,
    tied_keys,
)
from ..storage.mapped import FileReader
from .source import Source

__all__ = ["LoadRequest", "LoadResult", "Planned", "plan_load", "run_load"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadRequest:
    """What one load is asked to do.

    Attributes:
        path: the local checkpoint file.
        options: ``CHECKPOINT.LOAD`` with this call's overrides.
        wanted: checkpointables, or trainer parts, to restore.
        matching_heuristics: detectron2's name matching (``?matching_heuristics=True``).
        same_architecture: refuse a file of another architecture before anything is
            restored (a resume).
        skipped_files: ``(file, reason)`` of checkpoints a resume passed over, for the report.
        copy: False plans and reports only: no weights are read or written.
    """

    path: str
    options: LoadOptions = LoadOptions()
    wanted: Tuple[str, ...] = ()
    matching_heuristics: bool = False
    same_architecture: bool = False
    skipped_files: Tuple[Tuple[str, str], ...] = ()
    copy: bool = True


@dataclass
class Planned:
    """The plan step's result.

    Attributes:
        keys: which checkpoint key goes into which model key.
        state: the model state the plan refers to (renamed under the matching heuristics).
        checkpoint_keys: the model keys as stored, for the explanations ([] when renamed).
        model_state: the model's state dict, taken once per load (the report counts with it).
        model_shapes: the model's key shapes, for the explanations.
        metadata: module versions for ``load_state_dict``, following renamed keys.
        restore: the checkpointables' side.
        device: where the checkpointables' tensors go.
    """

    keys: KeyPlan
    state: Mapping[str, Any]
    checkpoint_keys: List[str]
    model_state: Dict[str, Any]
    model_shapes: Dict[str, Tuple[int, ...]]
    metadata: Any
    restore: RestorePlan
    device: torch.device


@dataclass
class LoadResult:
    """What a load did.

    Attributes:
        report: the load report.
        policy: the outcome of ``CHECKPOINT.LOAD.ON_MISMATCH``.
        extra: the entries not consumed, as the stock ``load`` returns them.
        incompatible: fvcore's view of the incompatible keys.
    """

    report: LoadReport
    policy: PolicyOutcome
    extra: Dict[str, Any] = field(default_factory=dict)
    incompatible: Optional[_IncompatibleKeys] = None


def plan_load(
    source: Source, model: torch.nn.Module, checkpointables: Mapping[str, Any], request: LoadRequest
) -> Planned:
    """The plan step: decisions from names and shapes only.

    Raises:
        ArchitectureMismatchError: ``request.same_architecture`` and the file is of another
            architecture.
        CheckpointFormatError: the matching heuristics map two names to one.
    """
    model_sd = model.state_dict()
    lazy = torch.nn.parameter.is_lazy
    heuristics = request.matching_heuristics or source.entries.get("matching_heuristics") is True
    state: Mapping[str, Any]
    if heuristics:
        state, checkpoint_keys = _match_names(source, model_sd), []
    else:
        state, checkpoint_keys = source.state, list(source.state)
    keys = plan_keys(
        {ck: (shape_of(state, ck), dtype_of(state, ck)) for ck in state},
        {k: (None if lazy(v) else tuple(v.shape), v.dtype) for k, v in model_sd.items()},
        KeySelector(request.options.include, request.options.exclude, request.options.rename),
        resizable_keys(model, model_sd),  # observers, lazy tensors
    )
    if request.same_architecture:
        differs = architecture_difference(keys, len(model_sd))
        if differs:
            raise ArchitectureMismatchError(request.path or "checkpoint", differs)
    # Module versions follow renamed keys; name matching built a state without them.
    metadata = rename_metadata(clean_metadata(getattr(state, "_metadata", None)), keys.names)
    return Planned(
        keys=keys,
        state=state,
        checkpoint_keys=checkpoint_keys,
        model_state=model_sd,
        model_shapes={k: tuple(v.shape) for k, v in model_sd.items() if not lazy(v)},
        metadata=metadata,
        restore=plan_restore(source.entries, checkpointables, request.wanted),
        device=resolve_map_location(request.options.map_location, model),
    )


def _match_names(source: Source, model_sd: Dict[str, Any]) -> Dict[str, Any]:
    # detectron2's name-matching heuristics need every tensor; zoo files are small.
    with FileReader(source.mapping) as reader:
        full = {k: reader.read(v) for k, v in source.state.items()}
    author = source.entries.get("__author__")
    try:
        return align_and_update_state_dicts(model_sd, full, c2_conversion=author == "Caffe2")
    except AssertionError:  # detectron2 asserts that no two names become one
        raise CheckpointFormatError(
            source.path or "checkpoint",
            "two of its names become one detectron2 name under the matching heuristics "
            "(e.g. Caffe2 blobs 'fc_w' and 'fc.w').",
            "Load a file whose names are unique after conversion.",
        ) from None


def _prefetch(
    source: Source, planned: Planned, to_copy: Dict[str, torch.Tensor]
) -> Optional[HostArena]:
    mapping = source.mapping
    if mapping is None:
        return None
    if planned.keys.skipped:
        mapping.read_only_what_is_used()
    mapping.prefetch(to_copy.values())
    # The entries the restore takes next are read from disk, and the host memory they go
    # to is faulted in, while the model copies.
    mapping.prefetch(planned.restore.from_file)
    # A damaged record found during the copy would leave the model half-loaded: every check
    # the read bytes owe (a remote zip's record headers) runs before the first copy.
    mapping.check_owed([*to_copy.values(), *planned.restore.from_file])
    if planned.device.type == "cpu":
        return HostArena.for_tensors(planned.restore.from_file, prefault=True)
    return None


def _copy(
    source: Source, planned: Planned, model: torch.nn.Module, to_copy: Dict[str, torch.Tensor]
) -> List[str]:
    with FileReader(source.mapping) as reader:
        return copy_into_model(model, to_copy, planned.metadata, reader)


def build_report(
    source: Source,
    planned: Planned,
    model: torch.nn.Module,
    loaded: Sequence[str],
    request: LoadRequest,
    cfg: Any = None,
) -> LoadReport:
    """The report step's report: the model side of the load, explained."""
    keys = planned.keys
    model_sd = planned.model_state
    tied = tied_keys(model, model_sd)
    missing, tied_to, filled = resolve_missing(keys.missing, loaded, model, planned.metadata, tied)
    # pixel_mean/std come from the config anyway; cell_anchors became non-persistent
    # buffers, so old checkpoints carry them and new models don't.
    buffers = dict(model.named_buffers(recurse=False))
    report = LoadReport(
        path=request.path,
        format=source.format,
        loaded=list(loaded),
        missing=[k for k in missing if not (k in ("pixel_mean", "pixel_std") and k in buffers)],
        unexpected=[k for k in keys.unexpected if "anchor_generator.cell_anchors" not in k],
        shape_mismatch=list(keys.shape_mismatch),
        dtype_changed=list(keys.dtype_changed),
        skipped=dict(keys.skipped),
        tied=tied_to,
        filled=filled,
        renamed=list(keys.renamed),
        num_params_loaded=count_params(model_sd, list(loaded) + list(tied_to), tied),
        num_params_model=count_params(model_sd, model_sd, tied),
        num_keys_model=len(model_sd),
        skipped_files=list(request.skipped_files),
    )
    report.explanations = explain(
        report,
        model_shapes=planned.model_shapes,
        ckpt_keys=planned.checkpoint_keys or None,
        cfg=cfg,
    )
    return report


def run_load(
    source: Source,
    model: torch.nn.Module,
    checkpointables: Mapping[str, Any],
    request: LoadRequest,
    *,
    cfg: Any = None,
    publish: Optional[Callable[[LoadReport], None]] = None,
    log: logging.Logger = logger,
) -> LoadResult:
    """Plan, prefetch, copy, report and restore one opened checkpoint.

    Args:
        source: the open step's result (see ``source.open_source``).
        model: the (unwrapped) model to load into.
        checkpointables: the checkpointer's other objects, by name.
        request: what to do.
        cfg: the config, for the explanations' suggested settings.
        publish: called once with the report (see the module docstring).
        log: where the report's table goes (the checkpointer's logger).

    Raises:
        CheckpointPolicyError: ``on_mismatch`` is ``error`` and keys outside
            ``allow_mismatch`` differ; raised after the model weights were copied and before
            any checkpointable is restored.
        PartialLoadError: the copy or a restore failed midway.
    """
    planned = plan_load(source, model, checkpointables, request)
    loaded: List[str] = list(planned.keys.copy)
    arena = None
    if request.copy:
        to_copy = {key: as_tensor(planned.state[ck]) for key, ck in planned.keys.copy.items()}
        arena = _prefetch(source, planned, to_copy)
        loaded = _copy(source, planned, model, to_copy)
    report = build_report(source, planned, model, loaded, request, cfg)
    opts = request.options
    outcome = check_policy(report, opts.on_mismatch, opts.allow_mismatch)
    _log(report, opts.on_mismatch, log)
    if not request.copy:  # a plan: the report is the result, whatever the policy says
        return LoadResult(report, outcome, dict(source.entries), _incompatible(report))
    if outcome.broken:
        if publish is not None:
            publish(report)  # the load stops here; keep the evidence
        raise_if_broken(report, outcome)
    report.checkpointables = dict(planned.restore.statuses)
    report.map_location = str(planned.device)
    run_restore(planned.restore, planned.device, request.path, source.mapping, arena)
    if publish is not None:
        publish(report)
    consumed = set(planned.restore.consumed)
    extra = {k: v for k, v in source.entries.items() if k not in consumed}
    return LoadResult(report, outcome, extra, _incompatible(report))


def _log(report: LoadReport, on_mismatch: str, log: logging.Logger) -> None:
    if not comm.is_main_process():
        return
    loud = report.has_mismatch and on_mismatch != "ignore"
    log.log(
        logging.WARNING if loud else logging.INFO,
        f"Checkpoint load report for {report.path}:\n{report.format_table()}",
    )


def _incompatible(report: LoadReport) -> _IncompatibleKeys:
    return _IncompatibleKeys(
        missing_keys=list(report.missing),
        unexpected_keys=list(report.unexpected),
        incorrect_shapes=list(report.shape_mismatch),
    )
