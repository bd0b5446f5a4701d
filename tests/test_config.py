"""Config keys, their defaults, and that detectron2's global defaults stay stock."""

import pytest
from detectron2.config import get_cfg

from d2_efficient_ckpt import add_efficient_ckpt_config
from d2_efficient_ckpt.config_utils import closest_keys, load_config


def test_defaults():
    cfg = add_efficient_ckpt_config(get_cfg())
    assert cfg.CHECKPOINT.NAME == "EfficientDetectionCheckpointer"
    ld = cfg.CHECKPOINT.LOAD
    assert ld.INCLUDE == [] and ld.EXCLUDE == [] and ld.RENAME == []
    parts = ["optimizer", "scheduler", "iteration", "hooks", "scaler", "sampling"]
    assert ld.CHECKPOINTABLES == parts
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


@pytest.mark.parametrize(
    "opts,yaml,suggested",
    [
        (["SOLVER.MAX_ITR", "5"], None, "SOLVER.MAX_ITER"),
        (["MODEL.ROI_HEADS.NUM_CLASS", "3"], None, "MODEL.ROI_HEADS.NUM_CLASSES"),
        (["CHECKPOINT.LOAD.EXLUDE", "['a.*']"], None, "CHECKPOINT.LOAD.EXCLUDE"),
        (None, "SOLVER:\n  MAX_ITR: 5\n", "SOLVER.MAX_ITER"),
        (None, "SOLVR:\n  MAX_ITER: 5\n", "SOLVER?"),
        (["MODEL.NUM_CLASSES", "3"], None, "MODEL.ROI_HEADS.NUM_CLASSES"),
    ],
)
def test_unknown_key_names_it_and_the_closest_real_keys(tmp_path, opts, yaml, suggested):
    path = None
    if yaml is not None:
        path = tmp_path / "typo.yaml"
        path.write_text(yaml)
    with pytest.raises(KeyError) as e:
        load_config(str(path) if path else None, opts)
    msg = e.value.args[0]
    typo = opts[0] if opts else "SOLVER.MAX_ITR" if "MAX_ITR" in yaml else "SOLVR"
    source = "command-line opts" if opts else str(path)
    assert typo in msg and source in msg
    assert f"Did you mean {suggested}" in msg, msg
    assert "\n" not in msg


def test_closest_keys_without_a_close_one():
    cfg = add_efficient_ckpt_config(get_cfg())
    assert closest_keys(cfg, "SOLVER.MAX_ITR") == ["SOLVER.MAX_ITER"]
    assert closest_keys(cfg, "solver.base_lr")[0] == "SOLVER.BASE_LR"
    assert closest_keys(cfg, "ZZZZ.QQQQQQ") == []


def test_odd_length_opts_is_a_value_error():
    with pytest.raises(ValueError, match="command-line opts"):
        load_config(None, ["SOLVER.MAX_ITER"])
