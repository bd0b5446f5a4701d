"""A checkpoint that only the main process can read (output folders that are not shared),
on two CPU processes over gloo: by default one error naming the ranks and the path; with
``CHECKPOINT.LOAD.BROADCAST_FROM_MAIN`` every rank ends with the checkpoint's weights,
optimizer state and iteration."""

import os

import pytest
import torch
from detectron2.engine import launch

from d2_efficient_ckpt.checkpoint.resume.broadcast import _buckets
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import tiny_frcnn_cfg, train_on_toy


def _cfg(toy, out, **overrides):
    cfg = train_on_toy(tiny_frcnn_cfg(output_dir=str(out), **overrides), toy, prefix="toy_bc")
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.STEPS = (3,)
    prepare_datasets(cfg)
    return cfg


def _worker(toy, saved_dir, root):
    import torch.distributed as dist
    from detectron2.utils import comm

    try:
        rank = comm.get_rank()
        # Rank 1's output folder is its own and empty: the checkpoint is not there.
        out = saved_dir if rank == 0 else os.path.join(root, "rank1_out")
        os.makedirs(out, exist_ok=True)
        try:
            Trainer(_cfg(toy, out)).resume_or_load(resume=True)
            error = ""
        except Exception as e:  # noqa: BLE001 (recorded for the test)
            error = f"{type(e).__name__}: {e}"
        trainer = Trainer(_cfg(toy, out, **{"CHECKPOINT.LOAD.BROADCAST_FROM_MAIN": True}))
        trainer.resume_or_load(resume=True)
        torch.save(
            {
                "error": error,
                "model": trainer.model.module.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "iter": trainer.iter,
                "start_iter": trainer.start_iter,
                "last_epoch": trainer.scheduler.last_epoch,
            },
            os.path.join(root, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_buckets_are_bounded_and_of_one_dtype():
    ts = [torch.zeros(10), torch.zeros(10), torch.zeros(30), torch.zeros(5, dtype=torch.int64)]
    assert _buckets(ts, limit=80) == [[0, 1], [2], [3]]


def test_only_the_main_process_reads_the_checkpoint(tmp_path):
    toy = tmp_path / "toy"
    generate_toy_dataset(str(toy), num_train=8, num_val=2, size=64, seed=1)
    saved = tmp_path / "saved"
    cfg = _cfg(toy, saved)
    cfg.SOLVER.MAX_ITER = 2
    Trainer(cfg).train()  # model_final.pth after 2 iterations, with momentum
    checkpoint = torch.load(saved / "model_final.pth", weights_only=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo, even on a GPU machine
    try:
        launch(_worker, 2, dist_url="auto", args=(toy, str(saved), str(tmp_path)))
    finally:
        mp.undo()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r in ranks:
        assert "ranks [1] cannot read the file" in r["error"]
        assert "model_final.pth" in r["error"] and "BROADCAST_FROM_MAIN" in r["error"]
        for k, v in checkpoint["model"].items():
            assert torch.equal(r["model"][k], v), k
        assert r["iter"] == 1 and r["start_iter"] == 2 and r["last_epoch"] == 2
    saved_state = checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    for r in ranks:
        state = r["optimizer"]["state"]
        assert len(state) == len(saved_state) > 0
        for i, s in saved_state.items():
            assert torch.equal(state[i]["momentum_buffer"], s["momentum_buffer"]), i
