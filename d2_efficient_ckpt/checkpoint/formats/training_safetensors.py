"""The pickle-free training checkpoint: named tensors in a ``.safetensors`` file, plus a
JSON skeleton of everything else (``CHECKPOINT.SAVE.FORMAT safetensors``).

The file is a standard safetensors file whose ``__metadata__`` holds ``{"format":
TRAINING_FORMAT, "tree": <json skeleton>}``: any safetensors reader lists and reads its
tensors. :func:`encode` splits a checkpoint (``{"model": state_dict, "trainer": {...}}``)
into tensors, each under a readable name (``model/backbone.fpn_output2.weight``,
``trainer/optimizer/state/3/momentum_buffer``), and a skeleton that records every
container, scalar and where each tensor goes; a state dict's ``_metadata`` (module
versions) is kept. :func:`decode` puts it back from any ``name -> tensor`` lookup, so a
reader may hand in lazy values. :func:`write_training_safetensors` writes the file;
:func:`open_safetensors` opens any ``.safetensors`` file, and for a training checkpoint
gives all its entries with the model as a lazy, selective :class:`TrainingModelView`.

The skeleton comes from the file and is checked as it is walked: known node kinds, scalar
dict keys, bounded nesting, and tensor names that exist; a bad one is an error naming the file.
Objects other than tensors, numpy arrays, dicts, lists, tuples, str, int, float, bool and
None cannot be stored: the error names their path.
"""

import json
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointFormatError, SaveConfigError
from ..storage.mapped import FileReader, MappedFile
from .opened import LazyStateDict, OpenedCheckpoint
from .safe_pickle import MAX_DEPTH
from .safe_pickle.allowlist import is_safe_key
from .safetensors import CODES, SafetensorsStateDict, encode_header, write_tensor_bytes

__all__ = [
    "TRAINING_FORMAT",
    "MODEL_PREFIX",
    "SkeletonError",
    "decode",
    "encode",
    "is_training_metadata",
    "open_safetensors",
    "TrainingModelView",
    "training_entries",
    "write_training_safetensors",
]

# The file's "format" metadata; a reader that sees it decodes the "tree" metadata.
TRAINING_FORMAT = "d2_efficient_ckpt.training/1"
# Model weights are stored as "model/<state dict key>".
MODEL_PREFIX = "model/"

# The torch dtypes numpy has a type for; an "ndarray" node over any other is refused.
_NUMPY_DTYPES = {
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.float32, torch.float64,
    torch.complex64, torch.complex128,
}  # fmt: skip
_SCALARS = (str, int, float, bool, type(None))
_NUMPY_SCALARS = (np.integer, np.floating, np.bool_)


class SkeletonError(ValueError):
    """The skeleton is not one that ``encode`` writes (unknown node, bad key, too deep)."""


def is_training_metadata(metadata: Mapping) -> bool:
    """Whether a safetensors file's ``__metadata__`` marks a training checkpoint."""
    return metadata.get("format") == TRAINING_FORMAT


# --- writing -------------------------------------------------------------------------------


class _Encoder:
    """One walk of :func:`encode`: the tensors found so far, by name."""

    def __init__(self) -> None:
        self.tensors: Dict[str, torch.Tensor] = {}

    def name_for(self, path: List[str]) -> str:
        base = "/".join(path) or "tensor"
        name, n = base, 1
        while name in self.tensors:  # keys such as 1 and "1" meet in one path
            n += 1
            name = f"{base}#{n}"
        return name

    def walk(self, obj: Any, path: List[str]) -> Any:
        if isinstance(obj, torch.Tensor):
            name = self.name_for(path)
            self.tensors[name] = obj.detach()
            return {"t": "tensor", "k": name}
        if isinstance(obj, np.ndarray):
            name = self.name_for(path)
            self.tensors[name] = torch.from_numpy(np.ascontiguousarray(obj))
            return {"t": "ndarray", "k": name}
        if isinstance(obj, dict):
            return self.mapping(obj, path)
        if isinstance(obj, (list, tuple)):
            kind = "list" if isinstance(obj, list) else "tuple"
            return {"t": kind, "v": [self.walk(v, path + [str(i)]) for i, v in enumerate(obj)]}
        if isinstance(obj, _SCALARS):
            return obj
        if isinstance(obj, _NUMPY_SCALARS):
            return obj.item()
        raise _unstorable(path, f"a {type(obj).__module__}.{type(obj).__qualname__}")

    def mapping(self, obj: dict, path: List[str]) -> Dict[str, Any]:
        items = []
        for key, value in obj.items():
            # The reader's key policy: what it would refuse is never written.
            if not isinstance(key, _SCALARS) or not is_safe_key(key):
                raise _unstorable(path, f"a dict key of type {type(key).__name__}")
            items.append([key, self.walk(value, path + [str(key)])])
        # Counter keeps its type: torch's MultiStepLR looks up missing milestones in it.
        kind = "odict" if isinstance(obj, OrderedDict) else "dict"
        out = {"t": "counter" if isinstance(obj, Counter) else kind, "items": items}
        meta = getattr(obj, "_metadata", None)
        if meta is not None:
            out["meta"] = self.walk(meta, path + ["_metadata"])
        return out


