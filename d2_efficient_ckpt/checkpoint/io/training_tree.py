"""Reading the pickle-free training checkpoint: named tensors plus a JSON skeleton.

A training checkpoint saved with ``CHECKPOINT.SAVE.FORMAT safetensors`` is a standard
``.safetensors`` file whose ``__metadata__`` holds ``{"format": TRAINING_FORMAT, "tree":
<json skeleton>}``. The skeleton records every container and scalar of the checkpoint and,
for each tensor, the name it is stored under (``model/<key>``, ``trainer/optimizer/...``).

:func:`decode` rebuilds the structure from any ``name -> tensor`` lookup, so the loader can
hand in lazy values (views of the file mapping). :func:`training_entries` does that for an
opened file and keeps the model lazy and selective: its entry is a :class:`TrainingModelView`
that answers shapes and dtypes from the header and gives a tensor only for the keys used.

The skeleton comes from the file and is checked as it is walked: known node kinds, scalar
dict keys, bounded nesting, and tensor names that exist; a bad one is an error naming the file.
"""

import json
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

from ..errors import CheckpointFormatError
from ..storage.mapped import FileReader
from .allowlist import is_safe_key
from .unpickler import MAX_DEPTH

__all__ = [
    "TRAINING_FORMAT",
    "MODEL_PREFIX",
    "SkeletonError",
    "decode",
    "is_training_metadata",
    "TrainingModelView",
    "training_entries",
]

# The torch dtypes numpy has a type for; an "ndarray" node over any other is refused.
_NUMPY_DTYPES = {
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.float32, torch.float64,
    torch.complex64, torch.complex128,
}  # fmt: skip

# The file's "format" metadata; a reader that sees it decodes the "tree" metadata.
TRAINING_FORMAT = "d2_efficient_ckpt.training/1"
# Model weights are stored as "model/<state dict key>".
MODEL_PREFIX = "model/"


class SkeletonError(ValueError):
    """The skeleton is not one that ``encode`` writes (unknown node, bad key, too deep)."""


def is_training_metadata(metadata: Mapping) -> bool:
    """Whether a safetensors file's ``__metadata__`` marks a training checkpoint."""
    return metadata.get("format") == TRAINING_FORMAT


