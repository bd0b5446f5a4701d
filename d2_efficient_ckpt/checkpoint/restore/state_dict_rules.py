"""Decisions that make a load behave like fvcore's and detectron2's ``load_state_dict`` path.

The checkpointer decides key by key what to copy, before any tensor is read, so the cases
where torch, fvcore or detectron2 quietly adapt a key need rules of their own. Each function
here is one such rule, decided from the model's structure and names only:

* tied (reused) modules: one tensor reachable under several names (:func:`tied_keys`);
* tensors the module itself resizes when it loads them: quantization observers and
  uninitialized (lazy) parameters and buffers (:func:`resizable_keys`);
* module versions in ``_metadata``, which must follow the keys when they are renamed
  (:func:`rename_metadata`), and the keys old versions lack that the module fills in itself
  (:func:`filled_by_module`);
* checkpointables registered beyond the trainer, which a load restores as fvcore's does
  (:func:`default_checkpointables`).
"""

from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
from detectron2.layers import FrozenBatchNorm2d
from torch.ao.quantization import FakeQuantizeBase, ObserverBase
from torch.nn.modules.batchnorm import _NormBase  # adds the step counter of old versions
from torch.nn.parameter import is_lazy

__all__ = [
    "clean_metadata",
    "named_modules_with_aliases",
    "tied_keys",
    "loaded_through_ties",
    "count_params",
    "resizable_keys",
    "rename_metadata",
    "resolve_missing",
    "filled_by_module",
    "default_checkpointables",
]

# Modules whose _load_from_state_dict takes buffers of another shape and resizes its own
# (per-channel observers start empty and learn their channel count from the data).
_RESIZING_MODULES = (ObserverBase, FakeQuantizeBase)