def encode(data: Any) -> Tuple[Dict[str, torch.Tensor], Any]:
    """Split ``data`` into ``(tensors by name, skeleton)``.

    Raises:
        SaveConfigError: a value that is not a tensor, array, container or scalar, or a
            dict key that is not a str, int, float, bool or None; the message names its path.
    """
    encoder = _Encoder()
    skeleton = encoder.walk(data, [])
    return encoder.tensors, skeleton


def _unstorable(path: List[str], what: str) -> SaveConfigError:
    where = "/".join(path) or "(the checkpoint itself)"
    return SaveConfigError(
        f"CHECKPOINT.SAVE.FORMAT safetensors cannot store {what} at '{where}' without pickle. "
        "Make that state_dict() return tensors, numbers, strings and containers, or use "
        "CHECKPOINT.SAVE.FORMAT pth."
    )


def write_training_safetensors(data: Any, f: BinaryIO) -> None:
    """Serialize ``data`` (a whole training checkpoint) into the file object ``f``.

    Tensors are written one at a time in name order; a GPU tensor is copied to the host
    only when it is written.

    Raises:
        SaveConfigError: a value that cannot be stored without pickle (see :func:`encode`).
        ValueError: a tensor dtype safetensors has no code for.
    """
    tensors, skeleton = encode(data)
    names = sorted(tensors)
    layout = []
    for name in names:
        t = tensors[name]
        code = CODES.get(t.dtype)
        if code is None:
            raise ValueError(f"safetensors cannot store '{name}' of dtype {t.dtype}.")
        layout.append((name, code, tuple(t.shape), t.numel() * t.element_size()))
    metadata = {"format": TRAINING_FORMAT, "tree": json.dumps(skeleton, separators=(",", ":"))}
    head, _ = encode_header(layout, metadata)
    f.write(head)
    for name in names:
        write_tensor_bytes(f, tensors[name].detach().to("cpu").contiguous())


# --- reading -------------------------------------------------------------------------------


class _Decoder:
    """One walk of :func:`decode` over a skeleton read from a file."""

    def __init__(
        self,
        tensor: Callable[[str], Any],
        array: Optional[Callable[[str], Any]],
        max_depth: int,
    ):
        self.tensor, self.array, self.max_depth = tensor, array, max_depth

    def walk(self, node: Any, depth: int) -> Any:
        if not isinstance(node, dict):
            if isinstance(node, list):
                raise SkeletonError("a bare JSON list in the skeleton")
            return node
        if depth > self.max_depth:
            raise SkeletonError(f"containers nested deeper than {self.max_depth}")
        kind = node.get("t")
        if kind in ("tensor", "ndarray"):
            return self.leaf(node, kind)
        if kind in ("dict", "odict", "counter"):
            return self.mapping(node, kind, depth)
        if kind in ("list", "tuple"):
            values = node.get("v")
            if not isinstance(values, list):
                raise SkeletonError(f"a {kind} node without values")
            items = [self.walk(v, depth + 1) for v in values]
            return items if kind == "list" else tuple(items)
        raise SkeletonError(f"unknown node {str(kind)[:40]!r}")

    def leaf(self, node: Dict[str, Any], kind: str) -> Any:
        name = node.get("k")
        if not isinstance(name, str):
            raise SkeletonError(f"a {kind} node without a name")
        if kind == "tensor":
            return self.tensor(name)
        if self.array is not None:
            return self.array(name)
        t = self.tensor(name)
        if t.dtype not in _NUMPY_DTYPES:
            raise SkeletonError(f"an array of dtype {t.dtype}, which numpy cannot hold")
        return t.numpy()

    def mapping(self, node: Dict[str, Any], kind: str, depth: int) -> Any:
        items = node.get("items")
        if not isinstance(items, list):
            raise SkeletonError(f"a {kind} node without items")
        out: Any
        if kind == "counter":
            out = Counter()
        else:
            out = OrderedDict() if kind == "odict" or "meta" in node else {}
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and is_safe_key(item[0])):
                raise SkeletonError(f"a {kind} item that is not [short scalar key, value]")
            out[item[0]] = self.walk(item[1], depth + 1)
        if "meta" in node:
            out._metadata = self.walk(node["meta"], depth + 1)
        return out


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
    return _Decoder(tensor, array, max_depth).walk(skeleton, 0)


