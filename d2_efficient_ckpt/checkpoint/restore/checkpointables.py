"""Which checkpointables a load restores, decided once, and restoring them.

:func:`plan_restore` is the one place a load decides, per registered checkpointable, whether
it is restored, left as it is or absent from the file, and, for detectron2's ``trainer``
entry, which of its parts (see ``parts``). The decision is made before anything is
restored, so the load report is complete when the policy is checked, and the tensors the
restore will read are known for prefetching. :func:`run_restore` then carries it out.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..errors import PartialLoadError
from .arena import HostArena
from .parts import TRAINER_PARTS, saved_parts, select_trainer_state
from .state import materialize, tensors_in

__all__ = ["RestoreJob", "RestorePlan", "plan_restore", "run_restore"]

logger = logging.getLogger(__name__)


@dataclass
class RestoreJob:
    """One ``load_state_dict`` call.

    Attributes:
        key: the checkpointable's name.
        obj: the checkpointable.
        state: what its ``load_state_dict`` gets (for a partial trainer restore, the saved
            parts merged into its current state).
        parts: the trainer parts restored, for the log line; empty for other entries.
    """

    key: str
    obj: Any
    state: Any
    parts: List[str] = field(default_factory=list)


@dataclass
class RestorePlan:
    """The checkpointables' side of one load.

    Attributes:
        statuses: per entry (and ``trainer.<part>``): restored, partial, skipped or absent;
            what the load report shows.
        jobs: the restores to run, in the checkpointables' order.
        from_file: the saved tensors the jobs read, for prefetching.
    """

    statuses: Dict[str, str] = field(default_factory=dict)
    jobs: List[RestoreJob] = field(default_factory=list)
    from_file: List[torch.Tensor] = field(default_factory=list)

    @property
    def consumed(self) -> List[str]:
        """The entries the jobs consume (not returned to the caller of ``load``)."""
        return [job.key for job in self.jobs]


def plan_restore(
    entries: Mapping[str, Any], checkpointables: Mapping[str, Any], wanted: Sequence[str]
) -> RestorePlan:
    """Decide what to restore from a checkpoint's non-model ``entries``.

    Args:
        entries: the checkpoint's entries other than the model.
        checkpointables: the checkpointer's registered objects, by name.
        wanted: checkpointables, or trainer parts (``optimizer``, ``scheduler``,
            ``iteration``, ``hooks``, ``scaler``, ``sampling``), to restore.
    """
    plan = RestorePlan()
    parts = ["trainer"] if "trainer" in wanted else [w for w in wanted if _is_part(w)]
    for key, obj in checkpointables.items():
        saved = entries.get(key)
        if saved is None:
            plan.statuses[key] = "absent"
        elif key == "trainer" and isinstance(saved, dict) and hasattr(obj, "state_dict"):
            _plan_trainer(plan, obj, saved, parts)
        elif key not in wanted:
            plan.statuses[key] = "skipped"
        else:
            plan.statuses[key] = "restored"
            plan.jobs.append(RestoreJob(key, obj, saved))
            plan.from_file.extend(tensors_in(saved))
    return plan


def _is_part(name: str) -> bool:
    return name in TRAINER_PARTS or name == "hooks"


def _plan_trainer(plan: RestorePlan, obj: Any, saved: Dict, parts: Sequence[str]) -> None:
    # The trainer entry bundles optimizer, scheduler, iteration, hooks and scaler.
    merged, status = select_trainer_state(saved, obj.state_dict(), parts)
    plan.statuses.update({f"trainer.{p}": s for p, s in status.items()})
    restored = [p for p, s in status.items() if s == "restored"]
    if not restored:
        plan.statuses["trainer"] = "skipped"
        return
    whole = "skipped" not in status.values()
    plan.statuses["trainer"] = "restored" if whole else "partial"
    # Restoring every part passes the saved state through untouched, so trainers with extra
    # state of their own get it back as with the stock class.
    plan.jobs.append(RestoreJob("trainer", obj, saved if whole else merged, restored))
    plan.from_file.extend(tensors_in(saved if whole else saved_parts(saved, status)))


def run_restore(
    plan: RestorePlan,
    device: torch.device,
    path: str,
    mapping: Optional[Any] = None,
    arena: Optional[HostArena] = None,
) -> None:
    """Run the plan's jobs: each state is copied onto ``device`` once, then loaded.

    Args:
        plan: from :func:`plan_restore`.
        device: where the checkpointables' tensors go.
        path: the checkpoint file, for messages.
        mapping: the file mapping the saved tensors view (checked reads), if any.
        arena: host memory made ahead of time for the restored tensors, if any.

    Raises:
        PartialLoadError: a ``load_state_dict`` failed; names what was loaded already.
    """
    for job in plan.jobs:
        if job.parts:
            logger.info(f"Loading trainer state ({', '.join(job.parts)}) from {path} ...")
        else:
            logger.info(f"Loading {job.key} from {path} ...")
        try:
            job.obj.load_state_dict(_materialize(job.state, device, mapping, arena))
        except Exception as e:
            raise PartialLoadError(
                f"Restoring '{job.key}' from {path} failed ({type(e).__name__}: {e}). The "
                "model weights were already loaded, so the training state is half restored: "
                "fix or replace the checkpoint, or leave "
                f"'{job.key}' out of CHECKPOINT.LOAD.CHECKPOINTABLES."
            ) from e


def _materialize(state: Any, device: torch.device, mapping: Any, arena: Any) -> Any:
    if mapping is None:
        return materialize(state, device)
    if device.type != "cpu":
        mapping.prefetch(tensors_in(state))  # staged reads to the device
    with mapping.reader() as reader:
        return materialize(state, device, reader, arena)