def named_modules_with_aliases(
    model: nn.Module, prefix: str = ""
) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, module)`` for every module under every name, unlike ``named_modules()``,
    which yields a module reused under two names only once."""
    yield prefix, model
    for name, child in model._modules.items():
        if child is not None:
            yield from named_modules_with_aliases(child, f"{prefix}.{name}" if prefix else name)


def tied_keys(model: nn.Module, keys: Optional[Iterable[str]] = None) -> List[List[str]]:
    """Groups of state-dict keys that name one and the same parameter or buffer.

    A submodule held under two names (``self.b = self.a``) or a parameter assigned to two
    modules appears in ``state_dict()`` once per name.

    Args:
        model: the model.
        keys: restrict to these keys (e.g. ``model.state_dict()``, which leaves out
            non-persistent buffers); ``None`` keeps every name.

    Returns:
        Groups of two or more keys, each in ``state_dict()`` order.
    """
    wanted = set(keys) if keys is not None else None
    names: Dict[int, List[str]] = {}
    for prefix, module in named_modules_with_aliases(model):
        own = list(module._parameters.items()) + list(module._buffers.items())
        for name, tensor in own:
            if tensor is None:
                continue
            full = f"{prefix}.{name}" if prefix else name
            if wanted is None or full in wanted:
                names.setdefault(id(tensor), [])
                if full not in names[id(tensor)]:
                    names[id(tensor)].append(full)
    return [group for group in names.values() if len(group) > 1]


def loaded_through_ties(
    missing: Sequence[str], loaded: Iterable[str], groups: Sequence[Sequence[str]]
) -> Tuple[List[str], Dict[str, str]]:
    """Split missing keys into those still missing and those a tied key has loaded.

    fvcore does not report a missing key whose tensor was loaded under another name; neither
    do we. A key counts as loaded through a tie only when some other name of its tensor was
    written by this load.

    Args:
        missing: model keys the checkpoint lacks.
        loaded: model keys that were written.
        groups: as returned by :func:`tied_keys`.

    Returns:
        ``(still missing, {tied key: the loaded key it shares its tensor with})``.
    """
    written = set(loaded)
    source: Dict[str, str] = {}
    for group in groups:
        via = next((k for k in group if k in written), None)
        if via is not None:
            source.update({k: via for k in group if k not in written})
    return [k for k in missing if k not in source], {k: source[k] for k in missing if k in source}


def count_params(
    tensors: Mapping[str, torch.Tensor],
    keys: Iterable[str],
    groups: Sequence[Sequence[str]] = (),
) -> int:
    """Elements in ``tensors[k]`` for ``k`` in ``keys``, each tied tensor counted once.

    Uninitialized (lazy) tensors count as 0.
    """
    canonical = {k: group[0] for group in groups for k in group}
    seen: Set[str] = set()
    total = 0
    for key in keys:
        one = canonical.get(key, key)
        if one in seen or key not in tensors:
            continue
        seen.add(one)
        t = tensors[key]
        total += 0 if is_lazy(t) else t.numel()
    return total


def resizable_keys(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Set[str]:
    """Keys whose tensor the module resizes itself when it loads, so a shape difference is
    not a mismatch.

    These are uninitialized (lazy) parameters and buffers, which take the checkpoint's shape,
    and the buffers of quantization observers and fake-quantize modules (per-channel
    ``min_val``, ``max_val``, ``scale``, ``zero_point``), as fvcore allows.

    Args:
        model: the model.
        state: its ``state_dict()``.
    """
    observers = {
        prefix
        for prefix, module in named_modules_with_aliases(model)
        if isinstance(module, _RESIZING_MODULES)
    }
    out = {k for k, t in state.items() if is_lazy(t)}
    if observers:
        out.update(k for k in state if _owner(k) in observers)
    return out


def _owner(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


# The one entry of a module's _metadata that torch's and detectron2's modules read; a file
# can put others there (assign_to_params_buffers swaps a module's parameters for new
# tensors behind the optimizer's back), and they are dropped.
_METADATA_KEYS = ("version",)
_MAX_VERSION = 1 << 20


def clean_metadata(metadata: Any) -> Optional[Dict[str, Dict[str, int]]]:
    """The part of a checkpoint's ``_metadata`` that modules may see, or None.

    Only string module names mapping to ``{"version": n}`` with ``n`` a small natural number
    are kept: that is all ``_load_from_state_dict`` of torch's and detectron2's modules read.
    Any other key (``assign_to_params_buffers``, ...), value type (``"x"``, a bool, a huge
    integer) or shape is left out, so that a file cannot change how a module loads.
    """
    if not isinstance(metadata, dict):
        return None
    out: Dict[str, Dict[str, int]] = {}
    for name, entry in metadata.items():
        if type(name) is not str or not isinstance(entry, dict):
            continue
        kept = {
            k: v
            for k, v in entry.items()
            if k in _METADATA_KEYS and type(v) is int and 0 <= v <= _MAX_VERSION
        }
        out[name] = kept
    return out


def rename_metadata(metadata: Any, names: Mapping[str, str]) -> Any:
    """The ``_metadata`` of a state dict with its module prefixes renamed like its keys.

    ``_metadata`` maps module names (``""`` for the root) to ``{"version": n}``; modules read
    their version from it when they load. When keys are renamed (``module.`` stripped, RENAME
    rules), the entries must follow, or every module sees no version, as fvcore ensures for
    the ``module.`` prefix.

    Args:
        metadata: the checkpoint state dict's ``_metadata``, or ``None``.
        names: checkpoint key -> model key.

    Returns:
        A new mapping by model module names (the original entries of names no key maps are
        kept), or ``None`` when ``metadata`` is ``None``.
    """
    if metadata is None:
        return None
    moved: Dict[str, str] = {}
    for ck, key in names.items():
        old, new = _owner(ck), _owner(key)
        if old != new:
            moved.setdefault(old, new)
    if not moved:
        return metadata
    out = type(metadata)() if isinstance(metadata, dict) else {}
    for name, value in metadata.items():
        if name not in moved:
            out.setdefault(name, value)
    for name, value in metadata.items():
        if name in moved:
            out[moved[name]] = value
    # The wrapped model ("module") becomes the root when the wrapper's prefix is stripped.
    if "module" in metadata and all(k == "module" or k.startswith("module.") for k in moved):
        out[""] = metadata["module"]
    return out


def resolve_missing(
    missing: Sequence[str],
    loaded: Iterable[str],
    model: nn.Module,
    metadata: Any,
    groups: Sequence[Sequence[str]],
) -> Tuple[List[str], Dict[str, str], Dict[str, str]]:
    """Missing keys after :func:`loaded_through_ties` and :func:`filled_by_module`.

    Returns:
        ``(still missing, {key: tied key it was loaded through}, {key: why the module set
        it})``.
    """
    loaded = list(loaded)
    missing, tied = loaded_through_ties(missing, loaded, groups)
    filled = filled_by_module(missing, model, metadata, loaded)
    return [k for k in missing if k not in filled], tied, filled


def filled_by_module(
    missing: Sequence[str], model: nn.Module, metadata: Any, loaded: Iterable[str]
) -> Dict[str, str]:
    """Missing keys that the module sets itself because the checkpoint predates them.

    torch and detectron2 upgrade old state dicts while loading: a BatchNorm of version < 2
    (or of no recorded version) gets ``num_batches_tracked`` = 0, a ``FrozenBatchNorm2d`` of
    version < 2 gets ``running_mean`` = 0 and ``running_var`` = 1. Caffe2 and pycls weights
    carry no version at all. fvcore's load reports none of these as missing; neither do we,
    for modules of which the checkpoint has other keys. A module the checkpoint lacks
    altogether (a block an R50 lacks and an R101 has) stays missing as a whole, where fvcore
    would report only its weights.

    Args:
        missing: model keys the checkpoint lacks.
        model: the model.
        metadata: ``_metadata`` by model module names (see :func:`rename_metadata`) or
            ``None``.
        loaded: model keys that were written.

    Returns:
        ``{key: why}`` for the keys the module fills in.
    """
    if not missing:
        return {}
    modules = dict(named_modules_with_aliases(model))
    present = {_owner(k) for k in loaded}
    out: Dict[str, str] = {}
    for key in missing:
        owner, leaf = _owner(key), key.rsplit(".", 1)[-1]
        module = modules.get(owner)
        version = (metadata or {}).get(owner, {}).get("version", None)
        old = version is None or version < 2
        if not old or module is None or owner not in present:
            continue
        seen = "no version" if version is None else f"version {version}"
        why = f"{type(module).__name__} ({seen} in the checkpoint)"
        if isinstance(module, FrozenBatchNorm2d) and leaf in ("running_mean", "running_var"):
            out[key] = why
        elif (
            isinstance(module, _NormBase)
            and module.track_running_stats
            and leaf == "num_batches_tracked"
        ):
            out[key] = why
    return out


def default_checkpointables(
    registered: Iterable[str], configured: Sequence[str], default: Sequence[str]
) -> List[str]:
    """The checkpointables a load restores when it is given no list.

    fvcore restores every registered checkpointable. ``CHECKPOINT.LOAD.CHECKPOINTABLES``
    names the trainer's parts; while it is left at its default, every other registered
    checkpointable (an EMA state, say) is restored too. A list set in the config is taken as
    the complete choice.

    Args:
        registered: names of the checkpointer's checkpointables.
        configured: ``CHECKPOINT.LOAD.CHECKPOINTABLES``.
        default: its default value.
    """
    out = list(configured)
    if set(configured) == set(default):
        out += [name for name in registered if name not in out and name != "trainer"]
    return out
