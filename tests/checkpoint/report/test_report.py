"""Load reports: grouping by module prefix, table, JSON file, logging on the main process."""

import fnmatch
import json
import logging

import torch
from detectron2.utils import comm

from d2_efficient_ckpt import EfficientDetectionCheckpointer, build_checkpointer
from d2_efficient_ckpt.checkpoint.keys.grouping import coarsen_patterns, group_keys
from d2_efficient_ckpt.checkpoint.report.load_report import LoadReport

CKPT_LOGGER = "d2_efficient_ckpt.checkpoint.checkpointer"


def _stage_keys(blocks_missing_from=6):
    status = {f"backbone.fpn_{kind}{i}.weight": "loaded" for i in (2, 3) for kind in ("a", "b")}
    for stage, n in (("res2", 3), ("res3", 4), ("res4", 23), ("res5", 3)):
        for b in range(n):
            for leaf in ("conv1.weight", "conv1.norm.weight", "conv2.weight"):
                missing = stage == "res4" and b >= blocks_missing_from
                status[f"backbone.bottom_up.{stage}.{b}.{leaf}"] = (
                    "missing" if missing else "loaded"
                )
    status["roi_heads.box_predictor.cls_score.weight"] = "shape_mismatch"
    status["roi_heads.box_predictor.bbox_pred.weight"] = "shape_mismatch"
    status["roi_heads.box_head.fc1.weight"] = "loaded"
    return status


def test_removed_stage_is_one_group():
    groups = group_keys(_stage_keys())
    missing = [g for g in groups if g.status == "missing"]
    assert [(g.pattern, g.count) for g in missing] == [("backbone.bottom_up.res4.{6..22}.*", 51)]
    patterns = {g.pattern for g in groups}
    assert "backbone.fpn_*" in patterns
    assert "backbone.bottom_up.res4.{0..5}.*" in patterns
    assert "roi_heads.box_predictor.*" in patterns
    # Every key is in exactly one group.
    assert sorted(k for g in groups for k in g.keys) == sorted(_stage_keys())


def test_uniform_keys_collapse_to_star():
    groups = group_keys({"a.b": "loaded", "a.c.d": "loaded"})
    assert [(g.pattern, g.count) for g in groups] == [("*", 2)]
    assert group_keys({}) == []


def test_glob_groups_match_exactly_their_keys():
    status = _stage_keys()
    for g in group_keys(status, braces=False):
        matched = {k for k in status if fnmatch.fnmatchcase(k, g.pattern)}
        assert matched == set(g.keys), g.pattern
    bad = [g.pattern for g in group_keys(status, braces=False) if g.status == "missing"]
    assert len(bad) == 17
    assert coarsen_patterns(bad + ["roi_heads.box_predictor.*"]) == [
        "backbone.bottom_up.res4.*",
        "roi_heads.box_predictor.*",
    ]


def test_report_dict_and_table_from_a_real_load(saved, fresh, tmp_path, tiny_cfg):
    path, _, opt = saved
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5, "OUTPUT_DIR": str(tmp_path / "out")})
    model = fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ck = build_checkpointer(cfg, model, str(tmp_path / "unused"), optimizer=opt2)
    ck.load(path, exclude=["proposal_generator.*"])
    r = ck.last_report
    d = r.to_dict()
    json.dumps(d)  # serialisable
    assert d["summary"]["shape_mismatch"] == 4 and d["summary"]["skipped"] == 6
    assert {"status": "shape_mismatch", "pattern": "roi_heads.box_predictor.*", "count": 4} in d[
        "groups"
    ]
    assert d["explanations"][0]["kind"] == "num_classes"
    assert d["num_keys_model"] == len(model.state_dict())
    table = r.format_table()
    assert "roi_heads.box_predictor.*" in table and "(81, 64)" not in table
    assert "cls_score.weight (4, 64) -> (6, 64)" in table
    assert "skipped: EXCLUDE" in table and "proposal_generator.*" in table
    assert "Number of classes changed: 3 -> 5 classes" in table
    # The JSON report is named after the checkpoint, in OUTPUT_DIR, with checkpointables.
    written = json.loads((tmp_path / "out" / "load_report_model_0000009.json").read_text())
    assert written["checkpointables"] == {"optimizer": "restored"}
    assert written["shape_mismatch"][0][0].startswith("roi_heads.box_predictor")
    assert not (tmp_path / "unused").exists()


