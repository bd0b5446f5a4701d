"""tools/train_net.py on two CPU processes: ``--num-gpus 2 MODEL.DEVICE cpu`` trains over gloo
and resumes a checkpoint that one process saved (with a warning: the data order cannot be
exact on another number of processes)."""

import os

from d2_efficient_ckpt.config_utils import load_config
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from tests.tools.test_train_net import _run, toy_config  # noqa: F401 (a fixture)


def test_two_cpu_processes_resume_a_one_process_checkpoint(toy_config, tmp_path):  # noqa: F811
    out = str(tmp_path / "out")
    cfg = load_config(str(toy_config), ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", "1"])
    prepare_datasets(cfg)
    Trainer(cfg).train()  # one iteration on one process: the checkpoint to resume
    r = _run(
        "--num-gpus",
        "2",
        "--config-file",
        str(toy_config),
        "--resume",
        "MODEL.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        out,
        "SOLVER.MAX_ITER",
        "2",
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "Training continues at iteration 1 of 2" in log
    assert "saved by 1 process and this run has 2" in log
    assert "data order cannot be exact" in log
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_final.pth"
    # Only the main process writes: one final checkpoint, one record, no stray files.
    leftovers = [n for n in os.listdir(out) if n.startswith(".") or n.endswith(".tmp")]
    assert not leftovers
