"""Hostile and broken files end in the project's error or in correct values, never worse.

Each attack is built in a few lines with the pickle assembler in ``hostile.py`` and loaded
in a separate process (``load_worker.py``), so that a crash or a signal is a test failure
that names the file, not a lost test run. The worker also runs ``inspect`` and ``verify``
on every file and checks that no load changed torch's own functions.
"""

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn as nn

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.errors import (
    CheckpointFormatError,
    PartialLoadError,
    UnsafeCheckpointError,
)
from d2_efficient_ckpt.checkpoint.formats.registry import detect_format, open_checkpoint
from tests.helpers import hostile as h
from tests.helpers.config import REPO
from tests.helpers.loading import run_worker


def _model_file(tmp_path, name, value):
    return h.torch_zip(str(tmp_path / name), h.program(h.dict_of({"model": value})))


# ----------------------------------------------------------- 1. numpy globals
@pytest.mark.parametrize(
    "attack", [h.object_field_dtype, h.fields_on_plain_dtype, h.direct_ndarray, h.set_over_array]
)
def test_numpy_globals_cannot_build_pointers(tmp_path, attack):
    pkl = h.program(h.dict_of({"model": h.dict_of({"w": attack()})}))
    paths = list(h.all_formats(tmp_path, attack.__name__, pkl))
    paths.append(h.legacy_raw(str(tmp_path / f"{attack.__name__}_legacy.pth"), pkl))
    records = run_worker(paths, tmp_path)
    assert len(records) == 4
    for rec in records.values():
        assert rec["outcome"] == "CheckpointFormatError", rec
        assert "not data" in rec["error"] or "corrupt" in rec["error"], rec
        assert rec["verify"] == "failed", rec


# ----------------------------------------------------------- 2. poisoning through BUILD
@pytest.mark.parametrize(
    "target",
    [("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"), ("torch", "float32")],
)
def test_build_on_globals_is_refused_and_nothing_is_poisoned(tmp_path, target):
    negate = h.dict_of({"__defaults__": h.tup(h.NONE)})
    attack = h.glob(*target) + h.tup(h.NONE, negate) + h.BUILD + h.POP
    pkl = h.program(attack + h.dict_of({"model": h.dict_of({"w": h.tensor("0", 4)})}))
    bad = h.torch_zip(str(tmp_path / "poison.pth"), pkl)
    good = str(tmp_path / "good.pth")
    torch.save({"model": {"w": torch.arange(4.0)}}, good)
    recs = run_worker([bad, good], tmp_path)
    assert recs[bad]["outcome"] == "CheckpointFormatError", recs[bad]
    assert recs[good]["outcome"] == "ok" and recs[good]["checksum"] == 6.0


def test_build_on_tensors_is_refused(tmp_path):
    # Legacy-style tensor BUILD could re-point a tensor at another storage (aliasing).
    other = h.tensor("0", 2, offset=2)
    pkl = h.program(
        h.dict_of({"model": h.dict_of({"w": h.tensor("0", 2) + h.tup(other) + h.BUILD})})
    )
    with pytest.raises(CheckpointFormatError, match="BUILD on a Tensor"):
        open_checkpoint(h.torch_zip(str(tmp_path / "m.pth"), pkl))


# ----------------------------------------------------------- 3. files that shrink
_SHRINK = r"""
import os, sys, torch, torch.nn as nn
from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointError
from d2_efficient_ckpt.checkpoint.formats.registry import open_checkpoint
from d2_efficient_ckpt.checkpoint.load.pipeline import LoadRequest, run_load
from d2_efficient_ckpt.checkpoint.load.source import source_of
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
ck = EfficientDetectionCheckpointer(model, optimizer=opt)
for path, mode in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if mode == "reader":
            opened = open_checkpoint(path)
            os.truncate(path, os.path.getsize(path) // 3)
            model_sd, _ = opened.split_model()
            with opened.reader() as r:
                [r.read(v) for v in model_sd.values()]
        else:
            data = ck._load_file(path)
            size = os.path.getsize(path)
            os.truncate(path, size // 3 if mode == "model" else size - 4096)
            request = LoadRequest(path, wanted=("optimizer",))
            run_load(source_of(path, data, "test"), ck.model, ck.checkpointables, request)
        print(mode, "NO ERROR")
    except CheckpointError as e:
        print(mode, "CLEAN", type(e).__name__, str(e).replace("\n", " "))
"""


