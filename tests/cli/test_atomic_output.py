"""``convert`` and ``strip`` write as the saver does: atomically, verified, with a record.

An output is a temporary file until it is complete, fsynced and read back; only then does it
get its name and an integrity record that ``verify`` checks. A command that fails or is
interrupted midway leaves neither a temporary file nor a partial output; one killed outright
leaves only a temporary file that the stale-file cleaner recognises and removes.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from d2_efficient_ckpt.checkpoint.save import integrity
from d2_efficient_ckpt.checkpoint.save.integrity import record_path
from d2_efficient_ckpt.checkpoint.storage.atomic import is_temp_file
from d2_efficient_ckpt.checkpoint.storage.stale import remove_stale_temp_files
from d2_efficient_ckpt.cli import main
from tests.helpers.config import REPO

# (command, output name): both routes of convert, and strip.
ROUTES = [
    (["convert"], "out.safetensors"),
    (["convert"], "out.pth"),
    (["convert", "--training"], "out.safetensors"),
    (["strip", "--fp16"], "out.pth"),
]


@pytest.fixture
def training_file(tmp_path):
    """A torch training checkpoint of a few MiB: model, optimizer state, iteration."""
    src = tmp_path / "in" / "model_0000009.pth"
    src.parent.mkdir()
    torch.manual_seed(0)
    model = {f"layer{i}.weight": torch.randn(256, 256) for i in range(8)}
    optimizer = {"state": {i: {"momentum_buffer": torch.randn(256, 256)} for i in range(8)}}
    torch.save({"model": model, "optimizer": optimizer, "iteration": 9}, src)
    return src


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command, name", ROUTES)
def test_output_has_a_record_that_verify_accepts(command, name, training_file, tmp_path, capsys):
    out = tmp_path / "out" / name
    out.parent.mkdir()
    code, _, err = _run(capsys, *command, training_file, out)
    assert code == 0, err
    assert sorted(os.listdir(out.parent)) == sorted([name, os.path.basename(record_path(name))])
    code, text, _ = _run(capsys, "verify", out, "--json")
    report = json.loads(text)
    assert code == 0 and report["ok"], report["problems"]
    assert any(c.startswith("integrity record matches") for c in report["checks"])
    # The record describes this file: change one byte and verify fails.
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    code, text, _ = _run(capsys, "verify", out, "--json")
    assert code == 1 and not json.loads(text)["ok"]


def _fail_after(monkeypatch, limit: int, error: BaseException) -> None:
    """Make every checkpoint write fail with ``error`` once ``limit`` bytes went through."""
    real = integrity.HashingWriter.write

    def write(self, data):
        if self.size >= limit:
            if isinstance(error, OSError):
                self.error = error  # as the real writer keeps the disk's error
            raise error
        return real(self, data)

    monkeypatch.setattr(integrity.HashingWriter, "write", write)


@pytest.mark.parametrize("command, name", ROUTES)
@pytest.mark.parametrize(
    "error, code",
    [(KeyboardInterrupt(), 130), (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 2)],
    ids=["interrupted", "disk-full"],
)
def test_a_write_failing_midway_leaves_nothing(
    command, name, error, code, training_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out" / name
    out.parent.mkdir()
    _fail_after(monkeypatch, 1 << 20, error)  # a MiB in: header and some tensors are written
    got, _, err = _run(capsys, *command, training_file, out)
    assert got == code
    if code == 2:  # one error line naming the file and the disk's reason
        assert err.startswith("error: ") and str(out) in err and os.strerror(errno.ENOSPC) in err
    assert os.listdir(out.parent) == []  # no temporary file, no output, no record


def test_overwriting_fails_midway_and_keeps_the_previous_output(
    training_file, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out.safetensors"
    assert _run(capsys, "convert", training_file, out)[0] == 0
    before = out.read_bytes(), open(record_path(str(out))).read()
    _fail_after(monkeypatch, 1 << 20, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert _run(capsys, "convert", "--force", training_file, out)[0] == 2
    assert (out.read_bytes(), open(record_path(str(out))).read()) == before
    assert not [n for n in os.listdir(tmp_path) if is_temp_file(n)]


# Runs convert in a child that stops for good once a MiB of the output is written.
_STOP_MIDWAY = """
import os, sys, time
from d2_efficient_ckpt.checkpoint.save import integrity
from d2_efficient_ckpt.cli import main

real, marker = integrity.HashingWriter.write, sys.argv[1]

def write(self, data):
    if self.size >= 1 << 20 and not os.path.exists(marker):
        self.flush()
        open(marker, "w").close()
        time.sleep(600)
    return real(self, data)

integrity.HashingWriter.write = write
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("command, name", ROUTES[:3])
def test_a_killed_convert_leaves_only_a_temporary_file(command, name, training_file, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out, marker = out_dir / name, tmp_path / "midway"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-c", _STOP_MIDWAY, str(marker), *command, str(training_file)]
    child = subprocess.Popen([*argv, str(out)], cwd=REPO, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "convert never got a MiB into its output"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    child.stderr.close()
    left = os.listdir(out_dir)
    assert left and all(is_temp_file(n) for n in left)  # no output, no record
    assert all(os.path.getsize(out_dir / n) > 0 for n in left)  # it was killed midway
    assert sorted(remove_stale_temp_files(str(out_dir), 0.0)) == sorted(left)
    assert os.listdir(out_dir) == []
