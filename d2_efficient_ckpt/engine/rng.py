"""The random states of one process: capture, restore, and per-sample seeding.

States are stored as tensors and plain numbers only, so they pass the checkpoint loader's
weights-only allowlist and the pickle-free writer unchanged.
"""

import contextlib
import hashlib
import logging
import random
from typing import Any, Dict, Iterator

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "sample_seed", "seeded_for_sample"]

logger = logging.getLogger(__name__)


def capture_rng_state() -> Dict[str, Any]:
    """Torch (CPU and this process's current CUDA device), numpy and Python ``random``.

    Only the current CUDA device is recorded: under DDP each rank drives one device, and
    touching the others would create a CUDA context on every GPU from every rank.
    """
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": [] if gauss_next is None else [float(gauss_next)],
        },
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Set this process's random states to ``state`` (from :func:`capture_rng_state`).

    A CUDA state saved on a machine with CUDA is restored to the current device; one saved
    without CUDA leaves the CUDA generator as it is, and a note says so.
    """
    torch.set_rng_state(_own_bytes(state["torch"]))
    npst = state["numpy"]
    keys = torch.as_tensor(npst["keys"]).cpu().numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["gauss"]))
    )
    py = state["python"]
    internal = tuple(int(v) for v in torch.as_tensor(py["internal"]).tolist())
    gauss_next = float(py["gauss_next"][0]) if len(py["gauss_next"]) else None
    random.setstate((int(py["version"]), internal, gauss_next))
    cuda = state.get("cuda")
    if torch.cuda.is_available():
        if cuda is None:
            logger.info("The checkpoint has no CUDA random state; the CUDA generator is kept.")
        else:
            torch.cuda.set_rng_state(_own_bytes(cuda), torch.cuda.current_device())


def _own_bytes(value: Any) -> torch.Tensor:
    # A restored tensor may view a larger buffer (the loader packs restored state into one
    # allocation); torch 2.14's set_rng_state crashes the process (SIGSEGV) on a view with a
    # storage offset, so it gets a copy of its own.
    return torch.as_tensor(value, dtype=torch.uint8).cpu().clone()


def sample_seed(base_seed: int, rank: int, position: int) -> int:
    """A 31-bit seed for the sample at ``position`` of ``rank``'s index stream.

    A hash, not ``base + position``, so neighbouring positions and runs get unrelated streams.
    """
    digest = hashlib.blake2b(f"{base_seed}:{rank}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**31


@contextlib.contextmanager
def seeded_for_sample(seed: int) -> Iterator[None]:
    """Run the block with torch (CPU), numpy and ``random`` seeded by ``seed``, then put the
    process's previous states back.

    Data augmentation then depends only on the sample's position in the index stream, not
    on which worker mapped it or on what the training loop drew meanwhile. The CUDA
    generator is left alone: mappers run on the CPU, and ``torch.manual_seed`` would
    reseed every device.
    """
    saved_torch = torch.get_rng_state()
    saved_np = np.random.get_state()
    saved_py = random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved_torch)
        np.random.set_state(saved_np)
        random.setstate(saved_py)
