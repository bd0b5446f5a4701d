"""The second red team's loader cases: each ends with the file's values or our own error.

Each test rebuilds one mechanism of a hostile or odd file (a shared data blob, a big-endian
array, a FIFO swapped in after detection, an attribute that shadows a method, numbers out
of range in a record) and checks the promise: no hang, no memory far beyond the file, no raw
exception, only the file's true values.
"""

import json
import os
import pickle
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
import torch

from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError
from d2_efficient_ckpt.checkpoint.formats import registry
from d2_efficient_ckpt.checkpoint.formats.registry import open_checkpoint
from d2_efficient_ckpt.checkpoint.save import IntegrityError, check_cheap
from d2_efficient_ckpt.checkpoint.save.integrity import record_path
from tests.helpers import hostile as h


class _SharedBlob:
    """Pickles as a numpy array whose data bytes are one object shared by every instance."""

    def __init__(self, blob, dtype="<f4"):
        self.blob, self.dtype = blob, np.dtype(dtype)

    def __reduce__(self):
        n = len(self.blob) // self.dtype.itemsize
        state = (1, (n,), self.dtype, False, self.blob)
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), state)


def test_one_blob_shared_by_a_thousand_arrays_is_held_once(tmp_path):
    blob = np.arange(1 << 18, dtype=np.float32).tobytes()  # 1 MiB
    path = str(tmp_path / "shared.pkl")
    with open(path, "wb") as f:
        pickle.dump({f"w{i}": _SharedBlob(blob) for i in range(1000)}, f, protocol=2)
    assert os.path.getsize(path) < 2 << 20
    tracemalloc.start()
    opened = open_checkpoint(path)
    model, _ = opened.split_model()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB for a 1 MiB file"
    first = torch.as_tensor(model["w0"])
    assert torch.equal(first, torch.arange(1 << 18, dtype=torch.float32))
    assert torch.equal(torch.as_tensor(model["w999"]), first)


def test_big_endian_arrays_come_back_with_their_values(tmp_path):
    path = str(tmp_path / "be.pkl")
    values = np.arange(12, dtype=">f8").reshape(3, 4)
    with open(path, "wb") as f:
        pickle.dump({"w": values}, f, protocol=2)
    model, _ = open_checkpoint(path).split_model()
    t = torch.as_tensor(model["w"])
    assert t.dtype == torch.float64 and t.tolist() == values.tolist()


def test_a_big_endian_blob_cannot_be_shared(tmp_path):
    blob = np.arange(64, dtype=">f4").tobytes()
    path = str(tmp_path / "shared_be.pkl")
    with open(path, "wb") as f:
        arrays = {f"w{i}": _SharedBlob(blob, ">f4") for i in range(3)}
        pickle.dump(arrays, f, protocol=2)
    with pytest.raises(CheckpointFormatError, match="another byte order"):
        open_checkpoint(path)


def test_state_dict_attributes_other_than_metadata_are_refused(tmp_path):
    # BUILD of the model's OrderedDict with {"items": ...} would shadow its items() method.
    pkl = h.program(
        h.glob("collections", "OrderedDict"),
        h.EMPTY_TUPLE,
        h.REDUCE,
        h.dict_of({"items": h.i(1)}),
        h.BUILD,
    )
    for path in h.all_formats(tmp_path, "attr", h.wrap_model(pkl)):
        with pytest.raises(CheckpointFormatError, match="_metadata"):
            open_checkpoint(path)


