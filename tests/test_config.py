"""Config keys, their defaults, and that detectron2's global defaults stay stock."""

from detectron2.config import get_cfg

from d2_efficient_ckpt import add_efficient_ckpt_config


def test_defaults():
    cfg = add_efficient_ckpt_config(get_cfg())
    assert cfg.CHECKPOINT.NAME == "EfficientDetectionCheckpointer"
    ld = cfg.CHECKPOINT.LOAD
    assert ld.INCLUDE == [] and ld.EXCLUDE == [] and ld.RENAME == []
    assert ld.CHECKPOINTABLES == ["optimizer", "scheduler", "iteration", "hooks", "scaler"]
    assert ld.MMAP is True and ld.WEIGHTS_ONLY is True and ld.MAP_LOCATION == ""
    assert ld.SELECT_ON_RESUME is False
    assert ld.ON_MISMATCH == "warn" and ld.ALLOW_MISMATCH == []
    assert len(cfg.DATASETS.CUSTOM) == 0
    assert cfg.DATASETS.VALIDATE is True and cfg.DATASETS.NUM_CLASSES_FROM_DATA is False


def test_global_default_config_untouched():
    add_efficient_ckpt_config(get_cfg())
    fresh = get_cfg()
    assert "CHECKPOINT" not in fresh
    assert "CUSTOM" not in fresh.DATASETS


def test_idempotent_and_keeps_values():
    cfg = add_efficient_ckpt_config(get_cfg())
    cfg.CHECKPOINT.LOAD.EXCLUDE = ["roi_heads.*"]
    add_efficient_ckpt_config(cfg)
    assert cfg.CHECKPOINT.LOAD.EXCLUDE == ["roi_heads.*"]


def test_yaml_and_opts_override(tmp_path):
    cfg = add_efficient_ckpt_config(get_cfg())
    f = tmp_path / "c.yaml"
    f.write_text(
        "CHECKPOINT:\n  LOAD:\n    EXCLUDE: ['roi_heads.box_predictor.*']\n"
        "    RENAME: [['^stem\\.', 'backbone.bottom_up.stem.']]\n"
    )
    cfg.merge_from_file(str(f))
    cfg.merge_from_list(["CHECKPOINT.LOAD.MMAP", "False", "CHECKPOINT.LOAD.MAP_LOCATION", "cpu"])
    assert cfg.CHECKPOINT.LOAD.EXCLUDE == ["roi_heads.box_predictor.*"]
    assert cfg.CHECKPOINT.LOAD.RENAME == [["^stem\\.", "backbone.bottom_up.stem."]]
    assert cfg.CHECKPOINT.LOAD.MMAP is False
    assert cfg.CHECKPOINT.LOAD.MAP_LOCATION == "cpu"
