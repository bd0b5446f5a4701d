"""How datasets are checked: ``DATASETS.VALIDATION`` and the record-check options.

Read from the config once per run by the registration pipeline and passed down to the
checks, which never read the config themselves.
"""

from dataclasses import dataclass

from detectron2.config import CfgNode

from .errors import DatasetConfigError

__all__ = ["CheckOptions", "check_options", "validation_mode"]

_MODES = ("error", "warn", "off")


@dataclass(frozen=True)
class CheckOptions:
    """How records are checked and repaired; built from the config by :func:`check_options`."""

    #: Read every image header to check its size (False: only images without a size).
    check_sizes: bool = True
    #: "clip" or "drop": what happens to a box that runs outside its image.
    box_outside: str = "clip"
    #: DATALOADER.FILTER_EMPTY_ANNOTATIONS, for the empty-image count.
    filter_empty: bool = True
    #: Header-reading processes; 0: automatic.
    workers: int = 0


def validation_mode(cfg: CfgNode) -> str:
    """``DATASETS.VALIDATION`` (error, warn or off); ``DATASETS.VALIDATE False`` means off.

    Raises:
        DatasetConfigError: an unknown value.
    """
    if not cfg.DATASETS.get("VALIDATE", True):
        return "off"
    mode = cfg.DATASETS.get("VALIDATION", "error")
    mode = str(mode).strip().lower() if mode is not False else "off"
    if mode not in _MODES:
        raise DatasetConfigError(
            f"DATASETS.VALIDATION is {mode!r}; use one of {list(_MODES)} (error: problems stop "
            "the run, warn: they are fixed and logged, off: no checks before training)."
        )
    return mode


def check_options(cfg: CfgNode, mode: str) -> CheckOptions:
    """The record-check options of a run, from its config.

    Raises:
        DatasetConfigError: an unknown ``DATASETS.BOX_OUTSIDE_IMAGE``.
    """
    box = str(cfg.DATASETS.get("BOX_OUTSIDE_IMAGE", "clip")).strip().lower()
    if box not in ("clip", "drop"):
        raise DatasetConfigError(
            f"DATASETS.BOX_OUTSIDE_IMAGE is {box!r}; use clip (cut boxes at the image border) "
            "or drop (remove them)."
        )
    return CheckOptions(
        check_sizes=mode != "off",
        box_outside=box,
        filter_empty=bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS),
        workers=int(cfg.DATASETS.get("VALIDATION_WORKERS", 0)),
    )
