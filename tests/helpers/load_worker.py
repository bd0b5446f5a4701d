"""Load checkpoint files in a separate process and report how each load ended.

Usage: ``python load_worker.py OUT.jsonl FILE...``. For each file: open it, read every model
tensor through the reader, run ``inspect`` and ``verify``, then record the outcome as one
JSON line: ``ok`` (with a checksum of the values) or the error's type and message. The
line ``start FILE`` is written first, so a process killed by a signal names its file.
"""

import json
import os
import resource
import sys
import tempfile

import torch

from d2_efficient_ckpt.checkpoint.errors import CheckpointError
from d2_efficient_ckpt.checkpoint.formats.registry import open_checkpoint
from d2_efficient_ckpt.cli.inspect_cmd import inspect_file
from d2_efficient_ckpt.cli.verify_cmd import verify_file

_REBUILD = torch._utils._rebuild_tensor_v2
_DEFAULTS = (_REBUILD.__defaults__, _REBUILD.__kwdefaults__, dict(vars(_REBUILD)))


def _checksum(path: str) -> float:
    opened = open_checkpoint(path)
    model, _ = opened.split_model()
    total = 0.0
    with opened.reader() as reader:
        for key in model:
            t = reader.read(model[key])
            if t.numel() and (t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):
                total += float(t.double().sum())
    return total


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _warm_up() -> None:
    # First uses (thread pools, lazy imports of inspect and verify) are not a file's memory.
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "warm.pth")
        torch.save({"model": {"w": torch.ones(4)}}, path)
        _checksum(path)
        inspect_file(path)
        verify_file(path)


def main(out: str, paths) -> None:
    _warm_up()
    with open(out, "w") as f:
        for path in paths:
            f.write(json.dumps({"start": path}) + "\n")
            f.flush()
            rec = {"file": path}
            before = _max_rss()
            try:
                rec["checksum"] = _checksum(path)
                rec["outcome"] = "ok"
            except CheckpointError as e:
                rec["outcome"], rec["error"] = type(e).__name__, str(e)
            except BaseException as e:  # noqa: BLE001 (what the test is looking for)
                rec["outcome"], rec["error"] = "RAW " + type(e).__name__, str(e)[:300]
            try:
                info = inspect_file(path)
                rec["inspect"] = "ok" if info["safe"] else "unsafe"
            except CheckpointError as e:
                rec["inspect"] = type(e).__name__
            except BaseException as e:  # noqa: BLE001
                rec["inspect"] = "RAW " + type(e).__name__ + ": " + str(e)[:200]
            try:
                rec["verify"] = "ok" if verify_file(path)["ok"] else "failed"
            except CheckpointError as e:
                rec["verify"] = type(e).__name__
            except BaseException as e:  # noqa: BLE001
                rec["verify"] = "RAW " + type(e).__name__ + ": " + str(e)[:200]
            now = (_REBUILD.__defaults__, _REBUILD.__kwdefaults__, dict(vars(_REBUILD)))
            rec["poisoned"] = now != _DEFAULTS
            # The peak only grows: a load that needs more than any before it shows here.
            rec["peak_growth"] = _max_rss() - before
            rec["size"] = os.stat(path).st_size if os.path.isfile(path) else 0
            f.write(json.dumps(rec) + "\n")
            f.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
