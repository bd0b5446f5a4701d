"""Key selection rules and the split of detectron2's trainer entry into parts."""

import pytest

from d2_efficient_ckpt.checkpoint.keys.selection import KeySelector
from d2_efficient_ckpt.checkpoint.options import LoadOptions
from d2_efficient_ckpt.checkpoint.restore.parts import select_trainer_state

SAVED = {
    "iteration": 99,
    "hooks": {
        "LRScheduler": {"last_epoch": 99},
        "EMAHook": {"decay": 0.9},
        "SamplingState": {"ranks": [{"position": 198}]},
    },
    "_trainer": {"iteration": 99, "optimizer": {"state": {0: "m"}}, "grad_scaler": {"scale": 8.0}},
}
CURRENT = {
    "iteration": 0,
    "hooks": {"LRScheduler": {"last_epoch": -1}, "SamplingState": {"ranks": [{"position": 0}]}},
    "_trainer": {"iteration": 0, "optimizer": {"state": {}}, "grad_scaler": {"scale": 65536.0}},
}


def test_all_parts():
    merged, status = select_trainer_state(SAVED, CURRENT, ["trainer"])
    assert merged == SAVED
    assert set(status.values()) == {"restored"}
    assert set(status) == {"iteration", "optimizer", "scaler", "scheduler", "hooks", "sampling"}


@pytest.mark.parametrize(
    "wanted,restored",
    [
        (["iteration", "scheduler"], {"iteration", "scheduler"}),
        (["optimizer", "scaler"], {"optimizer", "scaler"}),
        (["hooks"], {"hooks"}),
        (["sampling"], {"sampling"}),
        ([], set()),
    ],
)
def test_parts_restored_others_kept(wanted, restored):
    merged, status = select_trainer_state(SAVED, CURRENT, wanted)
    assert {p for p, s in status.items() if s == "restored"} == restored
    assert {p for p, s in status.items() if s == "skipped"} == set(status) - restored
    assert merged["iteration"] == (99 if "iteration" in restored else 0)
    assert merged["_trainer"]["iteration"] == merged["iteration"]
    assert (
        merged["_trainer"]["optimizer"]
        == (SAVED if "optimizer" in restored else CURRENT)["_trainer"]["optimizer"]
    )
    assert merged["_trainer"]["grad_scaler"]["scale"] == (8.0 if "scaler" in restored else 65536.0)
    assert merged["hooks"]["LRScheduler"]["last_epoch"] == (99 if "scheduler" in restored else -1)
    assert ("EMAHook" in merged["hooks"]) == ("hooks" in restored)
    position = merged["hooks"]["SamplingState"]["ranks"][0]["position"]
    assert position == (198 if "sampling" in restored else 0)


def test_absent_parts():
    saved = {"iteration": 5, "_trainer": {"iteration": 5, "optimizer": {"state": {}}}}
    _, status = select_trainer_state(saved, CURRENT, ["trainer"])
    assert status["scaler"] == "absent" and status["scheduler"] == "absent"
    assert status["hooks"] == "absent" and status["iteration"] == "restored"
    assert status["sampling"] == "absent"


def test_key_selector_order_and_reasons():
    sel = KeySelector(include=["backbone.*"], exclude=["backbone.fpn_*"], rename=[("^a\\.", "b.")])
    assert sel.renamed("a.x") == ("b.x", ["^a\\."])
    assert sel.why_skipped("roi_heads.x") == "include"
    assert sel.why_skipped("backbone.fpn_lateral2.weight") == "exclude"
    assert sel.why_skipped("backbone.bottom_up.stem.conv1.weight") is None


def test_bad_rename_rules_are_explained():
    with pytest.raises(ValueError, match=r"\[regex, replacement\]"):
        LoadOptions().override(rename=[["only-one"]])
    with pytest.raises(ValueError, match="invalid"):
        LoadOptions().override(rename=[["(unclosed", "x"]])


def test_load_options_defaults_are_the_config_defaults():
    from detectron2.config import get_cfg

    from d2_efficient_ckpt import add_efficient_ckpt_config

    # A checkpointer built without a cfg must behave as one built from the default config.
    assert LoadOptions() == LoadOptions.from_cfg(add_efficient_ckpt_config(get_cfg()))
