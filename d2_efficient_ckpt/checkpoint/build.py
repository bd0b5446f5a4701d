"""The checkpointer registry and its builder."""

from typing import Any

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

from .errors import CheckpointConfigError, UnknownCheckpointerError
from .storage.registry import scheme_of, store_for

__all__ = ["CHECKPOINTER_REGISTRY", "build_checkpointer", "checkpoint_dir"]

CHECKPOINTER_REGISTRY = Registry("CHECKPOINTER")
CHECKPOINTER_REGISTRY.__doc__ = """
Registry for checkpointer classes, selected by ``cfg.CHECKPOINT.NAME``.

A registered object is called as ``obj(model, save_dir, cfg=cfg, **checkpointables)`` and
must return a :class:`detectron2.checkpoint.DetectionCheckpointer` (or a subclass), so that
it can replace the stock class anywhere detectron2 uses one. A class may instead define a
``from_config(cfg, model, save_dir, **checkpointables)`` classmethod that returns its
constructor's keyword arguments, as detectron2's ``@configurable`` classes do; it is then
built as ``cls(**cls.from_config(...))``.
"""


def build_checkpointer(
    cfg: CfgNode, model: nn.Module, save_dir: str = "", **checkpointables: Any
) -> DetectionCheckpointer:
    """Build the checkpointer named by ``cfg.CHECKPOINT.NAME``.

    Args:
        cfg: a config that went through ``add_efficient_ckpt_config``.
        model: the model to load into and save; may be wrapped in DDP.
        save_dir: directory for saved checkpoints and ``last_checkpoint``.
        **checkpointables: other objects with ``state_dict``/``load_state_dict``, such as
            ``trainer=weakref.proxy(trainer)``.

    Returns:
        The checkpointer instance.

    Raises:
        UnknownCheckpointerError: (a ``KeyError``) when the name is not registered; the
            message lists the registered names.
    """
    name = cfg.CHECKPOINT.NAME
    try:
        cls = CHECKPOINTER_REGISTRY.get(name)
    except KeyError:
        known = ", ".join(sorted(k for k, _ in CHECKPOINTER_REGISTRY))
        raise UnknownCheckpointerError(
            f"Checkpointer '{name}' (cfg.CHECKPOINT.NAME) is not registered! "
            f"Registered checkpointers are: {known}. Register a class with "
            f"@CHECKPOINTER_REGISTRY.register() or fix the name."
        ) from None
    if hasattr(cls, "from_config"):
        return cls(**cls.from_config(cfg, model, save_dir, **checkpointables))
    return cls(model, save_dir, cfg=cfg, **checkpointables)


def checkpoint_dir(cfg: CfgNode) -> str:
    """Where a run's checkpoints go: ``CHECKPOINT.DIR``, or ``OUTPUT_DIR`` when it is "".

    ``OUTPUT_DIR`` must be a local folder: detectron2 writes its logs, metrics and events
    there with plain file calls. ``CHECKPOINT.DIR`` may be a URL of a store
    (``s3://bucket/prefix``). Both are checked before anything is built or written.

    Raises:
        CheckpointConfigError: ``OUTPUT_DIR`` is a URL, or ``CHECKPOINT.DIR`` is on storage
            no store handles.
    """
    output = cfg.OUTPUT_DIR
    if scheme_of(output) is not None:
        raise CheckpointConfigError(
            f"OUTPUT_DIR {output} is a URL, but detectron2 writes its logs, metrics and events "
            "there as local files. Nothing was written. Set OUTPUT_DIR to a local folder and "
            f"put the checkpoints there with CHECKPOINT.DIR {output}."
        )
    directory = cfg.CHECKPOINT.get("DIR", "") or output
    store_for(directory, "CHECKPOINT.DIR" if directory != output else "OUTPUT_DIR")
    return directory
