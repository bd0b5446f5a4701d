"""``strip IN OUT``: the model weights alone, optionally in fp16, for deployment."""

import fnmatch
from typing import Any, Dict, List

import torch

from ..checkpoint.formats.entries import entries_of
from ..checkpoint.formats.tensors import as_tensor, dtype_of
from .common import (
    EXIT_OK,
    add_parser,
    check_output,
    emit,
    file_size,
    fmt_bytes,
    model_state,
    open_lazy,
    show_progress,
    write_output,
)

EXAMPLES = """\
  python -m d2_efficient_ckpt strip output/model_final.pth model_deploy.pth
  python -m d2_efficient_ckpt strip --fp16 output/model_final.pth model_fp16.safetensors
  python -m d2_efficient_ckpt strip --fp16 --keep-fp32 '*.norm.*' model_final.pth out.pth
"""
_FP16_MAX = torch.finfo(torch.float16).max
# Entries a model-only file still needs to be loaded the way the original was.
_KEEP_ENTRIES = ("__author__", "matching_heuristics")


def register(sub, common) -> None:
    p = add_parser(
        sub,
        "strip",
        "export the model weights only (optionally fp16): the deployable file",
        "Write only the model weights, without optimizer, scheduler and trainer state; with "
        "--fp16, float32/float64 weights are stored as float16 (tensors whose values would "
        "overflow fp16 stay float32). The checkpointer casts them back to the model's dtype "
        "when loading. OUT is written as saves are: complete or not at all, with an "
        "integrity record next to it.",
        EXAMPLES,
        common,
    )
    p.add_argument("input", help="training checkpoint")
    p.add_argument("output", help="target file, .pth or .safetensors")
    p.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    p.add_argument(
        "--keep-fp32",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="with --fp16: keys to keep in their dtype",
    )
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=run)


def strip(args) -> Dict[str, Any]:
    kind = check_output(args.input, args.output, args.force)
    opened = open_lazy(args.input)
    state, extra = model_state(opened)
    dtypes: Dict[str, torch.dtype] = {}
    overflow: List[str] = []
    if args.fp16:
        for key in state:
            if dtype_of(state, key) not in (torch.float32, torch.float64):
                continue
            if any(fnmatch.fnmatchcase(key, g) for g in args.keep_fp32):
                continue
            t = as_tensor(state[key])
            if t.numel() and float(t.abs().max()) > _FP16_MAX:
                overflow.append(key)
                continue
            dtypes[key] = torch.float16
    kept = {k: extra[k] for k in _KEEP_ENTRIES if k in extra}
    progress = show_progress(args)
    size = write_output(args.output, kind, entries_of(state, dtypes), kept, progress)
    before = file_size(opened.path)
    return {
        "input": args.input,
        "output": args.output,
        "output_format": kind,
        "tensors": len(state),
        "fp16_tensors": len(dtypes),
        "kept_fp32_overflow": overflow,
        "dropped_entries": [
            k for k in extra if k not in kept and not str(k).startswith("__format")
        ],
        "bytes": size,
        "input_bytes": before,
        "ratio": size / before if before else None,
    }


def run(args) -> int:
    s = strip(args)
    text = (
        f"stripped {s['input']} -> {s['output']}: {s['tensors']} tensors"
        + (f" ({s['fp16_tensors']} as fp16)" if args.fp16 else "")
        + f", {fmt_bytes(s['bytes'])} (was {fmt_bytes(s['input_bytes'])}, "
        f"{100 * (s['ratio'] or 0):.0f}%)"
    )
    if s["dropped_entries"]:
        text += f"\ndropped: {', '.join(map(str, s['dropped_entries']))}"
    if s["kept_fp32_overflow"]:
        text += (
            f"\nkept in float32 (values beyond fp16 range): {', '.join(s['kept_fp32_overflow'])}"
        )
    emit(args, s, text)
    return EXIT_OK