def test_file_truncated_during_load_is_a_clean_error(tmp_path):
    # One process for the three ways (each a fresh file): importing torch and detectron2
    # costs more than the loads.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    modes = ["reader", "model", "optimizer"]
    paths = [str(tmp_path / f"{mode}.pth") for mode in modes]
    for path in paths:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    proc = subprocess.run(
        [sys.executable, "-c", _SHRINK, *[x for pair in zip(paths, modes) for x in pair]],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"killed by signal {-proc.returncode}: {proc.stderr[-1500:]}"
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line)
    for mode in modes:
        assert lines.get(mode, "").startswith("CLEAN"), (mode, proc.stdout)
        assert "changed while it was being read" in lines[mode], (mode, lines[mode])
    records = run_worker(paths, tmp_path)
    for path in paths:
        assert records[path]["outcome"] == "CheckpointFormatError"
        assert records[path]["verify"] == "failed"


# ----------------------------------------------------------- 4. silently wrong values
def test_compressed_records_are_refused(tmp_path):
    src = str(tmp_path / "m.pth")
    torch.save({"model": {"w": torch.arange(1000.0)}}, src)
    bad = h.recompress(src, str(tmp_path / "deflated.pth"))
    with pytest.raises(CheckpointFormatError, match="compressed"):
        open_checkpoint(bad)


def test_duplicate_records_are_refused(tmp_path):
    src = str(tmp_path / "m.pth")
    torch.save({"model": {"w": torch.arange(4.0) + 1}}, src)
    bad = h.duplicate_record(src, str(tmp_path / "dup.pth"))
    with pytest.raises(CheckpointFormatError, match="twice"):
        open_checkpoint(bad)


def _st(tmp_path, name, offsets, shape=(2,), data=bytes(16), dtype="F32", extra=None):
    header = {"a": {"dtype": dtype, "shape": list(shape), "data_offsets": offsets}}
    header.update(extra or {})
    return h.safetensors(str(tmp_path / f"{name}.safetensors"), header, data)


@pytest.mark.parametrize(
    "name, offsets, extra, match",
    [
        ("negative", [-8, 0], None, "data_offsets"),
        ("reversed", [8, 0], None, "data_offsets"),
        ("past_end", [8, 24], None, "truncated"),
        ("wrong_size", [0, 12], None, "needs 8"),
        (
            "overlap",
            [0, 8],
            {"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
            "overlap",
        ),
        ("float_offsets", [0.0, 8.0], None, "data_offsets"),
    ],
)
def test_safetensors_offsets_are_checked(tmp_path, name, offsets, extra, match):
    with pytest.raises(CheckpointFormatError, match=match):
        open_checkpoint(_st(tmp_path, name, offsets, extra=extra))


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b'{"a": 5}',
        b'{"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}',
        b'{"a": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}',
        b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
        b'{"a": {"dtype": "F32", "shape": [1]}}',
        b'{"__metadata__": {"k": 1}}',
        b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}',
        b"\xff\xfe{}",
        b"[" * 100000,
    ],
)
def test_malformed_safetensors_headers(tmp_path, header):
    path = h.raw_file(
        str(tmp_path / "m.safetensors"),
        len(header).to_bytes(8, "little") + header + bytes(8),
    )
    with pytest.raises(CheckpointFormatError, match="not a valid safetensors file"):
        open_checkpoint(path)


# ----------------------------------------------------------- 5. denial of service
def test_shared_substructures_do_not_hang(tmp_path):
    model = h.dict_of({"w": h.tensor("0", 4)})
    pkl = h.program(h.dict_of({"model": model, "optimizer": h.dag(64)}))
    assert len(pkl) < 4096
    path = h.torch_zip(str(tmp_path / "dag.pth"), pkl)
    rec = run_worker([path], tmp_path, timeout=60)[path]
    assert rec["outcome"] == "CheckpointFormatError" and "shared sub-structures" in rec["error"]


@pytest.mark.parametrize(
    "value, match",
    [
        (h.call(h.glob("builtins", "bytearray"), h.i(1 << 40)), "not bytes"),
        (h.EMPTY_LIST * 100_000 + h.APPEND * 99_999, "nested"),
        (h.i(1) + h.put(0xFFFFFFF0), ""),
        (
            h.call(h.glob("numpy", "dtype"), h.s("f8"))
            + h.POP
            + h.tensor("0", 4, shape=(1 << 40,), stride=(0,)),
            "larger than its file",
        ),
    ],
    ids=["bytearray", "nesting", "memo", "huge_view"],
)
def test_small_files_cannot_allocate_or_recurse(tmp_path, value, match):
    pkl = h.program(h.dict_of({"model": h.dict_of({"w": h.tensor("0", 4)}), "x": value}))
    for path in (h.torch_zip(str(tmp_path / "m.pth"), pkl),):
        if not match:
            data = open_checkpoint(path).data  # a huge memo key costs nothing
            assert data["x"] == 1
            continue
        with pytest.raises(CheckpointFormatError, match=match):
            open_checkpoint(path)