def test_a_fifo_swapped_in_after_detection_is_refused_not_waited_on(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    torch.save({"model": {"w": torch.ones(2)}}, path)
    real = registry.detect_format

    def detect_then_swap(p):
        kind = real(p)
        os.remove(p)
        os.mkfifo(p)
        return kind

    monkeypatch.setattr(registry, "detect_format", detect_then_swap)
    outcome = []

    def load():
        try:
            open_checkpoint(str(path))
        except CheckpointFormatError as e:
            outcome.append(str(e))

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(30)
    assert outcome and "not a regular file" in outcome[0]


@pytest.mark.parametrize(
    "field, value",
    [
        ("iteration", int("9" * 401)),
        ("size", float("inf")),
        ("created", int("1" * 401)),
        ("size", -5),
        ("file", 7),
    ],
    ids=["401-digit-iteration", "infinite-size", "401-digit-time", "negative-size", "int-name"],
)
def test_record_numbers_out_of_range_are_our_error(tmp_path, field, value):
    path = tmp_path / "m.pth"
    torch.save({"model": {"w": torch.ones(2)}}, path)
    record = {"file": "m.pth", "size": os.path.getsize(path), "hash": "0", field: value}
    with open(record_path(str(path)), "w") as f:
        f.write(json.dumps(record))
    with pytest.raises(IntegrityError, match="integrity record"):
        check_cheap(str(path))


def _legacy_tensor(numel, shape, stride):
    # The legacy persistent id: ("storage", type, key, location, numel, view).
    sid = h.tup(
        h.s("storage"), h.glob("torch", "FloatStorage"), h.s("0"), h.s("cpu"), h.i(4), h.NONE
    )
    return h.call(
        h.glob("torch._utils", "_rebuild_tensor_v2"),
        sid + h.BINPERSID,
        h.i(0),
        h.tup(*[h.i(v) for v in shape]),
        h.tup(*[h.i(v) for v in stride]),
        h.NEWFALSE,
        h.call(h.glob("collections", "OrderedDict")),
    )


def _legacy_with(tmp_path, name, tensor_pkl, numel=4):
    # A legacy file whose storage "0" holds `numel` floats, viewed by the given tensor.
    main = h.program(h.dict_of({"model": h.dict_of({"w": tensor_pkl})}))
    keys = h.plain_pickle(["0"])
    data = struct.pack("<q", numel) + torch.arange(float(numel)).numpy().tobytes()
    return h.legacy_raw(str(tmp_path / f"{name}.pth"), main, keys, data)


@pytest.mark.parametrize("reader", ["legacy", "zip", "pyth"])
def test_a_tensor_bigger_than_its_storage_is_refused_on_every_reader(tmp_path, reader):
    # 4 floats of storage, a view of 1,000: set_() on a growable storage would grow it and
    # hand out uninitialised memory as the file's values.
    views = {"big": ((1000,), (1,)), "strided": ((2, 2), (3, 1))}  # the second reaches 4 of 0..3
    for name, (shape, stride) in views.items():
        if reader == "legacy":
            path = _legacy_with(tmp_path, name, _legacy_tensor(4, shape, stride))
        else:
            pkl = h.tensor("0", 4, shape=shape, stride=stride)
            prog = h.program(h.dict_of({"model": h.dict_of({"w": pkl})}))
            path = h.torch_zip(
                str(tmp_path / f"{name}.{'pth' if reader == 'zip' else 'pyth'}"), prog
            )
        for mmap in (True, False):
            with pytest.raises(CheckpointFormatError, match="past the end of its storage"):
                open_checkpoint(path, mmap=mmap).split_model()


def test_huge_dimensions_are_refused_before_any_arithmetic(tmp_path):
    huge = h.long(1 << (8 * 128 * 1024))  # a 128 KiB integer
    rebuilt = h.call(
        h.glob("torch._utils", "_rebuild_tensor_v2"),
        h.storage("0", 4),
        h.i(0),
        h.tup(*[huge] * 64),
        h.tup(*[h.i(1)] * 64),
        h.NEWFALSE,
        h.call(h.glob("collections", "OrderedDict")),
    )
    pkl = h.program(h.dict_of({"model": h.dict_of({"w": rebuilt})}))
    path = h.torch_zip(str(tmp_path / "dims.pth"), pkl)
    start = time.perf_counter()
    with pytest.raises(CheckpointFormatError, match="2\\*\\*62"):
        open_checkpoint(path)
    assert time.perf_counter() - start < 10


def test_huge_integers_are_named_by_size_in_messages_and_inspect(tmp_path, capsys):
    from d2_efficient_ckpt.cli import main as cli

    huge = 10**5000
    # As a dict key it is refused before it is hashed (see the key policy), by type name.
    pkl = h.program(h.dict_of({"model": h.int_keyed(huge)}))
    path = h.torch_zip(str(tmp_path / "key.pth"), pkl)
    with pytest.raises(CheckpointFormatError, match="dict key of type int"):
        open_checkpoint(path).split_model()
    # An iteration of 5000 digits: inspect shows it, with exit 0 and valid JSON.
    p2 = str(tmp_path / "iter.pth")
    torch.save({"model": {"w": torch.ones(1)}, "iteration": huge}, p2)
    assert cli(["inspect", p2, "--json"]) == 0
    assert "bit integer" in json.loads(capsys.readouterr().out)["iteration"]
    assert cli(["inspect", p2]) == 0


def test_legacy_header_and_key_list_of_other_types_are_our_error(tmp_path):
    # The storage list names the int 0 where the tensors use storage "0".
    main = h.program(h.dict_of({"model": h.dict_of({"w": _legacy_tensor(4, (4,), (1,))})}))
    data = struct.pack("<q", 4) + torch.arange(4.0).numpy().tobytes()
    zero = h.legacy_raw(str(tmp_path / "keys.pth"), main, h.plain_pickle([0]), data)
    with pytest.raises(CheckpointFormatError, match="list of storages"):
        open_checkpoint(zero)
    # The file starts with the magic number's bytes, but its first pickle yields an array.
    magic = h.plain_pickle(0x1950A86A20F9469CFC6C)[:-1] + h.POP
    array = h.plain_pickle(np.array([1, 2]))[2:]
    path = h.raw_file(str(tmp_path / "magic.pth"), magic + array + h.plain_pickle({}))
    with pytest.raises(CheckpointFormatError, match="magic number"):
        open_checkpoint(path)


def test_safetensors_dimension_beside_a_zero_is_bounded(tmp_path):
    path = h.safetensors(
        str(tmp_path / "dims.safetensors"),
        {"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}},
        b"",
    )
    with pytest.raises(CheckpointFormatError, match="invalid shape"):
        open_checkpoint(path)


def test_verify_reads_8_bit_float_files(tmp_path, capsys):
    from safetensors.torch import save_file

    from d2_efficient_ckpt.cli import main as cli

    path = str(tmp_path / "fp8.safetensors")
    w = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    save_file({"w": w, "v": torch.tensor([1.0, -3.0]).to(torch.float8_e5m2)}, path)
    assert cli(["verify", path, "--json"]) == 0, capsys.readouterr()


def test_hooks_of_another_shape_are_our_error(tmp_path):
    from d2_efficient_ckpt import EfficientDetectionCheckpointer

    path = str(tmp_path / "hooks.pth")
    torch.save(
        {
            "model": {"weight": torch.ones(2, 2), "bias": torch.ones(2)},
            "trainer": {"hooks": [1, 2]},
        },
        path,
    )

    class Trainer:
        def state_dict(self):
            return {"iteration": 0, "hooks": {}}

        def load_state_dict(self, state):
            pass

    ck = EfficientDetectionCheckpointer(torch.nn.Linear(2, 2), trainer=Trainer())
    with pytest.raises(CheckpointFormatError, match="hooks are a list"):
        ck.load(path)


def test_dict_keys_whose_hashes_collide_are_refused_fast(tmp_path):
    keys = h.colliding_int_keys(100_000)
    body = b"".join(h.long(k) + h.i(0) for k in keys)
    state = h.EMPTY_DICT + h.MARK + body + h.SETITEMS
    pkl = h.program(h.dict_of({"model": h.EMPTY_DICT, "optimizer": state}))
    start = time.perf_counter()
    for path in h.all_formats(tmp_path, "flood", pkl):
        with pytest.raises(CheckpointFormatError, match="dict key"):
            open_checkpoint(path)
    assert time.perf_counter() - start < 10


def test_skeleton_keys_whose_hashes_collide_are_refused(tmp_path):
    from d2_efficient_ckpt.checkpoint.formats.training_safetensors import decode

    items = [[k, 0] for k in h.colliding_int_keys(1000)]
    with pytest.raises(ValueError, match="short scalar key"):
        decode({"t": "dict", "items": items}, tensor=lambda name: None)


@pytest.mark.parametrize(
    "key, safe",
    [("a", True), (2**61 - 2, True), (2**61 - 1, False), (-(2**61) + 2, True), (1.5, True),
     (1.5 * 2**61, False), (float("nan"), False), ((1, "a"), True), (((1,),), False),
     (frozenset(), False)],
)  # fmt: skip
def test_key_policy(key, safe):
    from d2_efficient_ckpt.checkpoint.formats.safe_pickle.allowlist import is_safe_key

    assert is_safe_key(key) is safe


def test_a_key_of_a_million_dots_costs_one_node(saved, fresh, tmp_path):
    from d2_efficient_ckpt import EfficientDetectionCheckpointer

    _, trained, _ = saved
    dotted = "roi_heads." + "a." * 800_000 + "weight"
    path = str(tmp_path / "dots.pth")
    torch.save({"model": {**trained.state_dict(), dotted: torch.ones(1)}}, path)
    ck = EfficientDetectionCheckpointer(fresh())
    tracemalloc.start()
    start = time.perf_counter()
    ck.load(path)
    table = ck.last_report.format_table()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - start < 20 and peak < 200 << 20, peak
    assert dotted in ck.last_report.unexpected and "unexpected" in table


def test_convert_never_lets_metadata_replace_the_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    from d2_efficient_ckpt.cli import main as cli
    from d2_efficient_ckpt.cli.common import ENTRIES_METADATA_KEY

    src = str(tmp_path / "m.safetensors")
    entries = json.dumps({"model": "not weights", "iteration": 7, "nested": {"a": 1}})
    save_file({"w": torch.arange(4.0)}, src, metadata={ENTRIES_METADATA_KEY: entries})
    out = str(tmp_path / "m.pth")
    assert cli(["convert", src, out]) == 0
    data = torch.load(out, weights_only=True)
    assert torch.equal(data["model"]["w"], torch.arange(4.0)) and data["iteration"] == 7
    assert "nested" not in data
    bad = str(tmp_path / "bad.safetensors")
    save_file({"w": torch.ones(1)}, bad, metadata={ENTRIES_METADATA_KEY: "[1, 2]"})
    assert cli(["convert", bad, str(tmp_path / "bad.pth")]) == 2
    assert "not a JSON object" in capsys.readouterr().err


def test_caffe2_blob_names_that_collide_are_our_error(tmp_path, capsys, fresh):
    from d2_efficient_ckpt import EfficientDetectionCheckpointer
    from d2_efficient_ckpt.cli import main as cli

    path = str(tmp_path / "c2.pkl")
    with open(path, "wb") as f:
        blobs = {"fc_w": np.ones((2, 2), np.float32), "fc.w": np.ones((2, 2), np.float32)}
        pickle.dump({"blobs": blobs}, f, protocol=2)
    assert cli(["convert", path, str(tmp_path / "c2.pth"), "--from", "caffe2"]) == 2
    assert "not Caffe2 names" in capsys.readouterr().err
    with pytest.raises(CheckpointFormatError, match="become one detectron2 name"):
        EfficientDetectionCheckpointer(fresh()).load(path)


def test_an_ndarray_node_over_a_bfloat16_tensor_is_refused_by_name():
    from d2_efficient_ckpt.checkpoint.formats.training_safetensors import decode

    skeleton = {"t": "dict", "items": [["a", {"t": "ndarray", "k": "x"}]]}
    with pytest.raises(ValueError, match="bfloat16"):
        decode(skeleton, tensor=lambda name: torch.zeros(2, dtype=torch.bfloat16))
