"""merge_cfg_safely: yacs merge errors rewritten to name the file or option and the fix."""

import pytest

from d2_efficient_ckpt.config_utils import merge_cfg_safely


def test_bare_string_train_in_yaml(cfg, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("DATASETS:\n  TRAIN: toy_train\n")
    with pytest.raises(ValueError) as e:
        merge_cfg_safely(cfg, str(path), [])
    msg = str(e.value)
    assert "DATASETS.TRAIN must be a tuple of dataset names" in msg
    assert str(path) in msg and "'toy_train'" in msg
    assert 'TRAIN: ("toy_train",)' in msg


def test_bare_string_test_in_opts(cfg):
    with pytest.raises(ValueError) as e:
        merge_cfg_safely(cfg, None, ["DATASETS.TEST", "toy_val"])
    msg = str(e.value)
    assert "DATASETS.TEST must be a tuple" in msg and "command-line opts" in msg
    assert "DATASETS.TEST \"('toy_val',)\"" in msg


def test_tuples_merge(cfg, tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text('DATASETS:\n  TRAIN: ("a",)\n  TEST: [b, c]\n')
    merge_cfg_safely(cfg, str(path), ["DATASETS.TRAIN", "('x', 'y')"])
    assert cfg.DATASETS.TRAIN == ("x", "y") and cfg.DATASETS.TEST == ("b", "c")


def test_missing_config_file(cfg, tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=f"Config file '{missing}' does not exist"):
        merge_cfg_safely(cfg, str(missing), None)


def test_other_errors_name_the_source(cfg, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(KeyError, match=f"In config file '{path}'.*SOLVER.BASE_LRR"):
        merge_cfg_safely(cfg, str(path), None)
    path.write_text("SOLVER:\n  BASE_LR: [0.1\n")
    with pytest.raises(ValueError, match=f"In config file '{path}'"):
        merge_cfg_safely(cfg, str(path), None)
    with pytest.raises(ValueError, match="In command-line opts: SOLVER.MAX_ITER must be of type"):
        merge_cfg_safely(cfg, None, ["SOLVER.MAX_ITER", "many"])
