"""A content-keyed cache of checked datasets: a COCO json for the evaluator plus the findings.

An entry is keyed by the dataset's spec, the check options and the size and modification
time of every source file, so it is reused while nothing it was made from has changed, and
a changed file simply gets a new entry. Entries are written atomically (write, then rename),
so concurrent processes at worst write the same entry twice.
"""

import hashlib
import json
import os
from typing import Any, Dict, Iterable, Optional

__all__ = ["default_cache_dir", "entry_paths", "read_entry", "source_key", "write_json"]

# Bump when the cached json or the findings change shape.
CACHE_VERSION = 1


def default_cache_dir(configured: str = "") -> str:
    """``DATASETS.CACHE_DIR``, or ``$XDG_CACHE_HOME/d2_efficient_ckpt/datasets``."""
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "d2_efficient_ckpt", "datasets")


def source_key(spec: Dict[str, Any], options: Any, files: Iterable[str]) -> str:
    """Hex digest of the spec, the options and ``(path, size, mtime)`` of every file.

    A file that cannot be stat'ed contributes a marker, so its later appearance changes the
    key as well.
    """
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, spec, repr(options)], sort_keys=True).encode())
    for path in files:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()[:20]


def entry_paths(cache_dir: str, name: str, key: str) -> Dict[str, str]:
    """Paths of one entry: ``json`` (COCO for the evaluator) and ``meta`` (the findings)."""
    stem = os.path.join(cache_dir, f"{name}-{key}")
    return {"json": f"{stem}.coco.json", "meta": f"{stem}.meta.json"}


# Elements of a top-level list encoded per json.dumps call: bounds the size of each string.
_CHUNK = 20000


def _dumps(obj: Any) -> str:
    # json.dumps uses the C encoder; json.dump(obj, file) would use the pure-Python one.
    return json.dumps(obj, separators=(",", ":"))


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as compact UTF-8 JSON, atomically.

    The lists of a top-level dict are encoded in chunks, so a dataset of millions of
    annotations never exists as one string in memory; a value with a ``json_chunks()``
    method (e.g. :class:`~d2_efficient_ckpt.data.formats.yolo.box_table.CheckedBoxes`) is
    written as the list of the json object texts it yields, comma-separated.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        _write(tmp, obj)
        os.replace(tmp, path)
    except BaseException:
        # Nothing half-written stays behind (a full disk, an interrupt).
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write(tmp: str, obj: Any) -> None:
    with open(tmp, "w", encoding="utf-8") as f:
        if not isinstance(obj, dict):
            f.write(_dumps(obj))
        else:
            f.write("{")
            for k, (key, value) in enumerate(obj.items()):
                f.write(("," if k else "") + _dumps(key) + ":")
                if hasattr(value, "json_chunks"):
                    # A compact sequence that writes its own json (boxes held as arrays).
                    f.write("[")
                    for k, part in enumerate(value.json_chunks()):
                        f.write(("," if k and part else "") + part)
                    f.write("]")
                elif isinstance(value, list) and len(value) > _CHUNK:
                    f.write("[")
                    for start in range(0, len(value), _CHUNK):
                        part = _dumps(value[start : start + _CHUNK])[1:-1]
                        f.write(("," if start else "") + part)
                    f.write("]")
                else:
                    f.write(_dumps(value))
            f.write("}")


def read_entry(cache_dir: str, name: str, key: str) -> Optional[Dict[str, Any]]:
    """The findings of a complete entry, or None when there is none (or it is unreadable)."""
    paths = entry_paths(cache_dir, name, key)
    try:
        with open(paths["meta"], encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION:
        return None
    json_file = meta.get("json_file")
    if not isinstance(json_file, str) or not os.path.isfile(json_file):
        return None
    return meta
