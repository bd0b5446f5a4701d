"""CHECKPOINTER_REGISTRY and build_checkpointer."""

import pytest
import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg

from d2_efficient_ckpt import (
    CHECKPOINTER_REGISTRY,
    EfficientDetectionCheckpointer,
    add_efficient_ckpt_config,
    build_checkpointer,
)
from d2_efficient_ckpt.checkpoint.errors import UnknownCheckpointerError


def _cfg():
    return add_efficient_ckpt_config(get_cfg())


@pytest.fixture
def test_only_checkpointer():
    """A checkpointer class in CHECKPOINTER_REGISTRY for one test, removed after it."""

    class _TestOnlyCheckpointer(DetectionCheckpointer):
        def __init__(self, model, save_dir="", *, cfg=None, **kw):
            super().__init__(model, save_dir, **kw)
            self.cfg = cfg

    CHECKPOINTER_REGISTRY.register(_TestOnlyCheckpointer)
    try:
        yield _TestOnlyCheckpointer
    finally:
        # fvcore's Registry has no public way to unregister a class.
        CHECKPOINTER_REGISTRY._obj_map.pop(_TestOnlyCheckpointer.__name__)


def test_registered_and_built_by_default(tmp_path):
    assert (
        CHECKPOINTER_REGISTRY.get("EfficientDetectionCheckpointer")
        is EfficientDetectionCheckpointer
    )
    ck = build_checkpointer(_cfg(), nn.Linear(2, 2), str(tmp_path))
    assert type(ck) is EfficientDetectionCheckpointer
    assert isinstance(ck, DetectionCheckpointer)
    assert ck.save_dir == str(tmp_path)


def test_checkpointables_passed_through(tmp_path):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = build_checkpointer(_cfg(), model, str(tmp_path), optimizer=opt)
    assert ck.checkpointables == {"optimizer": opt}


def test_custom_registered_class_is_picked(tmp_path, test_only_checkpointer):
    cfg = _cfg()
    cfg.CHECKPOINT.NAME = test_only_checkpointer.__name__
    ck = build_checkpointer(cfg, nn.Linear(2, 2), str(tmp_path))
    assert type(ck) is test_only_checkpointer and ck.cfg is cfg


def test_test_only_checkpointer_is_removed_after_its_test():
    assert "_TestOnlyCheckpointer" not in CHECKPOINTER_REGISTRY


def test_unknown_name_lists_registered():
    cfg = _cfg()
    cfg.CHECKPOINT.NAME = "NoSuchCheckpointer"
    with pytest.raises(KeyError) as e:  # a KeyError, like a registry's, and bad input
        build_checkpointer(cfg, nn.Linear(2, 2))
    assert isinstance(e.value, UnknownCheckpointerError)
    assert "NoSuchCheckpointer" in str(e.value)
    assert "EfficientDetectionCheckpointer" in str(e.value)
