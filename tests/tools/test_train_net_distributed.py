"""tools/train_net.py on two CPU processes: ``--num-gpus 2 MODEL.DEVICE cpu`` trains over gloo,
resumes a checkpoint that one process saved (with a warning: the data order cannot be exact
on another number of processes), and a preemption signal to the launching process makes
both ranks checkpoint at the same step and exit with status 75."""

import os
import signal
import subprocess
import sys
import time

import torch

from d2_efficient_ckpt.config_utils import load_config
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.engine.save_hooks import PREEMPTED_EXIT_CODE
from tests.helpers.config import REPO, TRAIN_NET


def test_two_cpu_processes_resume_and_stop_on_a_signal(toy_config, tmp_path):  # noqa: F811
    out = str(tmp_path / "out")
    cfg = load_config(str(toy_config), ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "1"])
    prepare_datasets(cfg)
    Trainer(cfg).train()  # one iteration on one process: the checkpoint to resume
    argv = ["--num-gpus", "2", "--config-file", str(toy_config), "--resume"]
    opts = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", "1000"]
    opts += ["SOLVER.CHECKPOINT_PERIOD", "1", "CHECKPOINT.SAVE.ON_SIGNAL", "['SIGUSR1']"]
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, TRAIN_NET, *argv, *opts],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=REPO),
        )
        try:
            # A checkpoint of the resumed run: both ranks are in the loop, handlers installed.
            deadline = time.time() + 300
            while not os.path.exists(os.path.join(out, "model_0000001.pth")):
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGUSR1)  # to the launching process only
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert code == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "Training continues at iteration 1 of 1000" in text
    assert "saved by 1 process and this run has 2" in text
    assert "data order cannot be exact" in text
    tagged = open(os.path.join(out, "last_checkpoint")).read().strip()
    saved = torch.load(os.path.join(out, tagged), weights_only=True)
    assert saved["iteration"] >= 1
    sampling = saved["trainer"]["hooks"]["SamplingState"]
    # Both ranks stopped at the same step, and both states are in the checkpoint.
    assert sampling["world_size"] == 2 and all(r is not None for r in sampling["ranks"])
    positions = [r["loader"]["position"] for r in sampling["ranks"]]
    assert positions[0] == positions[1]
