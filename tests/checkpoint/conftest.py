"""A tiny real Faster R-CNN with SGD momentum, saved by the stock DetectionCheckpointer."""

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from tests.helpers.models import build_tiny, trained_state


@pytest.fixture
def saved(tiny_cfg, tmp_path):
    """``(path, model, optimizer)`` of a stock checkpoint ``model_0000009.pth`` in tmp_path."""
    model = build_tiny(tiny_cfg)
    opt = trained_state(model)
    DetectionCheckpointer(model, str(tmp_path), optimizer=opt).save("model_0000009", iteration=9)
    return str(tmp_path / "model_0000009.pth"), model, opt


@pytest.fixture
def fresh(tiny_cfg):
    """Factory of freshly initialised models of the same architecture (different seed)."""

    def make(**overrides):
        torch.manual_seed(123)
        return build_model(tiny_cfg(**overrides))

    return make
