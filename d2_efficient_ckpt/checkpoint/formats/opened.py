"""What opening a checkpoint gives, whatever its format: :class:`OpenedCheckpoint`.

Every format's opener returns one: the file's top-level entries (tensors still backed by the
file where the format allows), how it was read, and the mapping its tensors view.
:meth:`OpenedCheckpoint.split_model` checks the model entry in one place for the loader and
every tool; :class:`ReadingStateDict` is a model whose values are read into fresh memory.
"""

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointFormatError
from ..storage.mapped import FileReader, MappedFile
from .messages import short_text

__all__ = ["LazyStateDict", "OpenedCheckpoint", "ReadingStateDict"]

_ARRAYS = (torch.Tensor, np.ndarray)


class LazyStateDict(Mapping):
    """A state dict over a file's index: shapes and dtypes without data, values all tensors.

    The values are views of the file, given only for the keys asked for; read their data
    through :meth:`OpenedCheckpoint.reader`.
    """

    @abc.abstractmethod
    def shape(self, key: str) -> Tuple[int, ...]:
        """Shape of ``key`` without touching its data."""

    @abc.abstractmethod
    def dtype(self, key: str) -> torch.dtype:
        """dtype of ``key`` without touching its data."""


@dataclass
class OpenedCheckpoint:
    """A checkpoint's top-level entries plus how they were read.

    Attributes:
        data: entries such as ``model``, ``trainer``, ``iteration``; ``data["model"]`` maps
            key to tensor (or numpy array for zoo pickles) and may be lazy.
        format: one of ``torch-zip``, ``torch-legacy``, ``safetensors``, ``pkl-detectron2``,
            ``pkl-caffe2``, ``pyth``.
        lazy: whether tensors are still backed by the file (read on first use).
        mapping: the file mapping its tensors view, when known, for prefetching and reading.
    """

    path: str
    data: Dict[str, Any]
    format: str
    lazy: bool
    metadata: Dict[str, str] = field(default_factory=dict)
    mapping: Optional[MappedFile] = None

    def reader(self) -> FileReader:
        """A :class:`FileReader` for this checkpoint's tensors (use as a context manager).

        Always read tensor values through it: it reads lazy tensors from the file with
        length-checked reads and fails cleanly if the file changed since it was opened.
        """
        return FileReader(self.mapping)

    def read_model(self) -> Tuple["ReadingStateDict", Dict[str, Any]]:
        """Like :meth:`split_model`, with model values read into fresh memory on access."""
        model, rest = self.split_model()
        return ReadingStateDict(model, self.mapping), rest

    def split_model(self) -> Tuple[Mapping, Dict[str, Any]]:
        """The model state dict and the other entries, checked.

        A file with a ``model`` entry gives that entry; a bare state dict (every value a
        tensor or array), as the stock class accepts, is the model itself.

        Raises:
            CheckpointFormatError: not a dict, no model entry, or a model entry that is not
                a map from string keys to tensors or arrays.
        """
        data = self.data
        if not isinstance(data, dict):
            raise CheckpointFormatError(self.path, f"it holds a {type(data).__name__}, not a dict.")
        if "model" in data:
            model, rest = data["model"], {k: v for k, v in data.items() if k != "model"}
        elif data and all(isinstance(v, _ARRAYS) for v in data.values()):
            model, rest = data, {}
        else:
            raise CheckpointFormatError(
                self.path,
                f"it has no 'model' entry and is not a state dict (entries: "
                f"{', '.join(short_text(k) for k in list(data)[:10])}).",
                "Pass a checkpoint written by a Checkpointer or a model state dict.",
            )
        self._check_model(model)
        return model, rest

    def _check_model(self, model: Any) -> None:
        if not isinstance(model, Mapping):
            raise CheckpointFormatError(
                self.path, f"its 'model' entry is a {type(model).__name__}, not a state dict."
            )
        bad_key = next((k for k in model if not isinstance(k, str)), None)
        if bad_key is not None:
            raise CheckpointFormatError(
                self.path, f"its model has a key that is not a string: {short_text(bad_key, 60)}."
            )
        if not isinstance(model, LazyStateDict):  # its values are tensors by design
            bad = next((k for k, v in model.items() if not isinstance(v, _ARRAYS)), None)
            if bad is not None:
                raise CheckpointFormatError(
                    self.path,
                    f"model key '{bad}' holds a {type(model[bad]).__name__}, not a tensor.",
                )


class ReadingStateDict(Mapping):
    """A state dict whose values are read (length-checked) into fresh tensors on access.

    Shapes and dtypes come without reading any data. For tools that touch every value once
    (convert, strip, diff): nothing they hold views the file, so a file that changes under
    them gives a clean error.
    """

    def __init__(self, state: Mapping, mapping: Optional[MappedFile]):
        self._state, self._mapping = state, mapping

    def shape(self, key: str) -> Tuple[int, ...]:
        """Shape of ``key`` without reading its data."""
        if isinstance(self._state, LazyStateDict):
            return self._state.shape(key)
        return tuple(self._state[key].shape)

    def dtype(self, key: str) -> Optional[torch.dtype]:
        """dtype of ``key`` without reading its data."""
        if isinstance(self._state, LazyStateDict):
            return self._state.dtype(key)
        value = self._state[key]
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.reshape(-1)[:0]).dtype
        return value.dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        with FileReader(self._mapping) as reader:
            return reader.read(self._state[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)
