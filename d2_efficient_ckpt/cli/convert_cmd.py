"""``convert IN OUT``: between .pth and .safetensors; torchvision and Caffe2 names to
detectron2's."""

from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np
import torch

from ..checkpoint.formats import OpenedCheckpoint
from ..checkpoint.formats.entries import entries_of
from ..checkpoint.formats.registry import writer_for
from ..checkpoint.formats.tensors import as_tensor
from ..checkpoint.formats.training_safetensors import is_training_metadata
from ..checkpoint.keys.rename_rules import (
    TORCHVISION_INPUT_CONFIG,
    torchvision_resnet_to_detectron2,
)
from ..checkpoint.save.errors import SaveConfigError
from ..checkpoint.save.saver import iteration_of
from ..checkpoint.save.write import write_checkpoint
from ..checkpoint.storage.mapped import FileReader
from .common import (
    ENTRIES_METADATA_KEY,
    EXIT_OK,
    CliError,
    add_parser,
    check_output,
    emit,
    fmt_bytes,
    keep_interrupts,
    model_state,
    open_lazy,
    saved_entries,
    scalar_entries,
    show_progress,
    write_output,
)

EXAMPLES = """\
  python -m d2_efficient_ckpt convert output/model_final.pth model_final.safetensors
  python -m d2_efficient_ckpt convert model_final.safetensors model_final.pth
  python -m d2_efficient_ckpt convert --training output/model_0004999.pth \
      model_0004999.safetensors     # the whole training state, as FORMAT safetensors saves
  python -m d2_efficient_ckpt convert --from torchvision resnet50-0676ba61.pth R-50-tv.pth
  python -m d2_efficient_ckpt convert --from torchvision --prefix backbone.bottom_up. \\
      resnet50.pth R-50-fpn.safetensors
  python -m d2_efficient_ckpt convert R-50.pkl R-50.pth        # Caffe2 / Detectron zoo .pkl
"""
SOURCES = ("auto", "torchvision", "caffe2")


def register(sub, common) -> None:
    p = add_parser(
        sub,
        "convert",
        "convert between .pth and .safetensors, or from torchvision / Caffe2 names",
        "Convert a checkpoint's model weights. The output format follows OUT's extension "
        "(.pth or .safetensors). Zoo .pkl files become .pth (Caffe2 names are converted to "
        "detectron2's); --from torchvision renames a torchvision ResNet to detectron2 backbone "
        "names. With --training, a whole training checkpoint (optimizer, scheduler, trainer "
        "state) becomes the pickle-free training .safetensors that CHECKPOINT.SAVE.FORMAT "
        "safetensors writes; such a file always converts whole, also back to .pth. OUT is "
        "written as saves are: complete or not at all, with an integrity record next to it.",
        EXAMPLES,
        common,
    )
    p.add_argument("input", help="source checkpoint")
    p.add_argument("output", help="target file, .pth or .safetensors")
    p.add_argument("--from", dest="source", choices=SOURCES, default="auto", help="naming of IN")
    p.add_argument(
        "--prefix",
        default="",
        help="with --from torchvision: prefix of the backbone in the model, e.g. "
        "backbone.bottom_up. for FPN models (default: none, matched by detectron2's heuristics)",
    )
    p.add_argument(
        "--training",
        action="store_true",
        help="convert every entry (optimizer, scheduler, trainer, iteration), not only weights",
    )
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=run)


def _from_caffe2(state: Mapping[str, Any]) -> Dict[str, Any]:
    from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names

    # Caffe2 blob names have no dots; detectron2's renaming turns "_" into ".", so "fc.w"
    # beside "fc_w" would meet it under one name (its assertion, a raw traceback).
    dotted = sorted(k for k in state if "." in k)
    if dotted:
        raise CliError(
            f"{len(dotted)} blob name(s) are not Caffe2 names (they hold a '.'): "
            f"{', '.join(dotted[:5])}. Pass the .pkl of a Caffe2 / Detectron1 model."
        )
    tensors = {k: as_tensor(v) for k, v in state.items()}
    try:
        renamed, _ = convert_c2_detectron_names(tensors)
    except AssertionError:  # its check that no two blobs get one name
        raise CliError(
            "two blob names of the file become one detectron2 name; it is not a Caffe2 / "
            "Detectron1 model file."
        ) from None
    return renamed


def _whole(args, opened: OpenedCheckpoint) -> bool:
    """Whether to convert every entry: asked for, or a training .safetensors (whose state
    would otherwise be lost on the way back to .pth)."""
    if opened.format == "safetensors" and is_training_metadata(opened.metadata):
        return True
    if not args.training:
        return False
    if args.source != "auto" or opened.format not in ("torch-zip", "torch-legacy"):
        raise CliError(
            f"--training converts torch training checkpoints; {args.input} is "
            f"{opened.format}"
            + (f" read --from {args.source}" if args.source != "auto" else "")
            + ". Leave out --training to convert its weights."
        )
    return True


