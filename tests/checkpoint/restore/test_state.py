"""Restored non-model state: float state shares one arena, other tensors own their memory."""

import os
import subprocess
import sys

import torch

from d2_efficient_ckpt.checkpoint.restore.arena import HostArena
from d2_efficient_ckpt.checkpoint.restore.state import materialize
from tests.helpers.config import REPO

_SET_RNG = r"""
import torch
from d2_efficient_ckpt.checkpoint.restore.arena import HostArena
from d2_efficient_ckpt.checkpoint.restore.state import materialize
state = {"m": torch.randn(1000), "rng": torch.get_rng_state(), "b": torch.randn(7)}
out = materialize(state, torch.device("cpu"))
torch.set_rng_state(out["rng"])  # crashes on a byte view at an offset into a shared buffer
print("OK", torch.equal(out["rng"], state["rng"]))
"""


def test_float_state_shares_one_buffer_and_byte_tensors_do_not():
    state = {"a": torch.randn(100), "b": torch.randn(3, 3).half(), "rng": torch.get_rng_state()}
    out = materialize(state, torch.device("cpu"))
    assert all(torch.equal(out[k], state[k]) for k in state)
    a, b, rng = (out[k].untyped_storage().data_ptr() for k in ("a", "b", "rng"))
    assert a == b  # one arena
    assert rng not in (a, b) and out["rng"].storage_offset() == 0


def test_restored_rng_state_can_be_set():
    proc = subprocess.run(
        [sys.executable, "-c", _SET_RNG],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"status {proc.returncode}: {proc.stderr[-1000:]}"
    assert "OK True" in proc.stdout


def test_prefaulted_arena_made_ahead_holds_the_state_and_grows_past_its_plan():
    # The checkpointer sizes the arena from the saved state before the model loads, and
    # faults its pages in from a background thread meanwhile.
    planned = {"m": torch.randn(3 << 20), "v": torch.randn(5, 7)}  # 12 MB: prefaulted
    arena = HostArena.for_tensors(planned.values(), prefault=True)
    state = {**planned, "extra": torch.randn(11), "step": torch.tensor(3.0)}
    out = materialize(state, torch.device("cpu"), arena=arena)
    assert all(torch.equal(out[k], state[k]) for k in state)
    m, v, extra = (out[k].untyped_storage().data_ptr() for k in ("m", "v", "extra"))
    assert m == v  # the planned tensors share the arena
    assert extra != m  # a tensor past the plan gets its own memory
    assert out["step"].dim() == 0 and out["step"].untyped_storage().data_ptr() != m


def test_a_tensor_referenced_many_times_is_restored_once(tmp_path):
    # One 256 KiB buffer referenced by 4,800 optimizer entries, in a real file read by the
    # loader: the arena and the restore count it once, and every reference gets the same
    # restored tensor (it was one tensor when saved).
    from d2_efficient_ckpt.checkpoint.formats.registry import open_checkpoint

    shared = torch.arange(65536, dtype=torch.float32)
    state = {"state": {i: {"momentum_buffer": shared} for i in range(4800)}}
    path = tmp_path / "shared.pth"
    torch.save({"model": {"w": torch.ones(1)}, "optimizer": state}, path)
    opened = open_checkpoint(str(path))
    _, rest = opened.split_model()
    entries = [e["momentum_buffer"] for e in rest["optimizer"]["state"].values()]
    arena = HostArena.for_tensors(entries)
    assert arena is not None and arena._end - arena._pos == HostArena.footprint(shared)
    with opened.mapping.reader() as reader:
        out = materialize(rest["optimizer"], torch.device("cpu"), reader, arena)
    first = out["state"][0]["momentum_buffer"]
    assert torch.equal(first, shared)
    assert all(e["momentum_buffer"] is first for e in out["state"].values())
