"""A subclass that overrides ``_load_file``, detectron2's extension point for reading (as
DensePose and AdelaiDet do), keeps lazy, checked reads when it changes the dict that
``super()._load_file()`` returns in place, and is told what it lost when it returns another
dict. Either way its override is called and the weights arrive."""

import logging

import pytest
import torch
import torch.nn as nn

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.errors import CheckpointFormatError

LOGGER = "d2_efficient_ckpt.checkpoint.load.source"


class RenamesInPlace(EfficientDetectionCheckpointer):
    """Renames a prefix, as a port of an older model's checkpoints does."""

    def _load_file(self, filename):
        loaded = super()._load_file(filename)
        model = loaded["model"]
        loaded["model"] = {k.replace("old.", "0."): model[k] for k in model}
        return loaded


class ReadsItself(EfficientDetectionCheckpointer):
    def _load_file(self, filename):
        state = torch.load(filename, weights_only=True)["model"]
        return {"model": {k.replace("old.", "0."): v for k, v in state.items()}}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(8, 8))
    path = tmp_path / "old.pth"
    torch.save({"model": {k.replace("0.", "old."): v for k, v in src.state_dict().items()}}, path)
    return str(path), src


@pytest.mark.parametrize("cls", [RenamesInPlace, ReadsItself])
def test_an_override_of_load_file_is_used(saved, cls, caplog):
    path, src = saved
    dst = nn.Sequential(nn.Linear(8, 8))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cls(dst).load(path)
    assert torch.equal(dst[0].weight, src[0].weight)
    warned = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    if cls is RenamesInPlace:  # still lazy: read as a torch zip file, mapped
        assert not warned
        assert cls(dst).load(path) == {} and _format(cls, dst, path) == "torch-zip"
    else:
        (message,) = warned
        assert "ReadsItself._load_file" in message and "no checked reads" in message
        assert _format(cls, dst, path) == ""


def _format(cls, model, path):
    ck = cls(model)
    ck.load(path)
    return ck.last_report.format


def test_an_override_that_returns_no_dict_is_a_clean_error(saved):
    class Broken(EfficientDetectionCheckpointer):
        def _load_file(self, filename):
            return [1, 2]

    with pytest.raises(CheckpointFormatError, match="_load_file returned a list"):
        Broken(nn.Sequential(nn.Linear(8, 8))).load(saved[0])


def test_an_override_never_reads_less_safely_than_the_call_asks(saved):
    from d2_efficient_ckpt.checkpoint.errors import CheckpointConfigError
    from tests.helpers.config import tiny_frcnn_cfg

    cfg = tiny_frcnn_cfg(**{"CHECKPOINT.LOAD.WEIGHTS_ONLY": False})
    ck = RenamesInPlace(nn.Sequential(nn.Linear(8, 8)), cfg=cfg)
    with pytest.raises(CheckpointConfigError, match="WEIGHTS_ONLY False"):
        ck.load(saved[0], weights_only=True)