class TrainingModelView(LazyStateDict):
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

    def __init__(self, tensors: LazyStateDict, names: Dict[str, str], metadata: Any = None):
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


class _FileTensors:
    """The lookups :func:`decode` gets for one file: names it lacks are a file error."""

    def __init__(self, path: str, tensors: LazyStateDict, mapping: Optional[MappedFile]):
        self.path, self.tensors, self.mapping = path, tensors, mapping

    def tensor(self, name: str) -> Any:
        if name not in self.tensors:
            raise _bad_tree(self.path, f"it names a tensor '{name[:200]}' the file does not hold")
        return self.tensors[name]

    def array(self, name: str) -> Any:
        t = self.tensor(name)
        if t.dtype not in _NUMPY_DTYPES:  # bfloat16, 8-bit floats: numpy has no such type
            raise _bad_tree(
                self.path,
                f"its array '{name[:200]}' has dtype {t.dtype}, which numpy cannot hold",
            )
        # Read length-checked: an array leaves the reader's control once handed out.
        with FileReader(self.mapping) as reader:
            return reader.read(t).numpy()


def _skeleton(path: str, metadata: Mapping) -> Dict[str, Any]:
    """The parsed skeleton of ``metadata``, its root checked to be a dict node."""
    try:
        skeleton = json.loads(metadata.get("tree", ""))
    except RecursionError:
        raise _bad_tree(path, "it is nested too deeply") from None
    except ValueError as e:
        raise _bad_tree(path, f"it is not valid JSON ({e})") from None
    if not (isinstance(skeleton, dict) and skeleton.get("t") in ("dict", "odict")):
        raise _bad_tree(path, "its root is not a dict")
    return skeleton


def _without_model(skeleton: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """``(model node or None, the root without it)``."""
    model_node = None
    rest: Dict[str, Any] = {"t": skeleton["t"], "items": []}
    for item in skeleton.get("items") or []:
        if isinstance(item, list) and len(item) == 2 and item[0] == "model":
            model_node = item[1]
        else:
            rest["items"].append(item)
    return model_node, rest


def training_entries(
    path: str, tensors: LazyStateDict, metadata: Mapping, mapping: Optional[MappedFile]
) -> Dict[str, Any]:
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
    model_node, rest = _without_model(_skeleton(path, metadata))
    lookups = _FileTensors(path, tensors, mapping)
    try:
        data = decode(rest, lookups.tensor, array=lookups.array)
        model = None
        if model_node is not None:
            model = _model_view(path, model_node, tensors, lambda n: decode(n, lookups.tensor))
    except SkeletonError as e:
        raise _bad_tree(path, str(e)) from None
    except RecursionError:
        raise _bad_tree(path, "it is nested too deeply") from None
    if model is not None:
        data = {"model": model, **data}
    return data


def _model_view(
    path: str, node: Any, tensors: LazyStateDict, decode_node: Callable[[Any], Any]
) -> TrainingModelView:
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


def open_safetensors(path: str, fmt: str, *, mmap: bool, weights_only: bool) -> OpenedCheckpoint:
    """Open a ``.safetensors`` file: its tensors as the model, or a training checkpoint's
    entries. Tensors are always views of a private mapping (``mmap``, ``weights_only``: a
    safetensors file holds no pickle)."""
    tensors = SafetensorsStateDict(path)
    data: Dict[str, Any] = {"model": tensors}
    if is_training_metadata(tensors.metadata):
        data = training_entries(path, tensors, tensors.metadata, tensors.mapped)
    return OpenedCheckpoint(
        path, data, fmt, lazy=True, metadata=tensors.metadata, mapping=tensors.mapped
    )
