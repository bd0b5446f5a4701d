"""``convert IN OUT``: between .pth and .safetensors; torchvision and Caffe2 names to
detectron2's."""

import json
from typing import Any, Dict, List, Mapping, Tuple

from ..checkpoint.io.tensors import as_tensor
from ..checkpoint.io.writers import entries_of
from ..checkpoint.keys.naming import TORCHVISION_INPUT_CONFIG, torchvision_resnet_to_detectron2
from .common import (
    ENTRIES_METADATA_KEY,
    EXIT_OK,
    CliError,
    add_parser,
    check_output,
    emit,
    fmt_bytes,
    model_state,
    open_lazy,
    scalar_entries,
    show_progress,
    write_output,
)

EXAMPLES = """\
  python -m d2_efficient_ckpt convert output/model_final.pth model_final.safetensors
  python -m d2_efficient_ckpt convert model_final.safetensors model_final.pth
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
        "names. Optimizer and trainer state is not converted.",
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
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=run)


def _from_caffe2(state: Mapping[str, Any]) -> Dict[str, Any]:
    from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names

    tensors = {k: as_tensor(v) for k, v in state.items()}
    renamed, _ = convert_c2_detectron_names(tensors)
    return renamed


def convert(args) -> Tuple[Dict[str, Any], List[str]]:
    """Do the conversion; returns the summary and notes for the user."""
    kind = check_output(args.input, args.output, args.force)
    opened = open_lazy(args.input)
    state, extra = model_state(opened)
    notes: List[str] = []
    plain = scalar_entries(extra)
    dropped = [k for k in extra if k not in plain]
    if opened.format == "safetensors" and ENTRIES_METADATA_KEY in opened.metadata:
        plain.update(json.loads(opened.metadata[ENTRIES_METADATA_KEY]))
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
        notes.append(f"not converted (only model weights are): {', '.join(dropped)}.")
    size = write_output(args.output, kind, entries_of(state), plain, show_progress(args))
    summary = {
        "input": args.input,
        "input_format": opened.format,
        "output": args.output,
        "output_format": kind,
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
    text += "".join(f"\nnote: {n}" for n in notes)
    emit(args, summary, text)
    return EXIT_OK
