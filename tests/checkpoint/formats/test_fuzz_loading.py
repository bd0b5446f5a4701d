"""Fuzzing the loader: mutated real checkpoints and random pickle programs.

Property: every load of every case ends in values or in one of the project's errors:
never a signal, a hang, a raw exception, or a change to torch's functions that a later load
would see (``load_worker.py`` checks all of it, plus ``inspect`` and ``verify``). Cases run
in batches in separate processes. The normal run takes about a minute; ``-m slow`` runs
ten times as many cases.
"""

import random
import zipfile

import numpy as np
import pytest
import torch

from tests.helpers import hostile as h
from tests.helpers.fuzzing import mutate, training_state
from tests.helpers.loading import run_worker


def base_files(tmp_path):
    """One real checkpoint per supported format, with its expected value checksum."""
    model, opt = training_state()
    sd = model.state_dict()
    checksum = sum(float(v.double().sum()) for v in sd.values())
    full = {"model": sd, "optimizer": opt.state_dict(), "iteration": np.int64(7)}
    out = {}
    out["zip.pth"] = str(tmp_path / "base_zip.pth")
    torch.save(full, out["zip.pth"])
    out["legacy.pth"] = h.legacy(str(tmp_path / "base_legacy.pth"), full)
    out["model.pyth"] = str(tmp_path / "base.pyth")
    torch.save({"model_state": sd}, out["model.pyth"])
    arrays = {k: v.numpy() for k, v in sd.items()}
    out["d2.pkl"] = h.raw_file(
        str(tmp_path / "base_d2.pkl"),
        h.plain_pickle({"model": arrays, "__author__": "fuzz"}, protocol=2),
    )
    out["c2.pkl"] = h.raw_file(
        str(tmp_path / "base_c2.pkl"), h.plain_pickle({"blobs": arrays}, protocol=4)
    )
    from safetensors.torch import save_file

    out["st.safetensors"] = str(tmp_path / "base.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, out["st.safetensors"])
    return out, checksum


def _zip_parts(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = zf.read(next(n for n in names if n.endswith("data.pkl")))
        storages = {n.rsplit("/", 1)[1]: zf.read(n) for n in names if "/data/" in n}
    return pkl, storages


_GLOBALS = [
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch", "FloatStorage"), ("torch", "float32"),
    ("torch", "Size"), ("torch", "device"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("_codecs", "encode"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "slice"),
    ("os", "system"), ("builtins", "getattr"),
]  # fmt: skip

_ATOMS = [
    h.NONE, h.NEWTRUE, h.NEWFALSE, h.EMPTY_TUPLE, h.EMPTY_DICT, h.EMPTY_LIST, h.MARK, h.TUPLE,
    h.APPEND, h.APPENDS, h.SETITEM, h.SETITEMS, h.REDUCE, h.BUILD, h.DUP, h.POP, h.BINPERSID,
    b"\x85", b"\x86", b"\x87", b"\x8f", b"\x90", b"\x91", b"\x94", b"1", b"l", b"d",
]  # fmt: skip


def random_program(rng: random.Random) -> bytes:
    """A random pickle from allowlisted (and a few forbidden) globals and data opcodes."""
    ops = []
    for _ in range(rng.randint(1, 60)):
        r = rng.random()
        if r < 0.25:
            ops.append(h.glob(*rng.choice(_GLOBALS)))
        elif r < 0.45:
            ops.append(h.i(rng.choice([0, 1, 2, 3, 4, -1, 255, 1 << 20, 1 << 40])))
        elif r < 0.55:
            ops.append(h.s(rng.choice(["f4", "storage", "0", "cpu", "<", "latin1", "b"])))
        elif r < 0.6:
            ops.append(h.b(bytes(rng.choice([0, 1, 4, 8, 16]))))
        elif r < 0.68:
            ops.append(rng.choice([h.put, h.get])(rng.randrange(6)))
        elif r < 0.75:
            ops.append(h.tensor("0", 4))
        else:
            ops.append(rng.choice(_ATOMS))
    return h.PROTO2 + b"".join(ops) + h.STOP


def make_cases(tmp_path, n: int, seed: int):
    rng = random.Random(seed)
    bases, _ = base_files(tmp_path)
    raw = {name: open(path, "rb").read() for name, path in bases.items()}
    zip_pkl, zip_storages = _zip_parts(bases["zip.pth"])
    paths = []
    for k in range(n):
        choice = k % 4
        name = rng.choice(sorted(raw))
        ext = name.rsplit(".", 1)[1]
        path = str(tmp_path / f"case{k}.{ext}")
        if choice == 0:  # whole-file mutation of any format
            h.raw_file(path, mutate(raw[name], rng))
        elif choice == 1:  # a mutated pickle inside a valid archive (CRCs are right)
            h.torch_zip(str(tmp_path / f"case{k}.pth"), mutate(zip_pkl, rng), zip_storages)
            path = str(tmp_path / f"case{k}.pth")
        elif choice == 2:  # a random program as a .pkl and as a torch zip
            prog = random_program(rng)
            if rng.random() < 0.5:
                path = h.raw_file(str(tmp_path / f"case{k}.pkl"), prog)
            else:
                path = h.torch_zip(str(tmp_path / f"case{k}.pth"), prog)
        else:  # a mutated zoo pickle (pickle opcodes without a CRC in the way)
            src = raw[rng.choice(["d2.pkl", "c2.pkl"])]
            path = h.raw_file(str(tmp_path / f"case{k}.pkl"), mutate(src, rng))
        paths.append(path)
    return bases, paths


def _check(tmp_path, n, seed, batch=150):
    bases, paths = make_cases(tmp_path, n, seed)
    for start in range(0, len(paths), batch):
        run_worker(paths[start : start + batch], tmp_path, timeout=300)
    # Nothing above changed what a clean load returns: the pristine files load exactly.
    records = run_worker(list(bases.values()), tmp_path)
    model, _ = training_state()
    want = sum(float(v.double().sum()) for v in model.state_dict().values())
    for path, rec in records.items():
        assert rec["outcome"] == "ok", rec
        assert rec["checksum"] == pytest.approx(want, rel=1e-12), path


def test_fuzz_loading(tmp_path):
    _check(tmp_path, n=300, seed=0)


@pytest.mark.slow
def test_fuzz_loading_long(tmp_path):
    _check(tmp_path, n=3000, seed=1)
