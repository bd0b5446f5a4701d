"""Our writer of torch's zip format against ``torch.save`` itself, on every state detectron2
writes: the same records with the same bytes (all but the serialization id), the same layout,
and files that ``torch.load`` (with and without ``weights_only``), stock
``DetectionCheckpointer``, ``zipfile`` and our own loader read."""

import io
import os
import struct
import zipfile

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.solver import build_lr_scheduler

from d2_efficient_ckpt.checkpoint.formats import open_checkpoint, torch_zip_writer
from d2_efficient_ckpt.checkpoint.formats.torch_zip_writer import (
    ALIGNMENT,
    CHUNK,
    crc32,
    write_torch_zip,
)
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import train_on_toy
from tests.helpers.models import (
    assert_same_state,
    build_tiny,
    step_trainer_state,
    trained_state,
)

SERIALIZATION_ID = "archive/.data/serialization_id"


def _edge_tensors():
    base = torch.arange(24, dtype=torch.float32)
    return {
        "empty": torch.empty(0),
        "empty_2d": torch.empty(3, 0, dtype=torch.int64),
        "zero_dim": torch.tensor(7.5),
        "zero_dim_long": torch.tensor(3),
        "transposed": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous
        "strided": torch.arange(40.0)[::3],
        "base": base,
        "view_a": base[2:10],  # three tensors, one storage, written once
        "view_b": base.view(4, 6)[1:, ::2],
        "bf16": torch.linspace(-3, 3, 17).to(torch.bfloat16),
        "fp16": torch.linspace(-3, 3, 9).to(torch.float16),
        "bool": torch.tensor([True, False, True]),
        "int8": torch.arange(-5, 5, dtype=torch.int8),
        "uint8": torch.arange(200, dtype=torch.uint8),
        "complex": torch.randn(4, dtype=torch.complex64),
        # Spans several chunks and ends inside one: the CRC continues across writes.
        "large": torch.randint(0, 255, (2 * CHUNK + 13,), dtype=torch.uint8),
        "plain": [1, 2.5, "text", None, (True, b"raw")],
        "empty_list": [],
    }


def _files(data):
    """``(torch.save's bytes, ours)`` of ``data``."""
    theirs, ours = io.BytesIO(), io.BytesIO()
    torch.save(data, theirs)
    write_torch_zip(data, ours)
    return theirs.getvalue(), ours.getvalue()


def _records(raw: bytes):
    """``[(name, bytes)]`` in archive order, after ``testzip`` checked every CRC."""
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        assert zf.testzip() is None
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _assert_same_archive(data):
    theirs, ours = _files(data)
    a, b = _records(theirs), _records(ours)
    assert [n for n, _ in a] == [n for n, _ in b]
    for (name, x), (_, y) in zip(a, b):
        if name != SERIALIZATION_ID:
            assert x == y, f"record {name} differs"
    # The same layout: every byte outside the serialization id's record is the same.
    assert len(theirs) == len(ours)
    differ = [i for i, (x, y) in enumerate(zip(theirs, ours)) if x != y]
    with zipfile.ZipFile(io.BytesIO(ours)) as zf:
        info = zf.getinfo(SERIALIZATION_ID)
        start = info.header_offset
        stop = zf.start_dir
    inside = [i for i in differ if start <= i < stop or _in_central_crc(ours, i, info)]
    assert differ == inside, f"bytes outside the serialization id differ: {differ[:8]}"
    return ours


def _in_central_crc(raw: bytes, index: int, info: zipfile.ZipInfo) -> bool:
    # The serialization id's CRC-32 is repeated in the central directory.
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        cd = zf.start_dir
    at = raw.index(b"PK\x01\x02" + raw[cd + 4 : cd + 16], cd)
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + name_len].decode() == info.filename:
            return at + 16 <= index < at + 20
        at = raw.find(b"PK\x01\x02", at + 46)
    return False


def _assert_loads_back(raw: bytes, data, tmp_path):
    for weights_only in (True, False):
        back = torch.load(io.BytesIO(raw), weights_only=weights_only, map_location="cpu")
        assert_same_state(data, back)
    path = tmp_path / "ours.pth"
    path.write_bytes(raw)
    opened = open_checkpoint(str(path))  # the safe unpickler; tensors view the file
    with opened.reader() as reader:
        assert_same_state(data, _read_all(opened.data, reader))


def _read_all(obj, reader):
    """``obj`` with every tensor read through the checked reader into fresh memory."""
    if isinstance(obj, torch.Tensor):
        return reader.read(obj)
    if isinstance(obj, dict):
        out = type(obj)((k, _read_all(v, reader)) for k, v in obj.items())
        if getattr(obj, "_metadata", None) is not None:
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(_read_all(v, reader) for v in obj)
    return obj


def test_edge_tensors_make_the_same_archive_and_load_back(tmp_path):
    data = _edge_tensors()
    ours = _assert_same_archive(data)
    _assert_loads_back(ours, data, tmp_path)
    back = torch.load(io.BytesIO(ours), weights_only=True)
    # Views of one storage stay views of one storage.
    assert back["view_a"].untyped_storage().data_ptr() == back["base"].untyped_storage().data_ptr()
    assert back["view_b"].untyped_storage().data_ptr() == back["base"].untyped_storage().data_ptr()
    assert back["transposed"].stride() == data["transposed"].stride()