def decode(
    skeleton: Any,
    tensor: Callable[[str], Any],
    *,
    array: Optional[Callable[[str], Any]] = None,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Rebuild the checkpoint from its skeleton.

    Args:
        skeleton: the parsed JSON skeleton.
        tensor: ``tensor(name)`` supplies each tensor; it may return lazy values.
        array: ``array(name)`` supplies numpy arrays; by default ``tensor(name).numpy()``.
        max_depth: containers nested deeper than this are refused.

    Raises:
        SkeletonError: the skeleton is malformed.
        KeyError: ``tensor`` or ``array`` raised it for a name the file lacks.
    """

    def walk(node: Any, depth: int) -> Any:
        if not isinstance(node, dict):
            if isinstance(node, (list, dict)):
                raise SkeletonError("a bare JSON list in the skeleton")
            return node
        if depth > max_depth:
            raise SkeletonError(f"containers nested deeper than {max_depth}")
        kind = node.get("t")
        if kind in ("tensor", "ndarray"):
            name = node.get("k")
            if not isinstance(name, str):
                raise SkeletonError(f"a {kind} node without a name")
            if kind == "tensor":
                return tensor(name)
            if array is not None:
                return array(name)
            t = tensor(name)
            if t.dtype not in _NUMPY_DTYPES:
                raise SkeletonError(f"an array of dtype {t.dtype}, which numpy cannot hold")
            return t.numpy()
        if kind in ("dict", "odict", "counter"):
            items = node.get("items")
            if not isinstance(items, list):
                raise SkeletonError(f"a {kind} node without items")
            if kind == "counter":
                out = Counter()
            else:
                out = OrderedDict() if kind == "odict" or "meta" in node else {}
            for item in items:
                if not (isinstance(item, list) and len(item) == 2 and is_safe_key(item[0])):
                    raise SkeletonError(f"a {kind} item that is not [short scalar key, value]")
                out[item[0]] = walk(item[1], depth + 1)
            if "meta" in node:
                out._metadata = walk(node["meta"], depth + 1)
            return out
        if kind in ("list", "tuple"):
            values = node.get("v")
            if not isinstance(values, list):
                raise SkeletonError(f"a {kind} node without values")
            items = [walk(v, depth + 1) for v in values]
            return items if kind == "list" else tuple(items)
        raise SkeletonError(f"unknown node {str(kind)[:40]!r}")

    return walk(skeleton, 0)


class TrainingModelView(Mapping):
    """The model entry of a training checkpoint: state dict keys to lazy tensors.

    Keys are the model's own (without ``model/``), in the order they were saved; values are
    the file's tensors, given only when asked for, so a selective load reads only the keys it
    uses. ``shape``/``dtype`` come from the header. ``_metadata`` holds the module versions
    ``load_state_dict`` uses.

    Args:
        tensors: the file's tensors by name, with ``shape(name)`` and ``dtype(name)``
            (a ``SafetensorsStateDict``).
        names: state dict key -> tensor name in the file.
        metadata: the state dict's ``_metadata``, if it had one.
    """

    def __init__(self, tensors: Mapping, names: Dict[str, str], metadata: Any = None):
        self._tensors, self._names = tensors, names
        if metadata is not None:
            self._metadata = metadata

    def shape(self, key: str) -> Tuple[int, ...]:
        """Shape of ``key`` without touching its data."""
        return tuple(self._tensors.shape(self._names[key]))

    def dtype(self, key: str) -> torch.dtype:
        """dtype of ``key`` without touching its data."""
        return self._tensors.dtype(self._names[key])

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[self._names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def training_entries(path: str, tensors: Mapping, metadata: Mapping, mapping: Any) -> Dict:
    """The checkpoint dict of an opened training ``.safetensors`` file.

    Args:
        path: the file, for error messages.
        tensors: its tensors by name (a ``SafetensorsStateDict``: lazy views of ``mapping``).
        metadata: its ``__metadata__`` (with :data:`TRAINING_FORMAT` and the skeleton).
        mapping: the ``MappedFile`` the tensors view; numpy arrays are read from it
            length-checked, since they leave the reader's control once handed out.

    Returns:
        ``{"model": TrainingModelView, "trainer": ..., "iteration": ..., ...}`` whose tensors
        are views of the file, to be read through ``OpenedCheckpoint.reader``.

    Raises:
        CheckpointFormatError: a skeleton that is not valid JSON or not well formed, a tensor
            name the file lacks, or a model entry that is not a map of names to tensors.
    """
    try:
        skeleton = json.loads(metadata.get("tree", ""))
    except RecursionError:
        raise _bad_tree(path, "it is nested too deeply") from None
    except ValueError as e:
        raise _bad_tree(path, f"it is not valid JSON ({e})") from None
    if not (isinstance(skeleton, dict) and skeleton.get("t") in ("dict", "odict")):
        raise _bad_tree(path, "its root is not a dict")

    def tensor(name: str) -> Any:
        if name not in tensors:
            raise _bad_tree(path, f"it names a tensor '{name[:200]}' the file does not hold")
        return tensors[name]

    def array(name: str) -> Any:
        t = tensor(name)
        if t.dtype not in _NUMPY_DTYPES:  # bfloat16, 8-bit floats: numpy has no such type
            raise _bad_tree(
                path, f"its array '{name[:200]}' has dtype {t.dtype}, which numpy cannot hold"
            )
        with FileReader(mapping) as reader:
            return reader.read(t).numpy()

    model_node = None
    rest: Dict[str, Any] = {"t": skeleton["t"], "items": []}
    for item in skeleton.get("items") or []:
        if isinstance(item, list) and len(item) == 2 and item[0] == "model":
            model_node = item[1]
        else:
            rest["items"].append(item)
    try:
        data = decode(rest, tensor, array=array)
        model = None
        if model_node is not None:
            model = _model_view(path, model_node, tensors, lambda node: decode(node, tensor))
    except SkeletonError as e:
        raise _bad_tree(path, str(e)) from None
    except RecursionError:
        raise _bad_tree(path, "it is nested too deeply") from None
    if model is not None:
        data = {"model": model, **data}
    return data


def _model_view(path: str, node: Any, tensors: Mapping, decode_node) -> TrainingModelView:
    if not (isinstance(node, dict) and node.get("t") in ("dict", "odict")):
        raise _bad_tree(path, "its model entry is not a state dict")
    names: Dict[str, str] = {}
    for item in node.get("items") or []:
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
        value = item[1] if ok else None
        if not (ok and isinstance(value, dict) and value.get("t") == "tensor"):
            raise _bad_tree(path, "its model entry holds something other than named tensors")
        name = value.get("k")
        if not isinstance(name, str) or name not in tensors:
            raise _bad_tree(path, f"model key '{item[0][:200]}' names no tensor of the file")
        names[item[0]] = name
    meta = decode_node(node["meta"]) if "meta" in node else None
    return TrainingModelView(tensors, names, meta)


def _bad_tree(path: str, problem: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        path,
        f"its training-checkpoint skeleton (metadata 'tree') is unusable: {problem}.",
        "The file is corrupt; resume from an earlier checkpoint or re-save it.",
    )
