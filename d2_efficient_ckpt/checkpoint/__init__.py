"""Checkpoint loading, selection, reporting and saving."""

from .build import CHECKPOINTER_REGISTRY, build_checkpointer
from .checkpointer import EfficientDetectionCheckpointer

__all__ = ["CHECKPOINTER_REGISTRY", "build_checkpointer", "EfficientDetectionCheckpointer"]
