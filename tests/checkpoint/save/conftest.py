"""A tiny real Faster R-CNN with SGD momentum, and checkpointers that save it."""

import pytest

from d2_efficient_ckpt import build_checkpointer
from tests.helpers.models import build_tiny, trained_state


@pytest.fixture(scope="module")
def model_and_opt():
    """One tiny R18-FPN Faster R-CNN with non-trivial SGD momentum (shared by a module)."""
    from tests.helpers.config import tiny_frcnn_cfg

    model = build_tiny(tiny_frcnn_cfg)
    return model, trained_state(model)


@pytest.fixture
def make_ckpt(tiny_cfg, model_and_opt):
    """Factory: ``make_ckpt(directory, **cfg_overrides)`` -> checkpointer of the shared model."""

    def make(directory, with_optimizer=True, **overrides):
        cfg = tiny_cfg(**overrides)
        model, opt = model_and_opt
        extra = {"optimizer": opt} if with_optimizer else {}
        return build_checkpointer(cfg, model, str(directory), **extra)

    return make
