"""Build the model of a config for ``diff --config-file``, on the CPU and without training."""

import json
import logging
from typing import Any, Dict, Optional, Sequence, Tuple

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from ..checkpoint.explain.base import dataset_classes
from ..config import add_efficient_ckpt_config
from ..config_utils import merge_cfg_safely
from ..data.registration import register_datasets_from_cfg
from .common import CliError

logger = logging.getLogger(__name__)


def build_model_from_config(config_file: str, opts: Sequence[str]) -> Tuple[Any, Any]:
    """``(cfg, model)`` for a yaml config and ``KEY VALUE`` overrides.

    The model is built on the CPU; ``OUTPUT_DIR`` is cleared so that nothing is written.
    Datasets declared under ``DATASETS.CUSTOM`` are registered (without validation) so that
    explanations can compare the number of classes with the data.

    Raises:
        CliError: the config does not build a model.
        FileNotFoundError, ValueError, KeyError: the config or an override cannot be merged.
    """
    if len(opts) % 2:
        raise CliError(f"config overrides come in KEY VALUE pairs; got {list(opts)}.")
    cfg = add_efficient_ckpt_config(get_cfg())
    merge_cfg_safely(cfg, config_file, list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = ""
    _register_datasets(cfg)
    try:
        model = build_model(cfg)
    except Exception as e:
        raise CliError(
            f"the config {config_file} does not build a model: {type(e).__name__}: {e}"
        ) from None
    model.eval()
    return cfg, model


def _register_datasets(cfg) -> None:
    validate = cfg.DATASETS.get("VALIDATE", True)
    cfg.DATASETS.VALIDATE = False
    try:
        register_datasets_from_cfg(cfg)
    except Exception as e:  # the report is still useful without the data
        logger.info(f"Datasets of the config not registered: {e}")
    finally:
        cfg.DATASETS.VALIDATE = validate
    name, classes = dataset_classes(cfg)
    if name is None or classes is not None or name not in MetadataCatalog.list():
        return
    json_file = MetadataCatalog.get(name).get("json_file", None)
    if not json_file:
        return
    # COCO-format datasets fill thing_classes when loaded; the categories are enough.
    try:
        with open(json_file) as f:
            cats = json.load(f).get("categories") or []
        classes = [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.info(f"Classes of '{name}' unknown: {e}")
        return
    MetadataCatalog.get(name).thing_classes = classes


def dataset_classes_hint(cfg) -> Optional[Dict[str, Any]]:
    """``{"name", "thing_classes"}`` of the config's first dataset, ``None`` if it names none."""
    name, classes = dataset_classes(cfg)
    return None if name is None else {"name": name, "thing_classes": classes}
