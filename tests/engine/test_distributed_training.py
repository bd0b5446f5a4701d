"""The Trainer on two CPU processes over gloo (detectron2's launch): exact resume on a shared
directory, with 0 and 2 loader workers, and a resume on another number of processes.

One launch runs every multi-process part, since each start costs seconds."""

import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch
from detectron2.engine import launch

from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import tiny_frcnn_cfg, train_on_toy

N = 2


def _cfg(toy, out, workers):
    cfg = train_on_toy(tiny_frcnn_cfg(output_dir=str(out)), toy, prefix="toy_ddp")
    cfg.SOLVER.MAX_ITER = N
    cfg.SOLVER.CHECKPOINT_PERIOD = N // 2
    cfg.SOLVER.IMS_PER_BATCH = 4  # two images per process
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.STEPS = (N - 1,)
    cfg.DATALOADER.NUM_WORKERS = workers
    prepare_datasets(cfg)
    return cfg


def _run(cfg, *, resume=False, stop_at=None, seed=0):
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    if stop_at is not None:
        trainer.max_iter = stop_at
    trainer.train()
    return trainer


def _checksum(model):
    # Parameters only: BN running statistics are per rank (DDP without buffer broadcast).
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _worker(toy, root):
    import torch.distributed as dist
    from detectron2.utils import comm

    try:
        rank = comm.get_rank()
        straight = _run(_cfg(toy, os.path.join(root, "straight"), workers=0))
        # The stream does not depend on the number of loader workers, so the stopped run
        # and the resumed one may differ in it (and so both settings run on two processes).
        half = os.path.join(root, "half")
        _run(_cfg(toy, half, workers=2), stop_at=N // 2)
        # Every rank resumes from the shared directory; other seeds must not matter.
        resumed = _run(_cfg(toy, half, workers=0), resume=True, seed=1 + rank)
        a, b = straight.model.state_dict(), resumed.model.state_dict()
        # Rank 0's model is the one saved: all of it must match. BN running statistics are
        # per rank (DDP without buffer broadcast, as stock), so other ranks compare parameters.
        names = a if rank == 0 else dict(straight.model.named_parameters())
        result = {
            "start_iter": resumed.start_iter,
            "sampling": resumed.checkpointer.last_report.checkpointables["trainer.sampling"],
            "differ": [k for k in names if not torch.equal(a[k], b[k])],
            # DDP keeps the ranks' weights equal; the check would catch a broken sync.
            "same_on_ranks": len(set(comm.all_gather(_checksum(resumed.model)))) == 1,
        }
        with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    toy = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(str(toy), num_train=8, num_val=2, size=64, seed=1)
    root = tmp_path_factory.mktemp("ddp")
    mp = pytest.MonkeyPatch()
    mp.setenv("CUDA_VISIBLE_DEVICES", "")  # launch then uses gloo, even on a GPU machine
    try:
        launch(_worker, 2, dist_url="auto", args=(toy, str(root)))
    finally:
        mp.undo()
    return toy, root


def test_two_processes_resume_exactly(two_process_runs):
    _, root = two_process_runs
    for rank in (0, 1):
        r = json.loads((root / f"rank{rank}.json").read_text())
        assert r["start_iter"] == N // 2 and r["sampling"] == "restored"
        assert r["differ"] == [], f"rank {rank}: {len(r['differ'])} tensors differ"
        assert r["same_on_ranks"]
    half = root / "half"
    assert (half / "last_checkpoint").read_text() == "model_final.pth"
    saved = torch.load(half / "model_final.pth", weights_only=True)
    sampling = saved["trainer"]["hooks"]["SamplingState"]
    assert sampling["world_size"] == 2 and all(s is not None for s in sampling["ranks"])
    # Each rank's own stream: two images per step per rank.
    assert [s["loader"]["position"] for s in sampling["ranks"]] == [2 * N, 2 * N]
    # The ranks' random states were gathered, not rank 0's copied.
    assert not torch.equal(
        sampling["ranks"][0]["rng"]["torch"], sampling["ranks"][1]["rng"]["torch"]
    )


def test_other_world_size_resumes_with_a_warning(two_process_runs, tmp_path, caplog):
    toy, root = two_process_runs
    out = tmp_path / "one"
    shutil.copytree(root / "half", out)
    cfg = _cfg(toy, out, 0)
    cfg.SOLVER.MAX_ITER = N + 1
    with caplog.at_level(logging.WARNING, logger="d2_efficient_ckpt"):
        trainer = _run(cfg, resume=True)
    assert trainer.iter == N + 1
    warned = [r.getMessage() for r in caplog.records if "cannot be exact" in r.getMessage()]
    assert len(warned) == 1 and "saved by 2 processes" in warned[0]
    # The single process picks up the stream where the two had taken it together.
    assert trainer._trainer.data_loader.position == 2 * (2 * N) + 4
