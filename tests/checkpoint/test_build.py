"""CHECKPOINTER_REGISTRY and build_checkpointer."""

import pytest
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg

from d2_efficient_ckpt import (
    CHECKPOINTER_REGISTRY,
    EfficientDetectionCheckpointer,
    add_efficient_ckpt_config,
    build_checkpointer,
)


def _cfg():
    return add_efficient_ckpt_config(get_cfg())


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
    opt = __import__("torch").optim.SGD(model.parameters(), lr=0.1)
    ck = build_checkpointer(_cfg(), model, str(tmp_path), optimizer=opt)
    assert ck.checkpointables == {"optimizer": opt}


def test_custom_registered_class_is_picked(tmp_path):
    name = "_TestOnlyCheckpointer"

    class _TestOnlyCheckpointer(DetectionCheckpointer):
        def __init__(self, model, save_dir="", *, cfg=None, **kw):
            super().__init__(model, save_dir, **kw)
            self.cfg = cfg

    if name not in CHECKPOINTER_REGISTRY:
        CHECKPOINTER_REGISTRY.register(_TestOnlyCheckpointer)

    cfg = _cfg()
    cfg.CHECKPOINT.NAME = name
    ck = build_checkpointer(cfg, nn.Linear(2, 2), str(tmp_path))
    assert type(ck).__name__ == name and ck.cfg is cfg


def test_unknown_name_lists_registered():
    cfg = _cfg()
    cfg.CHECKPOINT.NAME = "NoSuchCheckpointer"
    with pytest.raises(KeyError) as e:
        build_checkpointer(cfg, nn.Linear(2, 2))
    assert "NoSuchCheckpointer" in str(e.value)
    assert "EfficientDetectionCheckpointer" in str(e.value)
