"""The loader's side of the pickle-free training checkpoint: lazy and selective, checked."""

import json
import os
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError
from d2_efficient_ckpt.checkpoint.formats import open_checkpoint
from d2_efficient_ckpt.checkpoint.formats.safetensors import SafetensorsStateDict
from d2_efficient_ckpt.checkpoint.formats.training_safetensors import (
    TRAINING_FORMAT,
    TrainingModelView,
    write_training_safetensors,
)
from d2_efficient_ckpt.checkpoint.storage.page_cache import (
    evict_from_page_cache,
    page_cache_residency,
)


def _write(path, data):
    with open(path, "wb") as f:
        write_training_safetensors(data, f)
        f.flush()
        os.fsync(f.fileno())  # dirty pages cannot be evicted
    return str(path)


def _data_span(path, name):
    """(file offset, bytes) of tensor ``name``."""
    sd = SafetensorsStateDict(path)
    with open(path, "rb") as f:
        base = 8 + int.from_bytes(f.read(8), "little")
    start, end = sd.spans()[name]
    return base + start, end - start


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise (Linux)")
def test_left_out_keys_and_unused_entries_stay_on_disk(tmp_path):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048))  # 8 MB and 16 MB
    momentum = {"state": {0: {"momentum_buffer": torch.randn(2048, 1024)}}, "param_groups": []}
    path = _write(tmp_path / "m.safetensors", {"model": src.state_dict(), "optimizer": momentum})
    kept = _data_span(path, "model/0.weight")
    left = _data_span(path, "model/1.weight")
    opt = _data_span(path, "optimizer/state/0/momentum_buffer")
    evict_from_page_cache(path)
    fraction = page_cache_residency(path, 0, os.path.getsize(path))
    if fraction is None:
        pytest.skip("mincore is not available here")
    if fraction > 0.05:
        pytest.skip("this file system keeps the file cached; eviction cannot be tested")
    opened = open_checkpoint(path)  # structure only: no tensor read yet
    assert isinstance(opened.data["model"], TrainingModelView)
    assert opened.data["model"].shape("1.weight") == (2048, 2048)
    assert page_cache_residency(path, kept[0], kept[1]) < 0.1
    del opened
    dst = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 2048))
    EfficientDetectionCheckpointer(dst).load(path, exclude=["1.*"])
    assert torch.equal(dst[0].weight, src[0].weight)
    assert not torch.equal(dst[1].weight, src[1].weight)
    assert page_cache_residency(path, *kept) > 0.95
    assert page_cache_residency(path, *left) < 0.1
    assert page_cache_residency(path, *opt) < 0.1  # no optimizer was asked for


def test_entries_are_views_read_through_the_reader(tmp_path):
    meta = OrderedDict(a=torch.arange(6.0).reshape(2, 3))
    meta._metadata = OrderedDict({"": {"version": 2}})
    data = {
        "model": meta,
        "trainer": {
            "iteration": 7,
            "hooks": {"H": {"milestones": Counter({3: 1, 5: 2}), "arr": np.arange(4)}},
            "pairs": (1, [2.5, None, True]),
        },
    }
    opened = open_checkpoint(_write(tmp_path / "t.safetensors", data))
    assert opened.format == "safetensors" and opened.metadata["format"] == TRAINING_FORMAT
    model, rest = opened.split_model()
    assert list(model) == ["a"] and model._metadata == meta._metadata
    assert model.dtype("a") == torch.float32
    trainer = rest["trainer"]
    assert trainer["iteration"] == 7 and trainer["pairs"] == (1, [2.5, None, True])
    milestones = trainer["hooks"]["H"]["milestones"]
    assert type(milestones) is Counter and milestones == Counter({3: 1, 5: 2})
    assert np.array_equal(trainer["hooks"]["H"]["arr"], np.arange(4))
    with opened.reader() as reader:
        assert torch.equal(reader.read(model["a"]), meta["a"])


def _with_tree(path, edit):
    """Rewrite the skeleton of a training file with ``edit(tree_text) -> tree_text``."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"]["tree"] = edit(header["__metadata__"]["tree"])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + raw[8 + n :])


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda t: t[:-3], "not valid JSON"),
        (lambda t: "[" * 100000 + "]" * 100000, "nested too deeply|root is not a dict"),
        (lambda t: t.replace('"t":"list"', '"t":"set"', 1), "unknown node 'set'"),
        (lambda t: t.replace('"k":"trainer/w"', '"k":"trainer/nope"'), "trainer/nope"),
        (lambda t: t.replace('"k":"model/w"', '"k":"trainer/missing"'), "model key 'w'"),
        (lambda t: t.replace('[["iteration"', '[[["iteration"]', 1), "scalar key"),
        (
            lambda t: '{"t":"dict","items":[["x",' + '{"t":"list","v":[' * 150 + "]}" * 150 + "]]}",
            "nested deeper than 100",
        ),
        (lambda t: '{"t":"list","v":[]}', "root is not a dict"),
    ],
)
def test_broken_skeletons_are_errors_naming_the_file(tmp_path, edit, problem):
    path = _write(
        tmp_path / "b.safetensors",
        {"model": {"w": torch.ones(2)}, "trainer": {"iteration": 1, "w": torch.zeros(3), "l": [1]}},
    )
    _with_tree(path, edit)
    with pytest.raises(CheckpointFormatError, match=problem) as info:
        open_checkpoint(path)
    assert path in str(info.value)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no 8-bit floats")
def test_training_checkpoints_store_every_dtype_model_files_do(tmp_path):
    # One dtype table for both writers: 8-bit floats included.
    w = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    v = torch.tensor([1.0, -3.0]).to(torch.float8_e5m2)
    path = _write(tmp_path / "f8.safetensors", {"model": {"w": w}, "trainer": {"v": v}})
    opened = open_checkpoint(path)
    with opened.reader() as reader:
        got_w = reader.read(opened.data["model"]["w"])
        got_v = reader.read(opened.data["trainer"]["v"])
    assert got_w.dtype == w.dtype and torch.equal(got_w.float(), w.float())
    assert got_v.dtype == v.dtype and torch.equal(got_v.float(), v.float())
