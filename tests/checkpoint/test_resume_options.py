"""Load options set through the config, checked on their effect: key selection on resume
(SELECT_ON_RESUME), WEIGHTS_ONLY, MAP_LOCATION, and URLs through a PathManager handler."""

import argparse
import os

import pytest
import torch
from detectron2.utils.file_io import PathManager as D2PathManager
from iopath.common.file_io import NativePathHandler, PathHandler, PathManager

from d2_efficient_ckpt import EfficientDetectionCheckpointer, build_checkpointer
from d2_efficient_ckpt.checkpoint.errors import UnsafeCheckpointError
from tests.helpers.models import assert_same_weights, build_tiny, trained_state

# RENAME sends every roi_heads key to a name this model lacks: applied on a resume, it would
# leave the box head untrained; INCLUDE and EXCLUDE leave out the RPN and FPN outputs.
SELECTION = {
    "CHECKPOINT.LOAD.INCLUDE": ["backbone.*", "roi_heads.*"],
    "CHECKPOINT.LOAD.EXCLUDE": ["backbone.fpn_output*"],
    "CHECKPOINT.LOAD.RENAME": [["^roi_heads\\.", "heads."]],
}


@pytest.fixture
def run_dir(tiny_cfg, tmp_path):
    """``(save_dir, model, optimizer)``: a run's own checkpoint saved by our checkpointer."""
    out = tmp_path / "run"
    model = build_tiny(tiny_cfg)
    opt = trained_state(model)
    build_checkpointer(tiny_cfg(), model, str(out), optimizer=opt).save(
        "model_0000004", iteration=4
    )
    assert (out / "last_checkpoint").read_text().strip() == "model_0000004.pth"
    return out, model, opt


def _momenta(opt):
    return [opt.state[p]["momentum_buffer"] for g in opt.param_groups for p in g["params"]]


def _resume(tiny_cfg, fresh, out, **overrides):
    cfg = tiny_cfg(**overrides)
    model = fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ck = build_checkpointer(cfg, model, str(out), optimizer=opt)
    extra = ck.resume_or_load("", resume=True)
    return model, opt, ck, extra


def _assert_same_momenta(a, b):
    ma, mb = _momenta(a), _momenta(b)
    assert len(ma) == len(mb) > 0
    for x, y in zip(ma, mb):
        assert torch.equal(x, y)


def test_resume_ignores_the_selection_by_default(run_dir, tiny_cfg, fresh):
    out, saved_model, saved_opt = run_dir
    model, opt, ck, extra = _resume(tiny_cfg, fresh, out, **SELECTION)
    # Every key of the run's own checkpoint comes back; the selection is for MODEL.WEIGHTS.
    assert_same_weights(model, saved_model)
    report = ck.last_report
    assert report.path == str(out / "model_0000004.pth")
    assert not report.skipped and not report.missing and not report.unexpected
    _assert_same_momenta(opt, saved_opt)
    assert extra["iteration"] == 4


def test_select_on_resume_applies_include_exclude_rename(run_dir, tiny_cfg, fresh):
    out, saved_model, saved_opt = run_dir
    before = {k: v.clone() for k, v in fresh().state_dict().items()}
    model, opt, ck, _ = _resume(
        tiny_cfg, fresh, out, **SELECTION, **{"CHECKPOINT.LOAD.SELECT_ON_RESUME": True}
    )
    saved, now = saved_model.state_dict(), model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    bottom_up = [k for k in saved if k.startswith("backbone.bottom_up.")]
    assert bottom_up
    assert_same_weights(model, saved_model, bottom_up)
    # Left out by EXCLUDE, by INCLUDE, and renamed away by RENAME: the fresh values stay.
    kept = [
        k
        for k in params
        if k.startswith(("backbone.fpn_output", "proposal_generator.", "roi_heads."))
    ]
    assert {k.split(".")[0] for k in kept} == {"backbone", "proposal_generator", "roi_heads"}
    for k in kept:
        assert torch.equal(now[k], before[k]), k
        assert not torch.equal(now[k], saved[k]), k
    report = ck.last_report
    reasons = set(report.skipped.values())
    assert {"exclude", "include"} <= reasons
    # Renamed to heads.*, outside INCLUDE: the model's roi_heads keys find nothing.
    assert report.skipped["heads.box_predictor.cls_score.weight"] == "include"
    assert any(k.startswith("roi_heads.") for k in report.missing)
    # The selection is about model keys: the optimizer state is restored as ever.
    _assert_same_momenta(opt, saved_opt)


def test_weights_only_from_the_config(saved, tiny_cfg, fresh, tmp_path):
    path, model, _ = saved
    bad = str(tmp_path / "args.pth")
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=3)}, bad)
    ours = fresh()
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        build_checkpointer(tiny_cfg(), ours).load(bad)  # WEIGHTS_ONLY True by default
    ck = build_checkpointer(tiny_cfg(**{"CHECKPOINT.LOAD.WEIGHTS_ONLY": False}), ours)
    extra = ck.load(bad)
    assert isinstance(extra["args"], argparse.Namespace) and extra["args"].lr == 3
    assert_same_weights(ours, model)


