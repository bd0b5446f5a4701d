"""Fuzzing the loader, second tier: generators for whole families of hostile files.

The first tier (``test_fuzz_loading``) mutates bytes and assembles random opcodes. This tier
draws from the families the second red team found, with random parameters, so that the next
member of a family is found by the test:

* sizes and dimensions: shapes, strides and offsets of every magnitude, up to integers of
  thousands of digits, and more dimensions than allowed;
* hash collisions: dicts, sets and OrderedDicts whose int or float keys hash alike;
* shared references: one tensor, blob or array referenced many times;
* module metadata: ``_metadata`` and other state-dict attributes with odd values;
* names: keys with non-ASCII digits, huge numbers, many dots;
* sidecars: integrity records with numbers out of range, of other files, of other types;
* special files: a FIFO or a device under a checkpoint's or a record's name.

Property, checked by ``load_worker.py`` for every case as in the first tier: values or the
project's error, never a signal, a hang or a raw exception, and the process's peak memory
grows by at most the bound of ``docs/security.md``.
"""

import json
import os
import random
import struct

import numpy as np
import pytest
import torch

from tests.helpers import hostile as h
from tests.helpers.loading import run_worker

HASH_PRIME = (1 << 61) - 1


def _long(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def _int(value: int) -> bytes:
    return h.i(value) if -(2**31) <= value < 2**31 else _long(value)


def _float(value: float) -> bytes:
    return b"G" + struct.pack(">d", value)


def _magnitude(rng: random.Random) -> int:
    return rng.choice(
        [0, 1, 2, 3, 4, 5, 1 << 20, 1 << 31, 1 << 61, 1 << 62, 1 << 63, 1 << 64, 10**400,
         1 << (8 * rng.randint(1, 4096)), -1, -(1 << 63)]
    )  # fmt: skip


def _rebuild(shape, stride, offset, numel=4) -> bytes:
    return h.call(
        h.glob("torch._utils", "_rebuild_tensor_v2"),
        h.storage("0", numel),
        _int(offset),
        h.tup(*[_int(v) for v in shape]),
        h.tup(*[_int(v) for v in stride]),
        h.NEWFALSE,
        h.call(h.glob("collections", "OrderedDict")),
    )


def sizes(rng: random.Random) -> bytes:
    dims = rng.choice([0, 1, 2, 4, 64, 65, 200])
    shape = [_magnitude(rng) if rng.random() < 0.3 else rng.randint(0, 4) for _ in range(dims)]
    stride = [_magnitude(rng) if rng.random() < 0.3 else rng.randint(0, 4) for _ in range(dims)]
    offset = _magnitude(rng) if rng.random() < 0.3 else rng.randint(0, 4)
    return h.dict_of({"w": _rebuild(shape, stride, offset)})


def collisions(rng: random.Random) -> bytes:
    n = rng.choice([10, 1000, 50_000])
    if rng.random() < 0.5:
        keys = [_long(7 + i * HASH_PRIME) for i in range(n)]
    else:
        keys = [_float(1.5 * 2.0 ** (61 * (i % 16))) for i in range(n)]
    container = rng.choice(["dict", "set", "frozenset", "odict"])
    if container == "dict":
        body = h.EMPTY_DICT + h.MARK + b"".join(k + h.i(0) for k in keys) + h.SETITEMS
    elif container == "set":
        body = b"\x8f" + h.MARK + b"".join(keys) + b"\x90"
    elif container == "frozenset":
        body = h.MARK + b"".join(keys) + b"\x91"
    else:
        pairs = h.MARK + b"".join(h.tup(k, h.i(0)) for k in keys) + b"l"
        body = h.call(h.glob("collections", "OrderedDict"), pairs)
    return h.dict_of({"w": h.tensor("0", 4), "extra": body})


def shared(rng: random.Random) -> bytes:
    n = rng.choice([10, 1000, 5000])
    kind = rng.choice(["tensor", "bytes", "list"])
    if kind == "tensor":
        first = h.tensor("0", 4) + h.put(0)
    elif kind == "bytes":
        first = h.b(bytes(rng.choice([16, 1 << 16]))) + h.put(0)
    else:
        first = h.MARK + h.tensor("0", 4) * 4 + b"l" + h.put(0)
    if rng.random() < 0.5:  # many model keys, one tensor
        keys = h.MARK + h.s("w0") + h.tensor("0", 4) + h.put(1)
        keys += b"".join(h.s(f"w{i}") + h.get(1) for i in range(1, n))
        return h.EMPTY_DICT + keys + h.SETITEMS
    refs = h.MARK + first + h.get(0) * (n - 1) + b"l"
    return h.dict_of({"w": h.tensor("0", 4), "optimizer": h.dict_of({"state": refs})})


def metadata(rng: random.Random) -> bytes:
    value = rng.choice(
        [h.s("x"), _long(10**5000), h.NEWTRUE, h.NONE, h.EMPTY_LIST, h.dict_of({"a": h.i(1)}),
         h.tensor("0", 4)]
    )  # fmt: skip
    key = rng.choice(["version", "assign_to_params_buffers", "strict", "items", "_metadata"])
    meta = h.dict_of({"": h.dict_of({key: value}), "w": value})
    attr = rng.choice(["_metadata", "items", "keys", "__dict__", "_metadata"])
    od = h.call(h.glob("collections", "OrderedDict"))
    od += h.s("w") + h.tensor("0", 4) + h.SETITEM
    return od + h.dict_of({attr: meta}) + h.BUILD


def names(rng: random.Random) -> bytes:
    key = rng.choice(
        ["roi_heads.².weight", "backbone.bottom_up.res2." + "7" * rng.randint(1, 6000) + ".w",
         "a." * rng.randint(1, 200_000) + "w", "x" * rng.randint(1, 1 << 20),
         "backbone.bottom_up.res3.٣.conv1.weight", "head.cls_subnet.1" + "0" * 5000 + ".weight"]
    )  # fmt: skip
    return h.dict_of({"w": h.tensor("0", 4), key: h.tensor("0", 4)})


FAMILIES = [sizes, collisions, shared, metadata, names]


def _record(rng: random.Random, path: str) -> None:
    size = os.path.getsize(path)
    field, value = rng.choice(
        [("size", 10**400), ("size", -1), ("size", float("inf")), ("iteration", 10**401),
         ("created", 1e400), ("file", "other.pth"), ("file", 3), ("run", ["x"]),
         ("size", size), ("hash", None)]
    )  # fmt: skip
    record = {"file": os.path.basename(path), "size": size, "hash": "0", field: value}
    with open(path + ".integrity.json", "w") as f:
        f.write(json.dumps(record))


def make_cases(tmp_path, n: int, seed: int):
    rng = random.Random(seed)
    paths = []
    for k in range(n):
        family = FAMILIES[k % len(FAMILIES)]
        model = family(rng)
        pkl = h.program(h.dict_of({"model": model, "iteration": _int(_magnitude(rng))}))
        ext = rng.choice(["pth", "pyth", "pkl"])
        path = str(tmp_path / f"{family.__name__}{k}.{ext}")
        if ext == "pkl":
            h.raw_file(path, pkl)
        else:
            h.torch_zip(path, pkl)
        if rng.random() < 0.3:
            _record(rng, path)
        paths.append(path)
    # Special files: under a checkpoint's name, and under a record's name.
    fifo = str(tmp_path / "fifo.pth")
    os.mkfifo(fifo)
    good = str(tmp_path / "good.pth")
    torch.save({"model": {"w": torch.arange(4.0)}}, good)
    os.mkfifo(good + ".integrity.json")
    zero = str(tmp_path / "zero.pth")
    torch.save({"model": {"w": torch.arange(4.0)}}, zero)
    os.symlink("/dev/zero", zero + ".integrity.json")
    return paths + [fifo, good, zero]


def _check(tmp_path, n, seed, batch=60):
    paths = make_cases(tmp_path, n, seed)
    records = {}
    for start in range(0, len(paths), batch):
        records.update(run_worker(paths[start : start + batch], tmp_path, timeout=300))
    assert len(records) == len(paths)
    # A benign member of every family still loads with its values.
    assert records[str(tmp_path / "good.pth")]["checksum"] == pytest.approx(6.0)


def test_fuzz_families(tmp_path):
    _check(tmp_path, n=100, seed=0)


@pytest.mark.slow
def test_fuzz_families_long(tmp_path):
    _check(tmp_path, n=1000, seed=1)


def test_shared_numpy_blobs_stay_within_the_bound(tmp_path):
    # A family the pickle assembler above does not reach: numpy arrays over one blob.
    blob = np.arange(1 << 18, dtype=np.float32).tobytes()
    state = (1, ((1 << 18),), np.dtype("<f4"), False, blob)

    class Shared:
        def __reduce__(self):
            return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), state)

    path = h.raw_file(
        str(tmp_path / "blob.pkl"), h.plain_pickle({f"w{i}": Shared() for i in range(1000)})
    )
    (rec,) = run_worker([path], tmp_path).values()
    assert rec["outcome"] == "ok", rec