def test_table_logged_once_as_warning_and_quiet_under_ignore(saved, fresh, caplog, tmp_path):
    path, _, _ = saved
    model = fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    ck = EfficientDetectionCheckpointer(model, str(tmp_path))
    with caplog.at_level(logging.INFO, logger=CKPT_LOGGER):
        ck.load(path)
    reports = [r for r in caplog.records if "load report" in r.getMessage()]
    assert len(reports) == 1 and reports[0].levelno == logging.WARNING
    assert "Skip loading parameter" not in caplog.text  # fvcore's per-key warnings are gone
    assert (tmp_path / "load_report_model_0000009.json").exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=CKPT_LOGGER):
        ck.load(path, on_mismatch="ignore")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "load report" in caplog.text


def test_only_the_main_process_reports(saved, fresh, caplog, tmp_path, monkeypatch):
    path, _, _ = saved
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    ck = EfficientDetectionCheckpointer(fresh(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5}), str(tmp_path))
    with caplog.at_level(logging.INFO, logger=CKPT_LOGGER):
        ck.load(path)
    assert "load report" not in caplog.text
    assert not list(tmp_path.glob("load_report_*.json"))
    assert ck.last_report.shape_mismatch  # the report itself is there on every rank


def test_clean_load_has_no_explanations():
    r = LoadReport(path="/x/m.pth", format="torch-zip", loaded=["a.w", "a.b"], num_keys_model=2)
    assert "Loaded 2 of 2 model keys from m.pth" in r.format_table()
    assert r.to_dict()["groups"] == [{"status": "loaded", "pattern": "*", "count": 2}]
    assert not r.has_mismatch


def test_kin_statuses_share_groups_with_loaded_keys():
    status = {"a.conv.weight": "cast", "a.norm.count": "loaded", "b.weight": "cast"}
    groups = group_keys(status, kin={"cast": "loaded"})
    assert [(g.status, g.pattern, g.count) for g in groups] == [("cast", "*", 3)]
    # Without kin the integer counter splits the casts, as before.
    assert len(group_keys(status)) == 3
    # Two different kin statuses never share a group.
    status["b.weight"] = "tied"
    groups = group_keys(status, kin={"cast": "loaded", "tied": "loaded"})
    assert sorted((g.status, g.pattern) for g in groups) == [("cast", "a.*"), ("tied", "b.*")]
    # One cast among many loaded keys keeps a row of its own.
    status = {f"m.{i}.weight": "loaded" for i in range(5)}
    status["m.2.weight"] = "cast"
    groups = group_keys(status, kin={"cast": "loaded"})
    assert ("cast", "m.2.*", 1) in [(g.status, g.pattern, g.count) for g in groups]
    # A group of kin keys and loaded keys still matches exactly its keys.
    status = {"a.x.w": "cast", "a.x.n": "loaded", "a.y.w": "missing"}
    for g in group_keys(status, braces=False, kin={"cast": "loaded"}):
        assert sorted(fnmatch.filter(status, g.pattern)) == sorted(g.keys)


def test_fp16_file_into_fp32_model_is_one_cast_row(tiny_cfg, tmp_path):
    from detectron2.modeling import build_model

    model = build_model(tiny_cfg())
    state = model.state_dict()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model": half}, tmp_path / "half.pth")
    ck = EfficientDetectionCheckpointer(build_model(tiny_cfg()), str(tmp_path))
    ck.load(str(tmp_path / "half.pth"))
    r = ck.last_report
    floats = sum(v.is_floating_point() for v in state.values())
    assert len(r.dtype_changed) == floats < len(state)  # integer BatchNorm counters stay
    assert [(g.status, g.pattern, g.count) for g in r.groups()] == [("cast", "*", len(state))]
    rows = r.format_table().splitlines()[3:]
    assert len(rows) == 1, rows
    assert "loaded, dtype cast" in rows[0]
    assert f"torch.float16 -> torch.float32 ({floats} of {len(state)} keys)" in rows[0]
