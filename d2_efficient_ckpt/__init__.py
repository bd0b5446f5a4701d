"""d2_efficient_ckpt: efficient, selective, safe checkpointing and config-driven datasets for
Detectron2.

Importing the package registers its checkpointer(s) in ``CHECKPOINTER_REGISTRY`` and its
dataset formats in ``DATASET_FORMAT_REGISTRY``.
"""

from . import data  # noqa: F401  (registers the dataset formats)
from .checkpoint import CHECKPOINTER_REGISTRY, EfficientDetectionCheckpointer, build_checkpointer
from .config import add_efficient_ckpt_config

__version__ = "0.1.0"

__all__ = [
    "add_efficient_ckpt_config",
    "CHECKPOINTER_REGISTRY",
    "EfficientDetectionCheckpointer",
    "build_checkpointer",
]
