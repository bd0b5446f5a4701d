"""SIGKILL in the middle of saves: a resume always works, and no broken file has a good name.

A few trials run in the normal test run; ``-m slow`` runs 24.
"""

import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from d2_efficient_ckpt import build_checkpointer
from d2_efficient_ckpt.checkpoint.formats.registry import is_checkpoint_name
from d2_efficient_ckpt.checkpoint.formats.safetensors import SafetensorsStateDict
from d2_efficient_ckpt.checkpoint.save import check_full, read_record
from d2_efficient_ckpt.checkpoint.storage.atomic import is_temp_file
from tests.helpers.config import REPO


def _start(out, asynchronous, fmt):
    args = [sys.executable, "-m", "tests.checkpoint.save.worker", "loop", str(out), fmt]
    return subprocess.Popen(
        args + (["async"] if asynchronous else []),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _kill_during_a_save(out, rng, asynchronous, fmt="pth"):
    """Start the worker, and SIGKILL it at a random moment of one of its first saves."""
    proc = _start(out, asynchronous, fmt)
    # An asynchronous save is joined only by the next one: start killing from the third.
    target = rng.randint(2, 4) if asynchronous else rng.randint(1, 3)
    try:
        for line in proc.stdout:
            if line.strip() == f"saving {target}":
                break
        # A save of this model takes a few hundred ms; land anywhere in it.
        time.sleep(rng.uniform(0.0, 0.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return target


def _check_directory(out, model_factory, fmt="pth"):
    suffix = f".{fmt}"
    names = os.listdir(out)
    for name in names:
        if not is_checkpoint_name(name):
            continue
        path = os.path.join(out, name)
        if read_record(path) is not None:
            check_full(path)  # raises if a file under a checkpoint name is broken
        elif name.endswith(".safetensors"):  # killed before its record: header and sizes
            SafetensorsStateDict(path)  # raises if any tensor ends past the file
        else:  # killed between the rename and its record: the zip must be complete
            with zipfile.ZipFile(path) as zf:
                assert zf.testzip() is None, name
    complete = sorted(n for n in names if n.endswith(suffix) and not is_temp_file(n))
    assert complete, f"not even the first checkpoint is complete: {names}"
    model = model_factory(fmt)
    ck = build_checkpointer(model.cfg, model.model, str(out))
    # Restart in the same directory: the killed writer's temporary file goes away.
    extra = ck.resume_or_load("", resume=True)
    assert not [n for n in os.listdir(out) if is_temp_file(n)]
    # The resume takes the newest finished save, the one last_checkpoint names; at most the
    # save the kill interrupted is lost.
    tagged = (out / "last_checkpoint").read_text()
    iterations = sorted(int(n[len("model_") : -len(suffix)]) for n in complete)
    assert int(tagged[len("model_") : -len(suffix)]) in iterations[-2:]
    assert ck.last_report.path.endswith(tagged)
    assert extra["iteration"] == int(tagged[len("model_") : -len(suffix)])


class _Built:
    def __init__(self, cfg, model):
        self.cfg, self.model = cfg, model


@pytest.fixture
def model_factory(tiny_cfg):
    from detectron2.modeling import build_model

    def make(fmt="pth"):
        cfg = tiny_cfg(**{"CHECKPOINT.SAVE.FORMAT": fmt})
        return _Built(cfg, build_model(cfg))

    return make


def _trials(tmp_path, model_factory, n, seed, formats=("pth",)):
    rng = random.Random(seed)
    for trial in range(n):
        out = tmp_path / f"trial{trial}"
        out.mkdir()
        fmt = formats[trial % len(formats)]
        # Sync and async alternate, and so do formats: every pairing comes up.
        _kill_during_a_save(out, rng, asynchronous=(trial // len(formats)) % 2 == 1, fmt=fmt)
        _check_directory(out, model_factory, fmt)


def test_sigkill_during_saves_few_trials(tmp_path, model_factory):
    _trials(tmp_path, model_factory, n=2, seed=0)


def test_sigkill_during_pickle_free_saves(tmp_path, model_factory):
    _trials(tmp_path, model_factory, n=1, seed=2, formats=("safetensors",))


@pytest.mark.slow
def test_sigkill_during_saves_many_trials(tmp_path, model_factory):
    _trials(tmp_path, model_factory, n=24, seed=1, formats=("pth", "safetensors"))
