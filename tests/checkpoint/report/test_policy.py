"""CHECKPOINT.LOAD.ON_MISMATCH and ALLOW_MISMATCH: warn, error, ignore."""

import logging

import pytest
from detectron2.utils import comm

from d2_efficient_ckpt import EfficientDetectionCheckpointer, build_checkpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointError, CheckpointPolicyError
from d2_efficient_ckpt.checkpoint.report.load_report import LoadReport
from d2_efficient_ckpt.checkpoint.report.policy import check_policy, enforce_policy
from tests.helpers.config import train_on_toy

PREDICTOR = "roi_heads.box_predictor.*"
CKPT_LOGGER = "d2_efficient_ckpt.checkpoint.checkpointer"


def test_error_names_keys_and_how_to_allow_them(saved, fresh):
    path, _, _ = saved
    ck = EfficientDetectionCheckpointer(fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5}))
    with pytest.raises(CheckpointPolicyError) as e:
        ck.load(path, on_mismatch="error")
    msg = str(e.value)
    assert isinstance(e.value, CheckpointError)
    assert "4 key(s) are not allowed" in msg and f"shape mismatch: {PREDICTOR} (4 key(s))" in msg
    assert f'CHECKPOINT.LOAD.ALLOW_MISMATCH ["{PREDICTOR}"]' in msg
    assert "CHECKPOINT.LOAD.ON_MISMATCH warn" in msg
    assert "Number of classes changed: 3 -> 5 classes" in msg
    assert e.value.suggested_allow == [PREDICTOR] and len(e.value.violations) == 4
    assert ck.last_report.policy["broken"]


def test_allowed_keys_pass_under_error(saved, fresh):
    path, model, _ = saved
    ours = fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    ck = EfficientDetectionCheckpointer(ours)
    ck.load(path, on_mismatch="error", allow_mismatch=[PREDICTOR])
    assert len(ck.last_report.policy["tolerated"]) == 4 and not ck.last_report.policy["violations"]
    # Allowing only part of the mismatch still fails, naming the rest.
    with pytest.raises(CheckpointPolicyError) as e:
        ck.load(path, on_mismatch="error", allow_mismatch=["*.cls_score.*"])
    assert [k for _, k in e.value.violations] == [
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    ]


def test_skipped_and_cast_keys_are_not_mismatches():
    report = LoadReport(
        loaded=["a.w"],
        skipped={"b.w": "exclude", "c.w": "include"},
        dtype_changed=[("a.w", "torch.float16", "torch.float32")],
    )
    assert not enforce_policy(report, "error").violations
    report.missing, report.unexpected = ["d.w"], ["e.w"]
    outcome = check_policy(report, "ERROR", ["d.*"])
    assert outcome.broken and outcome.violations == [("unexpected", "e.w")]
    assert outcome.tolerated == [("missing", "d.w")]
    with pytest.raises(ValueError, match="ON_MISMATCH must be one of"):
        check_policy(report, "strict")


def test_config_drives_the_policy(saved, fresh, tiny_cfg, tmp_path):
    path, _, _ = saved
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5, "OUTPUT_DIR": str(tmp_path)})
    cfg.CHECKPOINT.LOAD.ON_MISMATCH = "error"
    model = fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    with pytest.raises(CheckpointPolicyError):
        build_checkpointer(cfg, model).load(path)
    # The report is written before the error, for the user to read.
    assert (tmp_path / "load_report_model_0000009.json").exists()
    cfg.CHECKPOINT.LOAD.ALLOW_MISMATCH = [PREDICTOR]
    ck = build_checkpointer(cfg, model)
    ck.load(path)  # the allowed keys pass; every other key was loaded
    policy = ck.last_report.policy
    assert not policy["broken"] and not policy["violations"]
    assert sorted(k for _, k in policy["tolerated"]) == sorted(
        k for k in model.state_dict() if k.startswith("roi_heads.box_predictor.")
    )
    assert len(ck.last_report.loaded) == len(model.state_dict()) - 4
    cfg.CHECKPOINT.LOAD.ON_MISMATCH = "sometimes"
    with pytest.raises(ValueError, match="ON_MISMATCH"):
        build_checkpointer(cfg, model)


def test_warn_and_ignore_do_not_raise(saved, fresh, caplog):
    path, _, _ = saved
    ck = EfficientDetectionCheckpointer(fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5}))

    def warnings_of_the_checkpointer():
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == CKPT_LOGGER and r.levelno == logging.WARNING
        ]

    with caplog.at_level(logging.INFO, logger=CKPT_LOGGER):
        ck.load(path)
        (warned,) = warnings_of_the_checkpointer()
        assert "load report" in warned and "shape mismatch" in warned
        assert "roi_heads.box_predictor" in warned and "3 -> 5 classes" in warned
        assert len(ck.last_report.policy["violations"]) == 4  # reported, not raised
        assert not ck.last_report.policy["broken"]
        caplog.clear()
        ck.load(path, on_mismatch="ignore")
        assert not warnings_of_the_checkpointer()
        assert not any(r.levelno >= logging.WARNING for r in caplog.records)


def test_every_rank_stops(saved, fresh, monkeypatch):
    path, _, _ = saved
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    ck = EfficientDetectionCheckpointer(fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5}))
    with pytest.raises(CheckpointPolicyError):
        ck.load(path, on_mismatch="error")


def test_trainer_stops_before_the_first_iteration(saved, tiny_cfg, tmp_path):
    from d2_efficient_ckpt.data import prepare_datasets
    from d2_efficient_ckpt.engine import Trainer
    from d2_efficient_ckpt.toy import generate_toy_dataset

    path, _, _ = saved
    toy = tmp_path / "toy"
    generate_toy_dataset(str(toy), num_train=2, num_val=1, size=64, seed=0)
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5, "OUTPUT_DIR": str(tmp_path / "out")})
    train_on_toy(cfg, toy, prefix="policy")
    cfg.DATASETS.NUM_CLASSES_FROM_DATA = True  # the toy data has 3 classes, the checkpoint 3
    cfg.MODEL.WEIGHTS = path
    cfg.CHECKPOINT.LOAD.ON_MISMATCH = "error"
    prepare_datasets(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5  # a wrong value: the load must stop the run
    trainer = Trainer(cfg)
    steps = []
    trainer.run_step = lambda: steps.append(1)
    with pytest.raises(CheckpointPolicyError, match="ALLOW_MISMATCH"):
        trainer.resume_or_load(resume=False)
        trainer.train()
    assert steps == [] and trainer.iter == 0
