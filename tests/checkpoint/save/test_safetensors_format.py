"""The pickle-free training checkpoint: named tensors plus a JSON skeleton."""

import json
import os

import pytest
import torch
from safetensors import safe_open

from d2_efficient_ckpt.checkpoint.formats.training_safetensors import (
    TRAINING_FORMAT,
    decode,
    encode,
    write_training_safetensors,
)
from d2_efficient_ckpt.checkpoint.save import SaveConfigError, SaveOptions, check_full
from d2_efficient_ckpt.checkpoint.save.write import write_checkpoint
from tests.helpers.models import assert_same_state


def test_training_checkpoint_round_trips_without_pickle(model_and_opt, tmp_path):
    model, opt = model_and_opt
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    data = {
        "model": model.state_dict(),
        "trainer": {
            "iteration": 41,
            "optimizer": opt.state_dict(),
            "hooks": {"LRScheduler": sched.state_dict()},
            "grad_scaler": {"scale": 65536.0, "growth_tracker": 0},
        },
        "iteration": 41,
    }
    path = tmp_path / "model_0000041.safetensors"
    write_checkpoint(str(path), data, iteration=41, serializer=write_training_safetensors)
    check_full(str(path))
    with safe_open(str(path), "pt") as f:  # a standard safetensors file
        meta = f.metadata()
        assert meta["format"] == TRAINING_FORMAT
        assert "model/backbone.bottom_up.stem.conv1.weight" in f.keys()
        restored = decode(json.loads(meta["tree"]), f.get_tensor)
    assert_same_state(data, restored)
    assert restored["model"]._metadata  # module versions kept for load_state_dict
    model.load_state_dict(restored["model"])
    opt.load_state_dict(restored["trainer"]["optimizer"])


def test_objects_that_need_pickle_are_refused_by_path():
    with pytest.raises(SaveConfigError, match="trainer/hooks/custom"):
        encode({"trainer": {"hooks": {"custom": object()}}})


def test_colliding_names_stay_apart():
    tensors, skeleton = encode({1: torch.ones(1), "1": torch.zeros(1)})
    assert len(tensors) == 2
    back = decode(skeleton, tensors.__getitem__)
    assert torch.equal(back[1], torch.ones(1)) and torch.equal(back["1"], torch.zeros(1))


def test_format_key_accepts_safetensors_and_refuses_others(tiny_cfg):
    options = SaveOptions.from_cfg(tiny_cfg(**{"CHECKPOINT.SAVE.FORMAT": "safetensors"}))
    assert options.format == "safetensors" and options.suffix == ".safetensors"
    with pytest.raises(SaveConfigError, match="'zip'"):
        SaveOptions.from_cfg(tiny_cfg(**{"CHECKPOINT.SAVE.FORMAT": "zip"}))


def test_async_and_sync_safetensors_saves_are_identical(model_and_opt, tmp_path):
    from d2_efficient_ckpt.checkpoint.save import CheckpointSaver

    model, opt = model_and_opt
    data = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 3}
    files = []
    for asynchronous in (False, True):
        directory = tmp_path / str(asynchronous)
        options = SaveOptions(asynchronous=asynchronous, format="safetensors")
        saver = CheckpointSaver(str(directory), options)
        saver.save("model_0000003.safetensors", data, iteration=3)
        saver.wait()
        files.append((directory / "model_0000003.safetensors").read_bytes())
    assert files[0] == files[1]


def test_truncated_newest_safetensors_falls_back(make_ckpt, tmp_path):
    from tests.helpers.faults import perturb

    ck = make_ckpt(tmp_path, **{"CHECKPOINT.SAVE.FORMAT": "safetensors"})
    opt = ck.checkpointables["optimizer"]

    def change_everything():
        perturb(ck.model)
        for state in opt.state.values():
            state["momentum_buffer"].add_(1.0)

    ck.save("model_0000001", iteration=1)
    good = {k: v.clone() for k, v in ck.model.state_dict().items()}
    momentum = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}
    change_everything()
    ck.save("model_0000002", iteration=2)
    change_everything()
    newest = tmp_path / "model_0000002.safetensors"
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    ck.resume_or_load("", resume=True)
    assert ck.last_report.path.endswith("model_0000001.safetensors")
    assert ck.last_report.skipped_files[0][0] == "model_0000002.safetensors"
    sd = ck.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in good.items())
    state = opt.state_dict()["state"]
    assert momentum and all(
        torch.equal(state[k]["momentum_buffer"], v) for k, v in momentum.items()
    )