# ----------------------------------------------------------- 6. the promised error types
def test_truncated_legacy_files(tmp_path):
    src = h.legacy(str(tmp_path / "legacy.pth"), {"model": {"w": torch.arange(100.0)}})
    data = open(src, "rb").read()
    assert torch.equal(open_checkpoint(src).data["model"]["w"], torch.arange(100.0))
    paths = []
    for cut in (10, 30, 100, 300, len(data) // 2, len(data) - 1):
        paths.append(h.raw_file(str(tmp_path / f"cut{cut}.pth"), data[:cut]))
    for rec in run_worker(paths, tmp_path).values():
        assert rec["outcome"] == "CheckpointFormatError", rec


@pytest.mark.parametrize(
    "model, match",
    [
        (h.EMPTY_DICT + h.MARK + h.i(3) + h.tensor("0", 4) + h.SETITEMS, "not a string"),
        (h.dict_of({"w": h.s("text")}), "holds a str"),
        (h.EMPTY_LIST, "not a state dict"),
    ],
    ids=["int_key", "str_value", "list_model"],
)
def test_model_entry_is_checked(tmp_path, model, match):
    path = _model_file(tmp_path, "m.pth", model)
    with pytest.raises(CheckpointFormatError, match=match):
        EfficientDetectionCheckpointer(nn.Linear(2, 2)).load(path)


def test_broken_optimizer_entry_is_a_partial_load_error(tmp_path):
    model = nn.Linear(4, 4)
    path = str(tmp_path / "m.pth")
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": 5}}, path)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(PartialLoadError, match="'optimizer'"):
        EfficientDetectionCheckpointer(model, optimizer=opt).load(path)


# ----------------------------------------------------------- 7. messages
def test_corrupt_pickle_is_not_called_unsafe(tmp_path):
    path = h.torch_zip(str(tmp_path / "m.pth"), h.PROTO2 + b"\xfe\xfd" + h.STOP)
    with pytest.raises(CheckpointFormatError, match="corrupt") as err:
        open_checkpoint(path)
    assert "arbitrary code" not in str(err.value)


def test_unknown_global_is_unsafe(tmp_path):
    pkl = h.program(h.call(h.glob("os", "system"), h.s("true")))
    for path in h.all_formats(tmp_path, "evil", pkl):
        with pytest.raises(UnsafeCheckpointError, match="os.system"):
            open_checkpoint(path)


def test_not_a_regular_file(tmp_path):
    with pytest.raises(CheckpointFormatError, match="directory"):
        detect_format(str(tmp_path))
    fifo = str(tmp_path / "fifo.pth")
    os.mkfifo(fifo)
    with pytest.raises(CheckpointFormatError, match="not a regular file"):
        detect_format(fifo)
    if os.path.exists("/dev/zero"):
        with pytest.raises(CheckpointFormatError, match="not a regular file"):
            detect_format("/dev/zero")
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        detect_format(str(tmp_path / "missing.pth"))


def test_verify_reports_damage_as_failed_json(tmp_path):
    src = str(tmp_path / "m.pth")
    torch.save({"model": {"w": torch.arange(1000.0)}}, src)
    bad = h.recompress(src, str(tmp_path / "deflated.pth"))
    with zipfile.ZipFile(src) as zf:
        assert zf.testzip() is None
    proc = subprocess.run(
        [sys.executable, "-m", "d2_efficient_ckpt", "verify", bad, "--json"],
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["ok"] and "compressed" in " ".join(result["problems"])


def test_damaged_zip64_locator_is_a_format_error(tmp_path):
    # Found by the long fuzz run: zipfile raises BadZipFile ("multiple disks") from
    # is_zipfile itself for a locator that claims two disks.
    path = str(tmp_path / "m.pth")
    torch.save({"model": {"w": torch.ones(3)}}, path)
    data = bytearray(open(path, "rb").read())
    end = data.rfind(b"PK\x05\x06")
    data[end:end] = b"PK\x06\x07" + (0).to_bytes(4, "little") + bytes(8) + (2).to_bytes(4, "little")
    bad = h.raw_file(str(tmp_path / "disks.pth"), bytes(data))
    rec = run_worker([bad], tmp_path)[bad]
    assert rec["outcome"] == "CheckpointFormatError" and rec["verify"] == "failed", rec