def test_map_location_from_the_config(saved, tiny_cfg, fresh):
    path, model, opt = saved
    ours = fresh()
    opt2 = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    cfg = tiny_cfg(**{"CHECKPOINT.LOAD.MAP_LOCATION": "cpu"})
    ck = build_checkpointer(cfg, ours, optimizer=opt2)
    ck.load(path)
    assert ck.last_report.map_location == "cpu"
    assert all(m.device.type == "cpu" for m in _momenta(opt2))
    _assert_same_momenta(opt2, opt)
    assert_same_weights(ours, model)
    bad = tiny_cfg(**{"CHECKPOINT.LOAD.MAP_LOCATION": "gpu7"})
    with pytest.raises(ValueError, match="MAP_LOCATION 'gpu7' is not a device"):
        build_checkpointer(bad, fresh()).load(path)


class _LocalMirror(PathHandler):
    """Serves ``detectron2://`` and ``https://`` URLs from a local folder, as a download
    cache would; records every URL asked for."""

    def __init__(self, root):
        super().__init__()
        self.root, self.asked = root, []

    def _get_supported_prefixes(self):
        return ["detectron2://", "https://"]

    def _get_local_path(self, path, force=False, **kwargs):
        self.asked.append(path)
        return os.path.join(self.root, path.split("://", 1)[1].replace("/", "__"))

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(self._get_local_path(path), mode, buffering)


@pytest.mark.parametrize(
    "url,local",
    [
        ("detectron2://zoo/tiny/model.pth", "zoo__tiny__model.pth"),
        ("https://models.example.com/tiny/model.pth", "models.example.com__tiny__model.pth"),
    ],
)
@pytest.mark.parametrize("heuristics", [False, True])
def test_url_loads_the_file_its_handler_gives(
    saved, fresh, tiny_cfg, tmp_path, url, local, heuristics
):
    path, model, _ = saved
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    os.replace(path, mirror / local)
    handler = _LocalMirror(str(mirror))
    manager = PathManager()
    manager.register_handler(handler)
    manager.register_handler(NativePathHandler())  # the load report is a local file
    ours = fresh()
    ck = build_checkpointer(tiny_cfg(), ours)
    ck.path_manager = manager
    extra = ck.load(url + ("?matching_heuristics=True" if heuristics else ""))
    assert handler.asked == [url]  # the query is the loader's, not part of the URL
    assert ck.last_report.path == str(mirror / local)
    assert_same_weights(ours, model)
    assert extra.get("matching_heuristics", False) is heuristics
    stem = os.path.splitext(local)[0]
    assert os.path.isfile(os.path.join(ck.cfg.OUTPUT_DIR, f"load_report_{stem}.json"))


class _ZooMirror(_LocalMirror):
    """A mirror of one folder of detectron2's model zoo host, on the global PathManager."""

    PREFIX = "https://dl.fbaipublicfiles.com/detectron2/D2ECTest/"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, force=False, **kwargs):
        self.asked.append(path)
        return os.path.join(self.root, path[len(self.PREFIX) :])


@pytest.fixture
def zoo_mirror(tmp_path):
    """A handler on detectron2's global PathManager for a folder no real model lives in;
    removed afterwards (iopath has no public way to unregister a handler)."""
    mirror = tmp_path / "zoo"
    mirror.mkdir()
    handler = _ZooMirror(str(mirror))
    D2PathManager.register_handler(handler)
    yield handler, mirror
    D2PathManager._path_handlers.pop(_ZooMirror.PREFIX, None)


@pytest.mark.parametrize("scheme", ["detectron2://", "https://dl.fbaipublicfiles.com/detectron2/"])
def test_zoo_url_goes_through_detectrons_path_manager(saved, fresh, zoo_mirror, scheme):
    # The checkpointer's default PathManager is detectron2's: detectron2:// becomes the zoo
    # host's https:// URL, which the registered handler serves from the local folder.
    path, model, _ = saved
    handler, mirror = zoo_mirror
    os.replace(path, mirror / "tiny.pth")
    ours = fresh()
    ck = EfficientDetectionCheckpointer(ours)
    # Wrapped only so that fvcore's retention removes integrity records with their files.
    assert ck.path_manager.inner is D2PathManager
    extra = ck.load(f"{scheme}D2ECTest/tiny.pth?matching_heuristics=True")
    assert handler.asked == [_ZooMirror.PREFIX + "tiny.pth"]
    assert ck.last_report.path == str(mirror / "tiny.pth")
    assert extra["matching_heuristics"] is True
    assert_same_weights(ours, model)
