"""tools/check_dataset.py: report, exit status 0/1/2, --json and --draw, with no model."""

import importlib.util
import json
import pathlib

import pytest

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "check_dataset.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("check_dataset", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def config(cfg, toy_copy, dataset_name, tmp_path):
    """``config(**entry_changes)``: a yaml config training on a toy copy; returns its path."""

    def write(**changes):
        name = dataset_name("chk")
        cfg.DATASETS.CUSTOM[name] = type(cfg)(
            {
                "FORMAT": "coco",
                "ANN_FILE": str(toy_copy / "annotations" / "train.json"),
                "IMAGE_ROOT": str(toy_copy / "images" / "train"),
                **changes,
            }
        )
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        path = tmp_path / f"{name}.yaml"
        path.write_text(cfg.dump())
        return str(path)

    return write


def test_clean_dataset_exits_0_and_writes_the_report(tool, config, cfg, capsys):
    assert tool.main(["--config-file", config()]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "annotated images" in out
    report = json.loads((pathlib.Path(cfg.OUTPUT_DIR) / "dataset_report.json").read_text())
    assert report["clean"] and report["errors"] == 0


def test_problems_exit_1_with_json(tool, config, toy_copy, edit_json, capsys):
    def mutate(d):
        d["annotations"][0]["bbox"] = [50, 50, 40, 40]  # runs outside the 64x64 image
        d["annotations"][1]["category_id"] = 9

    edit_json(toy_copy / "annotations" / "train.json", mutate)
    assert tool.main(["--config-file", config(), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    titles = {p["title"]: p for p in report["problems"]}
    assert titles["boxes outside their image"]["action"] == "clipped"
    assert "annotation id 1" in titles["boxes outside their image"]["records"][0]
    assert titles['annotations whose category_id is not in "categories"']["severity"] == "error"
    assert report["errors"] == 1 and report["warnings"] == 1


def test_bad_input_exits_2(tool, config, capsys):
    assert tool.main(["--config-file", config(IMG_ROOT="x")]) == 2
    assert "error: DATASETS.CUSTOM.chk_" in capsys.readouterr().err


def test_draw_writes_images(tool, config, tmp_path, capsys):
    out = tmp_path / "drawn"
    assert tool.main(["--config-file", config(), "--draw", "2", "--out", str(out)]) == 0
    drawn = sorted(out.glob("*.jpg"))
    assert len(drawn) == 2 and all(p.stat().st_size > 0 for p in drawn)
    assert f"drew {drawn[0]}" in capsys.readouterr().out