def _read_all(value: Any, reader: FileReader) -> Any:
    """``value`` with every tensor read into fresh memory; state dict metadata kept."""
    if isinstance(value, torch.Tensor):
        return reader.read(value)
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, Mapping):
        out = {} if type(value) is dict else OrderedDict()
        for k, v in value.items():
            out[k] = _read_all(v, reader)
        meta = getattr(value, "_metadata", None)
        if meta is not None:
            out._metadata = _read_all(meta, reader)
        return out
    if isinstance(value, (list, tuple)):
        items = [_read_all(v, reader) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def convert_training(args, kind: str, opened: OpenedCheckpoint) -> Dict[str, Any]:
    """Convert a whole training checkpoint; returns the summary.

    The output is written atomically with an integrity record, as the trainer writes its own
    checkpoints, so ``verify`` and ``--resume`` treat it like one.
    """
    model, rest = opened.split_model()
    with opened.reader() as reader:
        data = _read_all({"model": model, **rest}, reader)
    serializer = keep_interrupts(writer_for(kind))
    try:
        result = write_checkpoint(
            args.output, data, iteration=iteration_of(data), serializer=serializer
        )
    except SaveConfigError as e:
        raise CliError(f"{args.input} cannot be converted to {args.output}: {e}") from None
    count = sum(1 for _ in _tensors(data))
    return {
        "input": args.input,
        "input_format": opened.format,
        "output": args.output,
        "output_format": kind,
        "training_state": True,
        "tensors": count,
        "bytes": result.record.size,
        "entries": [str(k) for k in data],
        "iteration": iteration_of(data),
        "dropped": [],
        "notes": [],
    }


def _tensors(value: Any):
    if isinstance(value, (torch.Tensor, np.ndarray)):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def convert(args) -> Tuple[Dict[str, Any], List[str]]:
    """Do the conversion; returns the summary and notes for the user."""
    kind = check_output(args.input, args.output, args.force)
    opened = open_lazy(args.input)
    state, extra = model_state(opened)
    notes: List[str] = []
    plain = scalar_entries(extra)
    if _whole(args, opened):
        return convert_training(args, kind, opened), []
    dropped = [k for k in extra if k not in plain]
    if opened.format == "safetensors" and ENTRIES_METADATA_KEY in opened.metadata:
        plain.update(saved_entries(args.input, opened.metadata[ENTRIES_METADATA_KEY]))
    if args.source == "torchvision":
        try:
            state, skipped = torchvision_resnet_to_detectron2(state, args.prefix)
        except ValueError as e:
            raise CliError(f"{args.input}: {e}") from None
        plain = {"__author__": "torchvision"}
        if not args.prefix:
            plain["matching_heuristics"] = True
        notes.append(
            f"renamed torchvision ResNet keys to detectron2 names (dropped {len(skipped)}: fc.*, "
            "num_batches_tracked). Use them with "
            + ", ".join(f"{k} {v}" for k, v in TORCHVISION_INPUT_CONFIG.items())
            + "."
        )
    elif args.source == "caffe2" or opened.format == "pkl-caffe2":
        if opened.format != "pkl-caffe2":
            raise CliError(f"{args.input} is {opened.format}, not a Caffe2 / Detectron1 .pkl.")
        state = _from_caffe2(state)
        plain = {"__author__": "Caffe2 (names converted)", "matching_heuristics": True}
        notes.append("converted Caffe2 blob names to detectron2 names.")
    if kind == "safetensors" and plain.get("matching_heuristics"):
        notes.append(
            "safetensors files are loaded without name heuristics: convert with --prefix, or "
            "load it with '?matching_heuristics=True' after the path."
        )
    if dropped:
        notes.append(
            f"not converted (only model weights are): {', '.join(dropped)}. Pass --training "
            "to convert the whole training checkpoint."
        )
    size = write_output(args.output, kind, entries_of(state), plain, show_progress(args))
    summary = {
        "input": args.input,
        "input_format": opened.format,
        "output": args.output,
        "output_format": kind,
        "training_state": False,
        "tensors": len(state),
        "bytes": size,
        "entries": plain,
        "dropped": dropped,
        "notes": notes,
    }
    return summary, notes


def run(args) -> int:
    summary, notes = convert(args)
    text = (
        f"converted {summary['input']} ({summary['input_format']}) -> {summary['output']} "
        f"({summary['output_format']}): {summary['tensors']} tensors, "
        f"{fmt_bytes(summary['bytes'])}"
    )
    if summary["training_state"]:
        text += (
            f"\nwhole training checkpoint (entries: {', '.join(summary['entries'])}; "
            f"iteration {summary['iteration']}), with an integrity record"
        )
    text += "".join(f"\nnote: {n}" for n in notes)
    emit(args, summary, text)
    return EXIT_OK
