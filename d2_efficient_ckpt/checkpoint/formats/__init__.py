"""Checkpoint file formats: bytes to tensors and back, one module per format.

Nothing here knows about models, reports, options or saving; it imports only ``..errors``
and ``..storage``. Modules:
    registry              the formats by name: detection, opening, writers, suffixes, and
                          the periodic checkpoint name; everything else asks here
    opened                OpenedCheckpoint (what an opener returns), ReadingStateDict
    torch_file            torch files, zip or legacy: sniffing, safe or trusted reading,
                          writing (torch_zip, torch_legacy: the two containers;
                          torch_zip_writer: our one-pass writer of the zip container)
    safetensors           .safetensors: the dtype table, checked header, lazy reading,
                          model writing
    training_safetensors  the pickle-free training checkpoint: the JSON skeleton's encoder
                          and decoder, its writer and reader
    zoo_pickle            Detectron2 and Caffe2 / Detectron1 model zoo .pkl files
    pycls                 pycls .pyth files
    safe_pickle/          the data-only unpickler every pickle runs on
    tensors, entries      values without reading them; what a model writer writes
    messages              values of a file as they appear in messages
"""

from .opened import OpenedCheckpoint
from .registry import detect_format, open_checkpoint

__all__ = ["OpenedCheckpoint", "detect_format", "open_checkpoint"]
