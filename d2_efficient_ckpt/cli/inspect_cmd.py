"""``inspect FILE``: what a checkpoint holds, without running unsafe pickle code."""

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Dict, Tuple

import numpy as np
import torch
from tabulate import tabulate

from ..checkpoint.errors import CheckpointFormatError, UnsafeCheckpointError
from ..checkpoint.formats import detect_format, open_checkpoint
from ..checkpoint.formats.messages import short_text
from ..checkpoint.formats.tensors import dtype_of, shape_of
from ..checkpoint.formats.training_safetensors import is_training_metadata
from .common import EXIT_OK, add_parser, emit, file_size, fmt_bytes, local_file

EXAMPLES = """\
  python -m d2_efficient_ckpt inspect output/model_final.pth
  python -m d2_efficient_ckpt inspect model_final_280758.pkl --json
"""


def register(sub, common) -> None:
    p = add_parser(
        sub,
        "inspect",
        "show format, entries, sizes, dtypes and iteration of a checkpoint",
        "Show a checkpoint's format, its entries (model, optimizer, trainer, ...) with key "
        "counts and bytes, a dtype histogram of the model, the iteration, and whether the "
        "file is pickle-free. Files that need unsafe pickle globals are reported, not loaded.",
        EXAMPLES,
        common,
    )
    p.add_argument("file", help="checkpoint: .pth/.pt, .safetensors, .pkl or .pyth")
    p.set_defaults(func=run)


def _count(value: Any) -> Tuple[int, int]:
    """(tensors, bytes) in a nested structure, reading no tensor data."""
    if isinstance(value, torch.Tensor):
        return 1, value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return 1, int(value.nbytes)
    if isinstance(value, Mapping):
        if hasattr(value, "shape") and callable(value.shape):  # lazy safetensors mapping
            total = 0
            for k in value:
                itemsize = torch.empty((), dtype=value.dtype(k)).element_size()
                total += int(np.prod(value.shape(k), dtype=np.int64)) * itemsize
            return len(value), total
        pairs = [_count(v) for v in value.values()]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    if isinstance(value, (list, tuple)):
        pairs = [_count(v) for v in value]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return 0, 0


def _entry(value: Any) -> Dict[str, Any]:
    tensors, nbytes = _count(value)
    out: Dict[str, Any] = {"type": type(value).__name__, "tensors": tensors, "bytes": nbytes}
    if isinstance(value, Mapping):
        out["type"] = "dict"
        out["keys"] = len(value)
    elif isinstance(value, (list, tuple)):
        out["keys"] = len(value)
    elif isinstance(value, (bool, int, float, str)) or value is None:
        out["value"] = _shown(value)
    return out


def _shown(value: Any) -> Any:
    # A number or string of the file as it can be printed and written as JSON.
    if isinstance(value, str) or (type(value) is int and not -(10**30) < value < 10**30):
        return short_text(value, 200)
    return value


def _dtypes(state: Mapping) -> Dict[str, Dict[str, int]]:
    hist: Dict[str, Dict[str, int]] = OrderedDict()
    for key in state:
        dtype = dtype_of(state, key)
        numel = int(np.prod(shape_of(state, key), dtype=np.int64))
        size = torch.empty((), dtype=dtype).element_size() if dtype is not None else 0
        row = hist.setdefault(str(dtype).replace("torch.", ""), {"tensors": 0, "params": 0})
        row["tensors"] += 1
        row["params"] += numel
        row["bytes"] = row.get("bytes", 0) + numel * size
    return hist


def _iteration(data: Dict[str, Any]) -> Any:
    if isinstance(data.get("iteration"), int):
        return _shown(data["iteration"])
    trainer = data.get("trainer")
    if isinstance(trainer, dict) and isinstance(trainer.get("iteration"), int):
        return _shown(trainer["iteration"])
    return None


