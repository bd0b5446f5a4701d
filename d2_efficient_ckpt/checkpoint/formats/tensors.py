"""Checkpoint values without reading them: shapes, dtypes, and tensor views.

Lazy state dicts (safetensors) answer ``shape(key)`` and ``dtype(key)`` from their header;
other values are tensors or the numpy arrays of zoo pickles.
"""

from collections.abc import Mapping
from typing import Any, Optional, Tuple

import numpy as np
import torch

__all__ = ["as_tensor", "shape_of", "dtype_of"]


def as_tensor(value: Any) -> torch.Tensor:
    """A tensor view of a checkpoint value (numpy arrays from zoo pickles included)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"Unsupported type {type(value).__name__} in checkpoint")


def shape_of(state: Mapping, key: str) -> Tuple[int, ...]:
    """Shape of ``state[key]`` without reading its data where the mapping allows it."""
    if hasattr(state, "shape") and callable(state.shape):
        return tuple(state.shape(key))
    return tuple(state[key].shape)


def dtype_of(state: Mapping, key: str) -> Optional[torch.dtype]:
    """dtype of ``state[key]`` without reading its data where the mapping allows it."""
    if hasattr(state, "dtype") and callable(state.dtype):
        return state.dtype(key)
    v = state[key]
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v.reshape(-1)[:0]).dtype
    return getattr(v, "dtype", None)
