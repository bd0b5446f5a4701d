"""Every tool's one rule: the package's own user errors are one ``error:`` line and exit 2;
any other exception is a bug, printed with its traceback, and exits 3."""

import os
import subprocess
import sys

import pytest
import torch

from d2_efficient_ckpt.cli import inspect_cmd, main
from d2_efficient_ckpt.config_utils import ConfigKeyError, load_config
from d2_efficient_ckpt.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    USER_ERRORS,
    exit_on_user_error,
)
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import REPO, tiny_frcnn_cfg


def _exit_code(fn, *args):
    with pytest.raises(SystemExit) as e:
        exit_on_user_error(fn, *args)
    return e.value.code


def test_missing_config_is_one_error_line(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert _exit_code(load_config, str(missing), []) == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Config file '{missing}' does not")


def test_config_errors_are_bad_input_and_keep_their_builtin_type(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(KeyError) as e:
        load_config(str(typo), [])
    assert isinstance(e.value, ConfigKeyError) and isinstance(e.value, USER_ERRORS)
    assert _exit_code(load_config, str(typo), []) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    # The message itself, not the quoted repr that str(KeyError) gives.
    assert err.startswith(f"error: In config file '{typo}'") and "SOLVER.BASE_LRR" in err
    assert _exit_code(load_config, None, ["MODEL.NOPE", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: In command-line opts:")
    assert "MODEL.NOPE" in lines[0]


def test_builtin_exception_is_a_bug_with_its_traceback(capsys):
    def broken():
        return {}["model"]  # a KeyError from the code, not from the input

    assert _exit_code(broken) == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "internal error: unexpected KeyError" in err.strip().splitlines()[-1]
    assert not any(line.startswith("error:") for line in err.splitlines())


def test_cli_reports_a_bug_with_traceback_and_exit_3(capsys, tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    torch.save({"model": {"w": torch.zeros(3)}}, path)

    def reader_with_a_bug(*args, **kwargs):
        raise KeyError("storages")

    monkeypatch.setattr(inspect_cmd, "open_checkpoint", reader_with_a_bug)
    assert main(["inspect", str(path)]) == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "reader_with_a_bug" in err
    assert "internal error: unexpected KeyError" in err


def test_cli_bad_input_is_still_one_line(capsys, tmp_path):
    assert main(["inspect", str(tmp_path / "missing.pth")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {tmp_path / 'missing.pth'}: no such file."]


def test_train_net_worker_bad_input_is_an_error_line_and_exit_2(tmp_path):
    """With spawned workers (2 processes over gloo on the CPU) bad input found inside a
    worker is still one kind of error line and exit 2, not the launcher's traceback."""
    generate_toy_dataset(str(tmp_path / "toy"), num_train=4, num_val=2, size=64, seed=3)
    cfg = tiny_frcnn_cfg(output_dir=str(tmp_path / "out"))
    for split in ("train", "val"):
        node = cfg.DATASETS.CUSTOM[f"toy_{split}"]
        node.ANN_FILE = str(tmp_path / "toy" / "annotations" / f"{split}.json")
        node.IMAGE_ROOT = str(tmp_path / "toy" / "images" / split)
    cfg.MODEL.WEIGHTS = str(tmp_path / "missing.pth")  # found missing only by the workers
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.dump())
    # No GPU for the workers, so that they use gloo on any host.
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--num-gpus", "2"]
        + ["--eval-only", "--config-file", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == EXIT_BAD_INPUT, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("missing.pth" in line for line in errors)
