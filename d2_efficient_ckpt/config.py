"""Config keys owned by d2_efficient_ckpt.

All keys live in :func:`add_efficient_ckpt_config`; nothing here touches detectron2's global
default config, so a ``get_cfg()`` made elsewhere in the same process stays stock.
"""

from detectron2.config import CfgNode as CN

from .checkpoint.options import TRAINER_PART_NAMES

__all__ = ["add_efficient_ckpt_config", "with_trainer_defaults"]


def add_efficient_ckpt_config(cfg: CN) -> CN:
    """Add every key of the plugin, with its default, to ``cfg`` in place.

    Calling it twice is harmless: keys that already exist keep their values.

    Args:
        cfg: a detectron2 config, usually from ``detectron2.config.get_cfg()``.

    Returns:
        The same ``cfg``, for chaining.
    """

    if "CHECKPOINT" not in cfg:
        cfg.CHECKPOINT = CN()
    ck = cfg.CHECKPOINT
    # Registered name in CHECKPOINTER_REGISTRY of the checkpointer class to build.
    ck.setdefault("NAME", "EfficientDetectionCheckpointer")
    # Where checkpoints and last_checkpoint go: a folder or s3://bucket/prefix; "" is OUTPUT_DIR.
    ck.setdefault("DIR", "")

    if "LOAD" not in ck:
        ck.LOAD = CN()
    ld = ck.LOAD
    # Glob patterns over the model's state-dict keys to load; empty means all keys.
    ld.setdefault("INCLUDE", [])
    # Glob patterns over the model's state-dict keys never to load (applied after INCLUDE).
    ld.setdefault("EXCLUDE", [])
    # Ordered [regex, replacement] pairs applied to checkpoint keys before matching.
    ld.setdefault("RENAME", [])
    # Apply INCLUDE/EXCLUDE/RENAME also when resuming this run's own last checkpoint.
    ld.setdefault("SELECT_ON_RESUME", False)
    # Parts a resume restores; "sampling" is the data order and random states (exact resume).
    ld.setdefault("CHECKPOINTABLES", list(TRAINER_PART_NAMES))
    # Memory-map torch zip files so only the storages that are used are read.
    ld.setdefault("MMAP", True)
    # Refuse checkpoint files that need arbitrary pickle code; set False only for trusted files.
    ld.setdefault("WEIGHTS_ONLY", True)
    # Where tensors land: "" for each parameter's own device, "cpu" or "cuda:N".
    ld.setdefault("MAP_LOCATION", "")
    # What an incompatible key does to a load: "warn", "error" or "ignore".
    ld.setdefault("ON_MISMATCH", "warn")
    # Glob patterns of keys whose incompatibility is tolerated even under ON_MISMATCH "error".
    ld.setdefault("ALLOW_MISMATCH", [])
    # Several processes: only the main one reads the checkpoint and sends it to the others.
    ld.setdefault("BROADCAST_FROM_MAIN", False)
    # A local folder keeping whole copies of objects read from a store (s3://), by ETag; "" off.
    ld.setdefault("REMOTE_CACHE_DIR", "")

    if "SAVE" not in ck:
        ck.SAVE = CN()
    sv = ck.SAVE
    # Read every checkpoint back after writing and compare it with its integrity record.
    sv.setdefault("VERIFY", True)
    # Write in a background thread, training waits only for a snapshot. None: yes for the
    # Trainer's checkpointer (train() joins the last save), no for one built in your own code.
    sv.setdefault("ASYNC", None)
    # Signal names (e.g. ["SIGTERM", "SIGUSR1"]) that make training checkpoint and exit.
    sv.setdefault("ON_SIGNAL", [])
    # Keep only the N newest periodic checkpoints (model_final is always kept); 0 keeps all.
    sv.setdefault("MAX_TO_KEEP", 0)
    # File format of training checkpoints: "pth" (torch.save) or "safetensors" (pickle-free).
    sv.setdefault("FORMAT", "pth")
    # On shared storage, seconds a dead save's temporary file must be unmodified to be removed.
    sv.setdefault("STALE_TEMP_AGE_S", 3600.0)

    ds = cfg.DATASETS
    if "CUSTOM" not in ds:
        # One child per dataset name: FORMAT (coco, voc, yolo) and that format's keys.
        ds.CUSTOM = CN(new_allowed=True)
    # False is the same as VALIDATION "off" (kept for older configs).
    ds.setdefault("VALIDATE", True)
    # Checks of the datasets a run uses, before any model: "error", "warn" (fix and log) or "off".
    ds.setdefault("VALIDATION", "error")
    # A box that runs outside its image: "clip" it at the border or "drop" it.
    ds.setdefault("BOX_OUTSIDE_IMAGE", "clip")
    # Validation processes for image headers, YOLO labels, large jsons; 0: min(8, CPUs).
    ds.setdefault("VALIDATION_WORKERS", 0)
    # Folder of converted/repaired COCO jsons for the evaluator; "" is ~/.cache/d2_efficient_ckpt.
    ds.setdefault("CACHE_DIR", "")
    # Set MODEL.ROI_HEADS.NUM_CLASSES from the training data instead of checking it.
    ds.setdefault("NUM_CLASSES_FROM_DATA", False)
    return cfg


def with_trainer_defaults(cfg: CN) -> CN:
    """``cfg``, or a copy of it with the keys left to the Trainer (None) given its values.

    ``CHECKPOINT.SAVE.ASYNC`` None becomes True: the Trainer joins the save in flight before
    ``train()`` returns, so nothing a background save does is lost or unseen. A checkpointer
    built in a user's own loop reads None as False, so that ``save()`` returns with the file
    in place, as the stock class does.
    """
    if cfg.CHECKPOINT.SAVE.get("ASYNC") is not None:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.CHECKPOINT.SAVE.ASYNC = True
    if frozen:
        cfg.freeze()
    return cfg