def test_every_record_starts_at_the_alignment_and_holds_its_crc(tmp_path):
    _, ours = _files(_edge_tensors())
    with zipfile.ZipFile(io.BytesIO(ours)) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack_from("<HH", ours, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            assert start % ALIGNMENT == 0, info.filename
            assert crc32(ours[start : start + info.file_size]) == info.CRC, info.filename


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_a_detectron2_model_with_optimizer_and_scheduler_state(tiny_cfg, optimizer, tmp_path):
    cfg = tiny_cfg()
    model = build_tiny(tiny_cfg)
    if optimizer == "SGD":
        opt = trained_state(model)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    scheduler = build_lr_scheduler(cfg, opt)
    for _ in range(3):
        scheduler.step()
    data = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": scheduler.state_dict(),
        "iteration": 3,
    }
    ours = _assert_same_archive(data)
    _assert_loads_back(ours, data, tmp_path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_writer")
    generate_toy_dataset(str(root), num_train=2, num_val=1, size=64, seed=0)
    return root


def test_the_trainer_checkpoint_with_amp_scaler_hooks_and_sampling_state(tiny_cfg, toy, tmp_path):
    """What the Trainer's checkpointer writes: the model, and the trainer part with the
    optimizer, the AMP scaler, the LR scheduler hook's state and the sampling state."""
    cfg = train_on_toy(
        tiny_cfg(**{"OUTPUT_DIR": str(tmp_path / "run"), "SOLVER.AMP.ENABLED": True}), toy, "wr"
    )
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 20, (3,), 2
    prepare_datasets(cfg)
    trainer = Trainer(cfg)
    # torch's CUDA scaler is disabled without CUDA (its state is then empty); the CPU one
    # has the same state dict. AMP cannot train on a CPU: the state is made by hand.
    trainer._trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    step_trainer_state(trainer)
    trainer.iter = 5
    captured = {}
    saver = trainer.checkpointer.saver
    written_by = saver.serializer

    def capture(data, f):
        captured["data"] = data
        written_by(data, f)

    saver.serializer = capture
    trainer.checkpointer.save("model_final", iteration=5)
    trainer.checkpointer.wait()
    data = captured["data"]
    parts = data["trainer"]
    assert {"optimizer", "grad_scaler"} <= set(parts["_trainer"])
    assert {"LRScheduler", "SamplingState"} <= set(parts["hooks"])
    ours = _assert_same_archive(data)
    _assert_loads_back(ours, data, tmp_path)
    # The file the Trainer wrote is our writer's, and stock detectron2 loads it.
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert _records(open(final, "rb").read()) == _records(ours)
    fresh = build_tiny(tiny_cfg, **{"MODEL.ROI_HEADS.NUM_CLASSES": cfg.MODEL.ROI_HEADS.NUM_CLASSES})
    DetectionCheckpointer(fresh).load(final)
    assert_same_state(dict(data["model"]), dict(fresh.state_dict()))


def test_zip64_fields_where_sizes_and_offsets_need_them(monkeypatch, tmp_path):
    # 4 GiB of tensors is too much for a test; a lower limit writes the same zip64 layout.
    monkeypatch.setattr(torch_zip_writer, "ZIP64_LIMIT", 3000)
    data = {"small": torch.arange(10.0), "big": torch.arange(2000.0), "after": torch.ones(3)}
    out = io.BytesIO()
    write_torch_zip(data, out)
    raw = out.getvalue()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        big = zf.getinfo("archive/data/1")
        assert big.file_size == 8000
        # The record's sizes and the later records' offsets are in zip64 fields.
        assert struct.unpack_from("<H", big.extra)[0] == 1
        assert zf.getinfo("archive/data/2").header_offset >= 3000
    assert raw[big.header_offset + 4 : big.header_offset + 6] == struct.pack("<H", 45)
    _records(raw)  # testzip
    _assert_loads_back(raw, data, tmp_path)


def test_two_dtypes_over_one_storage_are_refused_as_torch_refuses_them():
    base = torch.zeros(4)
    data = {"a": base, "b": base.view(torch.int32)}
    with pytest.raises(RuntimeError, match="view the same data as different types"):
        torch.save(data, io.BytesIO())
    with pytest.raises(RuntimeError, match="view the same data as different types"):
        write_torch_zip(data, io.BytesIO())


def test_the_same_state_makes_the_same_file():
    data = _edge_tensors()
    a, b = io.BytesIO(), io.BytesIO()
    write_torch_zip(data, a)
    write_torch_zip(data, b)
    assert a.getvalue() == b.getvalue()
    data["zero_dim"] += 1
    c = io.BytesIO()
    write_torch_zip(data, c)
    ids = [dict(_records(x.getvalue()))[SERIALIZATION_ID] for x in (a, c)]
    assert ids[0] != ids[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_make_the_same_archive_as_torch_save(tmp_path):
    data = {"w": torch.randn(64, 3, device="cuda"), "cpu": torch.arange(4.0)}
    data["view"] = data["w"][1:5]
    ours = _assert_same_archive(data)
    back = torch.load(io.BytesIO(ours), weights_only=True)
    assert back["w"].device.type == "cuda" and torch.equal(back["w"], data["w"])
