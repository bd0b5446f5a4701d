"""Write a training checkpoint as one ``.safetensors`` file (``CHECKPOINT.SAVE.FORMAT``).

The tensors of :func:`tree_codec.encode` are the file's tensors; the skeleton goes in the
header's ``__metadata__`` as ``{"format": TRAINING_FORMAT, "tree": <json>}``. The file is
a standard safetensors file: any safetensors reader lists and reads its tensors, and
``tree_codec.decode`` rebuilds the checkpoint from them.
"""

import json
import math
import struct
from typing import Any, BinaryIO, Dict

import torch

from .tree_codec import TRAINING_FORMAT, encode

__all__ = ["write_training_safetensors", "SAFETENSORS_CODES"]

SAFETENSORS_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_training_safetensors(data: Any, f: BinaryIO) -> None:
    """Serialize ``data`` (a whole training checkpoint) into the file object ``f``.

    Tensors are written one at a time in name order; a GPU tensor is copied to the host
    only when it is written.

    Raises:
        SaveConfigError: a value that cannot be stored without pickle (see ``tree_codec``).
        ValueError: a tensor dtype safetensors has no code for.
    """
    tensors, skeleton = encode(data)
    header: Dict[str, Any] = {}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        code = SAFETENSORS_CODES.get(t.dtype)
        if code is None:
            raise ValueError(f"safetensors cannot store '{name}' of dtype {t.dtype}.")
        nbytes = math.prod(t.shape) * t.element_size()
        header[name] = {
            "dtype": code,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = {
        "format": TRAINING_FORMAT,
        "tree": json.dumps(skeleton, separators=(",", ":")),
    }
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keeps tensor data 8-byte aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.numel():
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
