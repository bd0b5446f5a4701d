"""Fuzzing the pickle-free training checkpoint: mutated files and mutated skeletons.

Same property as ``test_fuzz_loading``: every case ends in values or in one of the project's
errors, for ``load``, ``inspect`` and ``verify`` alike (checked in a separate process by
``load_worker.py``). Skeleton mutations keep the header valid JSON, so they reach the
training-tree decoder instead of stopping at the header parser.
"""

import json
import random

import numpy as np
import pytest

from d2_efficient_ckpt.checkpoint.formats.training_safetensors import write_training_safetensors
from tests.helpers.fuzzing import mutate, training_state
from tests.helpers.loading import run_worker

_KINDS = ["dict", "odict", "counter", "list", "tuple", "tensor", "ndarray", "set", 7, None]


def _base(tmp_path) -> str:
    model, opt = training_state()
    data = {
        "model": model.state_dict(),
        "trainer": {
            "iteration": 7,
            "optimizer": opt.state_dict(),
            "hooks": {"H": {"arr": np.arange(3), "pair": (1, [2.0, None])}},
        },
        "iteration": 7,
    }
    path = str(tmp_path / "base.safetensors")
    with open(path, "wb") as f:
        write_training_safetensors(data, f)
    return path


def _split(raw: bytes):
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header, body: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


def _mutate_tree(tree: str, rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:  # bytes of the JSON text
        return mutate(tree.encode(), rng).decode("utf-8", "replace")
    node = json.loads(tree)
    nodes = []

    def collect(x):
        if isinstance(x, dict):
            nodes.append(x)
            for v in x.values():
                collect(v)
        elif isinstance(x, list):
            for v in x:
                collect(v)

    collect(node)
    target = rng.choice(nodes)
    if kind == 1:
        target["t"] = rng.choice(_KINDS)
    elif kind == 2:  # tensor names the file lacks, or of another shape
        names = [n["k"] for n in nodes if "k" in n]
        target["k"] = rng.choice(names + ["nowhere", 3, None, ""])
    elif kind == 3:  # containers of the wrong shape
        key = rng.choice(["items", "v", "meta"])
        target[key] = rng.choice([[], [[1]], [[[1], 2]], {"a": 1}, "x", [[None, {"t": "set"}]]])
    else:  # deep nesting, within and past the limit (written as text: too deep for json)
        target["items" if "items" in target else "v"] = "DEEP"
        depth = rng.choice([50, 99, 101, 5000])
        deep = '{"t":"list","v":[' * depth + '{"t":"tensor","k":"nowhere"}' + "]}" * depth
        return json.dumps(node).replace('"DEEP"', '[["x",' + deep + "]]")
    return json.dumps(node)


def make_cases(tmp_path, n: int, seed: int):
    rng = random.Random(seed)
    base = _base(tmp_path)
    raw = open(base, "rb").read()
    header, body = _split(raw)
    paths = []
    for k in range(n):
        path = tmp_path / f"case{k}.safetensors"
        if k % 3 == 0:
            path.write_bytes(mutate(raw, rng))
        else:
            h = json.loads(json.dumps(header))
            h["__metadata__"]["tree"] = _mutate_tree(h["__metadata__"]["tree"], rng)
            path.write_bytes(_join(h, body))
        paths.append(str(path))
    return base, paths


@pytest.mark.parametrize("n, seed", [(90, 0), pytest.param(900, 1, marks=pytest.mark.slow)])
def test_fuzz_training_safetensors(tmp_path, n, seed):
    base, paths = make_cases(tmp_path, n, seed)
    records = run_worker(paths + [base], tmp_path, timeout=300)
    assert records[base]["outcome"] == "ok", records[base]
    assert records[base]["verify"] == "ok", records[base]
    outcomes = {rec["outcome"] for rec in records.values()}
    assert "CheckpointFormatError" in outcomes  # the skeleton mutations were noticed
