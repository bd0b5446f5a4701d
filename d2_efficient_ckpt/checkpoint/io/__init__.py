"""Bytes to tensors and back: checkpoint formats, the safe unpickler, checked reads, writers.

Nothing here knows about models, reports or trainers; it imports nothing above it.
"""

from .readers import OpenedCheckpoint, detect_format, open_checkpoint

__all__ = ["OpenedCheckpoint", "detect_format", "open_checkpoint"]