def inspect_file(path: str) -> Dict[str, Any]:
    """Everything ``inspect`` shows, as a dict."""
    path = local_file(path)
    fmt = detect_format(path)
    info: Dict[str, Any] = {
        "file": path,
        "bytes": file_size(path),
        "format": fmt,
        "pickle_free": fmt == "safetensors",
        "safe": True,
        "unsafe_globals": [],
        "iteration": None,
        "entries": {},
        "dtypes": {},
        "metadata": {},
    }
    try:  # the loader's own parser, so inspect agrees with load() on every file
        opened = open_checkpoint(path, mmap=True, weights_only=True)
    except UnsafeCheckpointError as e:
        info.update(safe=False, unsafe_globals=e.globals_needed)
        return info
    info["format"] = opened.format
    info["metadata"] = dict(opened.metadata)
    if is_training_metadata(opened.metadata):
        info["training_checkpoint"] = True  # every entry pickle-free, decoded from "tree"
    data = opened.data if isinstance(opened.data, dict) else {"(top level)": opened.data}
    if "model" not in data:
        try:
            model, _ = opened.split_model()  # the loader's rule for a bare state dict
            data = {"model": model}
            info["bare_state_dict"] = True
        except CheckpointFormatError:
            pass  # not a model checkpoint: show its entries as they are
    info["entries"] = {short_text(k, 200): _entry(v) for k, v in data.items()}
    info["iteration"] = _iteration(data)
    if isinstance(data.get("model"), Mapping):
        try:  # the loader's check of the model entry, before any tensor is looked at
            model, _ = opened.split_model()
        except CheckpointFormatError as e:
            info["model_problem"] = str(e)
        else:
            info["dtypes"] = _dtypes(model)
    return info


def format_info(info: Dict[str, Any]) -> str:
    size = fmt_bytes(info["bytes"])
    training = info.get("training_checkpoint", False)
    if info["safe"]:
        safety = "pickle-free" if info["pickle_free"] else "loads with weights_only (no code runs)"
    else:
        safety = "UNSAFE: needs pickle globals " + ", ".join(info["unsafe_globals"])
    head = [
        ["file", f"{info['file']} ({size})"],
        ["format", info["format"] + (" (training checkpoint)" if training else "")],
        ["pickle-free", "yes" if info["pickle_free"] else "no"],
        ["safety", safety],
        ["iteration", "-" if info["iteration"] is None else info["iteration"]],
    ]
    lines = [tabulate(head, tablefmt="plain")]
    if not info["safe"]:
        lines.append(
            "Not loaded: reading it would run the pickle code above. If you trust the file, "
            "convert it in Python with torch.load(weights_only=False) and save the weights."
        )
        return "\n".join(lines)
    rows = []
    for name, e in info["entries"].items():
        shown = e.get("value", "")
        rows.append([name, e["type"], e.get("keys", ""), e["tensors"] or "", _b(e), shown])
    lines += ["", tabulate(rows, headers=["entry", "type", "keys", "tensors", "bytes", "value"])]
    if info["dtypes"]:
        rows = [
            [d, r["tensors"], f"{r['params']:,}", fmt_bytes(r["bytes"])]
            for d, r in info["dtypes"].items()
        ]
        lines += ["", tabulate(rows, headers=["model dtype", "tensors", "parameters", "bytes"])]
    if info["metadata"]:
        # A training checkpoint's skeleton is long JSON; --json shows it whole.
        shown = {
            k: f"<skeleton, {len(v)} chars>" if training and k == "tree" else v
            for k, v in info["metadata"].items()
        }
        lines += ["", "metadata: " + ", ".join(f"{k}={v}" for k, v in shown.items())]
    return "\n".join(lines)


def _b(entry: Dict[str, Any]) -> str:
    return fmt_bytes(entry["bytes"]) if entry["tensors"] else ""


def run(args) -> int:
    info = inspect_file(args.file)
    emit(args, info, format_info(info))
    return EXIT_OK
