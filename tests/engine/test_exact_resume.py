"""Exact resume on one process: the loader's position, the random states, and the trainer.

Training N iterations straight, or N/2, a checkpoint, a new Trainer with ``--resume`` and
N/2 more, must end with bit-identical weights.
"""

import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler

from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.engine.loader import ResumableTrainLoader, make_resumable
from d2_efficient_ckpt.engine.rng import capture_rng_state, restore_rng_state
from d2_efficient_ckpt.engine.sampling import resume_position
from d2_efficient_ckpt.toy import generate_toy_dataset
from tests.helpers.config import train_on_toy

N = 4


# ---------------------------------------------------------------- loader and random states
def _records(n=23):
    # Landscape and portrait records, so that aspect-ratio grouping holds samples back.
    rng = random.Random(3)
    return [{"idx": i, "width": rng.choice([40, 60]), "height": 50} for i in range(n)]


def _mapper(record):
    if record["idx"] == 5:  # a record the mapper rejects: another one is drawn instead
        return None
    # Augmentation-like draws from all three generators.
    aug = (float(np.random.rand()), float(torch.rand(())), random.random())
    return dict(record, aug=aug)


def _loader(workers, sampler_seed, base_seed, grouping=True):
    sampler = TrainingSampler(len(_records()), seed=sampler_seed)
    return ResumableTrainLoader(
        _records(),
        _mapper,
        sampler,
        3,
        num_workers=workers,
        aspect_ratio_grouping=grouping,
        seed=base_seed,
    )


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_continues_mid_stream(workers):
    straight = _take(_loader(workers, 7, 11), 9)
    first = _loader(workers, 7, 11)
    head = _take(first, 4)
    state = first.state_dict()
    assert head == straight[:4]
    assert any(state["waiting"]), "no sample held back: the test lost its point"
    # Another run: other seeds until the state is loaded, and another number of workers.
    second = _loader(2 - workers, 8, 12)
    second.load_state_dict(state)
    assert _take(second, 5) == straight[4:]


def test_augmentation_does_not_depend_on_workers_or_training_draws():
    a = _take(_loader(0, 7, 11, grouping=False), 4)
    torch.manual_seed(123)  # draws of the training loop do not reach the samples
    b = _take(_loader(2, 7, 11, grouping=False), 4)
    assert a == b
    assert len({s["aug"] for batch in a for s in batch}) == 12


@pytest.mark.parametrize("grouping", [True, False])
def test_detectron2_loader_keeps_its_order(grouping):
    records = [dict(r, width=60) for r in _records() if r["idx"] != 5]
    stock = build_detection_train_loader(
        records,
        mapper=lambda r: dict(r),
        sampler=TrainingSampler(len(records), seed=4),
        total_batch_size=2,
        aspect_ratio_grouping=grouping,
        num_workers=0,
    )
    ours = make_resumable(stock)
    assert ours is not None and ours.aspect_ratio_grouping is grouping
    assert [[s["idx"] for s in b] for b in _take(ours, 5)] == [
        [s["idx"] for s in b] for b in _take(stock, 5)
    ]


def test_unknown_loader_is_not_wrapped():
    assert make_resumable([[{"image": 0}]]) is None


def test_random_states_round_trip_through_a_checkpoint(tmp_path):
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.save({"rng": state}, tmp_path / "s.pth")
    loaded = torch.load(tmp_path / "s.pth", weights_only=True)["rng"]
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng_state(loaded)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_random_state_restored_from_a_view_into_a_larger_buffer():
    # The loader restores trainer state into one host buffer, so the saved state arrives as
    # a view with a storage offset (which torch's set_rng_state alone cannot take).
    state = capture_rng_state()
    expected = torch.rand(3)
    buf = torch.zeros(state["torch"].numel() + 64, dtype=torch.uint8)
    view = buf[64:]
    view.copy_(state["torch"])
    restore_rng_state(dict(state, torch=view))
    assert torch.equal(torch.rand(3), expected)


def test_sampling_state_is_stored_without_pickle_and_named_as_its_part():
    import json

    from d2_efficient_ckpt.checkpoint.formats.training_safetensors import decode, encode
    from d2_efficient_ckpt.checkpoint.restore.parts import TRAINER_PARTS
    from d2_efficient_ckpt.engine.sampling import SamplingState

    # The checkpoint's part for this hook is found by the hook's class name.
    assert TRAINER_PARTS["sampling"] == (("hooks", SamplingState.__qualname__),)
    loader = _loader(0, 7, 11)
    _take(loader, 2)
    state = {"format": 1, "world_size": 2, "ranks": [None, {"rng": capture_rng_state()}]}
    state["ranks"][1]["loader"] = loader.state_dict()
    tensors, skeleton = encode(state)  # the pickle-free format's encoder accepts it whole
    back = decode(json.loads(json.dumps(skeleton)), tensors.__getitem__)
    assert back["ranks"][0] is None and back["ranks"][1]["loader"] == loader.state_dict()
    expected = torch.rand(2)
    restore_rng_state(back["ranks"][1]["rng"])
    assert torch.equal(torch.rand(2), expected)


