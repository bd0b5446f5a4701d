"""pycls checkpoints (``.pyth``): torch files whose weights are under ``model_state``.

They are read whole, like detectron2 reads them, with ``num_batches_tracked`` buffers
dropped and detectron2's name heuristics asked for.
"""

from ..errors import CheckpointFormatError
from .opened import OpenedCheckpoint
from .torch_file import container_of, read_head, read_torch

__all__ = ["SUFFIX", "open_pycls"]

SUFFIX = ".pyth"


def open_pycls(path: str, fmt: str, *, mmap: bool, weights_only: bool) -> OpenedCheckpoint:
    """Open a ``.pyth`` file (read whole: ``mmap`` does not apply).

    Raises:
        CheckpointFormatError: not a torch file, or no pycls ``model_state`` entry.
    """
    container = container_of(read_head(path))
    if container is None:
        raise CheckpointFormatError(path, "a .pyth file must be a torch file (zip or legacy).")
    data, _ = read_torch(path, container, mmap=False, weights_only=weights_only)
    if not isinstance(data, dict) or not isinstance(data.get("model_state"), dict):
        raise CheckpointFormatError(path, "a .pyth file must hold a pycls 'model_state' entry.")
    model = {
        k: v for k, v in data["model_state"].items() if not str(k).endswith("num_batches_tracked")
    }
    return OpenedCheckpoint(
        path, {"model": model, "__author__": "pycls", "matching_heuristics": True}, fmt, False
    )
