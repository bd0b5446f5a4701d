"""The checkpointer registry and its builder."""

from typing import Any

import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

from .errors import UnknownCheckpointerError

__all__ = ["CHECKPOINTER_REGISTRY", "build_checkpointer"]

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