def test_resume_position_after_a_change_of_world_size():
    saved = [{"position": 10}, {"position": 9}]
    assert resume_position(saved, 2) == 9  # the slower rank decides: nothing is skipped
    assert resume_position(saved, 3) == 6
    assert resume_position(saved, 1) == 18
    assert resume_position([None, {"position": 4}], 4) == 2
    assert resume_position([None], 1) == 0


# ---------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(str(root), num_train=8, num_val=2, size=64, seed=1)
    return root


def _cfg(tiny_cfg, toy, out, workers, **overrides):
    cfg = train_on_toy(tiny_cfg(**overrides), toy, prefix="toy_exact")
    cfg.SOLVER.MAX_ITER = N
    cfg.SOLVER.CHECKPOINT_PERIOD = N // 2
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.STEPS = (N - 1,)
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.OUTPUT_DIR = str(out)
    prepare_datasets(cfg)
    return cfg


def _run(cfg, *, resume=False, stop_at=None, seed=0):
    # The first runs start alike (same initial weights); the resumed run is seeded
    # differently: whatever it draws while it is built must not matter.
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    if stop_at is not None:  # as if the job were stopped after this many iterations
        trainer.max_iter = stop_at
    trainer.train()
    return trainer


def _assert_same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def straight(tiny_cfg_module, toy, tmp_path_factory):
    # One reference for both loader settings: the stream does not depend on the workers.
    return _run(_cfg(tiny_cfg_module, toy, tmp_path_factory.mktemp("straight"), 0))


@pytest.fixture(scope="module")
def stopped(tiny_cfg_module, toy, tmp_path_factory):
    """``stopped(workers)``: the output folder of a run stopped after N/2 iterations."""
    made = {}

    def get(workers):
        if workers not in made:
            out = tmp_path_factory.mktemp(f"stopped{workers}")
            _run(_cfg(tiny_cfg_module, toy, out, workers), stop_at=N // 2)
            made[workers] = out
        return made[workers]

    return get


@pytest.fixture(scope="module")
def tiny_cfg_module():
    from tests.helpers.config import tiny_frcnn_cfg

    return tiny_frcnn_cfg


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_training_is_bit_identical(workers, straight, stopped, tiny_cfg, toy, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped(workers), out)
    resumed = _run(_cfg(tiny_cfg, toy, out, workers), resume=True, seed=2)
    assert resumed.start_iter == N // 2
    assert resumed.checkpointer.last_report.checkpointables["trainer.sampling"] == "restored"
    _assert_same_weights(straight, resumed)


def test_checkpoint_without_sampling_state_resumes_with_a_note(
    stopped, tiny_cfg, toy, tmp_path, caplog
):
    workers, half_dir = 0, stopped(0)
    out = tmp_path / "old"
    os.makedirs(out)
    # A checkpoint as written before the sampling state existed (and without a record).
    data = torch.load(half_dir / "model_final.pth", weights_only=True)
    del data["trainer"]["hooks"]["SamplingState"]
    torch.save(data, out / "model_final.pth")
    (out / "last_checkpoint").write_text("model_final.pth")
    with caplog.at_level(logging.INFO, logger="d2_efficient_ckpt"):
        trainer = Trainer(_cfg(tiny_cfg, toy, out, workers))
        trainer.resume_or_load(resume=True)
    assert trainer.start_iter == N // 2
    assert trainer.checkpointer.last_report.checkpointables["trainer.sampling"] == "absent"
    notes = [r.getMessage() for r in caplog.records if "no sampling state" in r.getMessage()]
    assert len(notes) == 1
    trainer.train()
    assert trainer.iter == N


def test_sampling_left_out_resumes_inexactly(straight, stopped, tiny_cfg, toy, tmp_path):
    workers = 0
    out = tmp_path / "run"
    shutil.copytree(stopped(workers), out)
    parts = ["optimizer", "scheduler", "iteration", "hooks", "scaler"]
    cfg = _cfg(tiny_cfg, toy, out, workers, **{"CHECKPOINT.LOAD.CHECKPOINTABLES": parts})
    resumed = _run(cfg, resume=True, seed=2)
    assert resumed.checkpointer.last_report.checkpointables["trainer.sampling"] == "skipped"
    with pytest.raises(AssertionError, match="tensors differ"):
        _assert_same_weights(straight, resumed)
