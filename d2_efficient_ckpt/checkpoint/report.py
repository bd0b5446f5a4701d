"""What a load did, key by key: the data behind incompatibility reports."""

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["LoadReport"]


@dataclass
class LoadReport:
    """The outcome of one ``load()``.

    Attributes:
        path: the checkpoint file.
        format: how it was read (see ``readers.open_checkpoint``).
        loaded: model keys written from the checkpoint.
        missing: model keys (selected) that the checkpoint lacks.
        unexpected: checkpoint keys (after renaming) that the model lacks.
        shape_mismatch: ``(key, checkpoint shape, model shape)``, not loaded.
        dtype_changed: ``(key, checkpoint dtype, model dtype)``, loaded with a cast.
        skipped: model keys left out, each with ``"exclude"`` or ``"include"``.
        renamed: ``(checkpoint key, model key, rule patterns)``.
        checkpointables: per entry or trainer part: restored, skipped or absent.
        num_params_loaded / num_params_model: element counts.
    """

    path: str = ""
    format: str = ""
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    dtype_changed: List[Tuple[str, str, str]] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    renamed: List[Tuple[str, str, List[str]]] = field(default_factory=list)
    checkpointables: Dict[str, str] = field(default_factory=dict)
    num_params_loaded: int = 0
    num_params_model: int = 0
    map_location: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)
