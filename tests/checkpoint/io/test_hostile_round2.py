"""The second red team's loader cases: each ends with the file's values or our own error.

Each test rebuilds one mechanism of a hostile or odd file (a shared data blob, a big-endian
array, a FIFO swapped in after detection, an attribute that shadows a method, numbers out
of range in a record) and checks the promise: no hang, no memory far beyond the file, no raw
exception, only the file's true values.
"""

import json
import os
import pickle
import threading
import tracemalloc

import numpy as np
import pytest
import torch

from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError
from d2_efficient_ckpt.checkpoint.io import readers
from d2_efficient_ckpt.checkpoint.io.readers import open_checkpoint
from d2_efficient_ckpt.checkpoint.save import IntegrityError, check_cheap
from d2_efficient_ckpt.checkpoint.save.integrity import record_path

from . import hostile as h


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
    for path in h.all_formats(tmp_path, "attr", _wrap_model(pkl)):
        with pytest.raises(CheckpointFormatError, match="_metadata"):
            open_checkpoint(path)


def _wrap_model(model_pkl):
    # {"model": <model_pkl>} as one pickle program.
    return h.program(h.EMPTY_DICT, h.s("model"), model_pkl[2:-1], h.SETITEM)


def test_a_fifo_swapped_in_after_detection_is_refused_not_waited_on(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    torch.save({"model": {"w": torch.ones(2)}}, path)
    real = readers.detect_format

    def detect_then_swap(p):
        kind = real(p)
        os.remove(p)
        os.mkfifo(p)
        return kind

    monkeypatch.setattr(readers, "detect_format", detect_then_swap)
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
