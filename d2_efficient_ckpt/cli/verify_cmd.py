"""``verify FILE``: integrity checks of a checkpoint file."""

import hashlib
from collections.abc import Mapping
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from ..checkpoint.errors import CheckpointError
from ..checkpoint.formats import OpenedCheckpoint, detect_format, open_checkpoint
from ..checkpoint.formats.entries import byte_progress
from ..checkpoint.formats.safetensors import SafetensorsStateDict
from ..checkpoint.formats.torch_zip import corrupt_records
from ..checkpoint.formats.training_safetensors import is_training_metadata
from ..checkpoint.restore.state import tensors_in
from ..checkpoint.save import IntegrityError, check_full
from ..checkpoint.storage.registry import is_remote, open_bytes, store_for
from .common import EXIT_FAILED, EXIT_OK, add_parser, emit, file_size, local_file, show_progress

_BLOCK = 1 << 22
EXAMPLES = """\
  python -m d2_efficient_ckpt verify output/model_final.pth
  python -m d2_efficient_ckpt verify model.safetensors --sha256 3f2a9c --json
"""


def register(sub, common) -> None:
    p = add_parser(
        sub,
        "verify",
        "check a checkpoint's integrity (exit 1 when a check fails)",
        "Check that a checkpoint is complete and readable: its integrity record (size and "
        "xxh3-64 hash, written next to every saved checkpoint), zip CRCs of torch files, "
        "header and offsets of safetensors files, a safe (weights-only) load, a model entry, "
        "finite floating-point weights, and optionally the SHA-256 of the file. Exits 1 when "
        "any check fails, 2 when the file does not exist.",
        EXAMPLES,
        common,
    )
    p.add_argument("file", help="checkpoint file")
    p.add_argument("--sha256", help="expected SHA-256 (hex; a prefix of 6+ characters is enough)")
    p.set_defaults(func=run)


def _sha256(path: str, progress: bool) -> str:
    h = hashlib.sha256()
    if is_remote(path):  # an object: concurrent ranged reads of one version of it
        with open_bytes(path) as source, byte_progress(source.size, "sha256", progress) as bar:
            source.advise([(0, source.size)])
            for start in range(0, source.size, _BLOCK):
                block = source.read(start, min(_BLOCK, source.size - start))
                h.update(block)
                bar.update(len(block))
        return h.hexdigest()
    with open(path, "rb") as f, byte_progress(file_size(path), "sha256", progress) as bar:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _safetensors_layout(path: str) -> List[str]:
    st = SafetensorsStateDict(path)  # raises on a bad header, overlaps or truncated data
    problems = []
    pos = 0
    for key, (start, end) in sorted(st.spans().items(), key=lambda kv: kv[1]):
        if start != pos:
            problems.append(f"tensor '{key}' starts at byte {start}, expected {pos} (a gap).")
        pos = max(pos, end)
    if pos != st.data_size:
        problems.append(f"{st.data_size - pos} bytes after the last tensor.")
    return problems


def _all_finite(t: torch.Tensor) -> bool:
    # isfinite has no kernel for some 8-bit float types; their values fit a float32 exactly.
    if t.element_size() == 1:
        t = t.float()
    return bool(torch.isfinite(t).all())


def _tensor_problems(opened: OpenedCheckpoint, state: Mapping, progress: bool) -> List[str]:
    bad = []
    with opened.reader() as reader:  # length-checked reads, as load() does
        for key in tqdm(list(state), desc="reading", unit="tensor", disable=not progress):
            t = reader.read(state[key])
            if t.is_floating_point() and not _all_finite(t):
                bad.append(key)
    if bad:
        return [
            f"{len(bad)} tensor(s) hold NaN or Inf: {', '.join(bad[:5])}"
            + (", ..." if len(bad) > 5 else "")
        ]
    return []


def verify_file(path: str, sha256: Optional[str] = None, progress: bool = False) -> Dict[str, Any]:
    """Run every check; ``ok`` is whether all passed."""
    path = local_file(path)
    result: Dict[str, Any] = {"file": path, "format": None, "checks": [], "problems": []}
    checks, problems = result["checks"], result["problems"]
    try:
        result["format"] = fmt = detect_format(path)
    except CheckpointError as e:
        problems.append(str(e))
        return _finish(result)
    _check_record(path, checks, problems)
    result["sha256"] = digest = _sha256(path, progress)
    if sha256:
        _check_sha256(digest, sha256, checks, problems)
    if fmt == "torch-zip":
        _check_zip(path, checks, problems)  # an object too: read in ranges
    else:
        # An object of another format is read whole, from a local copy; the record and the
        # SHA-256 above were checked against the object itself.
        path = _local_copy(path)
    if fmt == "safetensors":
        _check_safetensors(path, checks, problems)
    if not problems:
        _check_contents(path, result, progress)
    return _finish(result)


def _local_copy(path: str) -> str:
    return store_for(path).local_path(path) if is_remote(path) else path


def _finish(result: Dict[str, Any]) -> Dict[str, Any]:
    result["ok"] = not result["problems"]
    return result


def _check_record(path: str, checks: List[str], problems: List[str]) -> None:
    try:
        record = check_full(path, require_record=False)
        if record is not None:
            checks.append(f"integrity record matches ({record.algorithm}, {record.size} bytes)")
    except IntegrityError as e:
        problems.append(e.problem)


def _check_sha256(digest: str, expected: str, checks: List[str], problems: List[str]) -> None:
    want = expected.strip().lower()
    if len(want) < 6 or not digest.startswith(want):
        problems.append(f"SHA-256 is {digest}, expected {want}.")
    else:
        checks.append("sha256 matches")


def _check_zip(path: str, checks: List[str], problems: List[str]) -> None:
    try:
        broken = corrupt_records(path)  # the loader's archive parser, plus CRCs
    except CheckpointError as e:
        problems.append(str(e))
        return
    if broken:
        problems.append(
            f"zip record(s) {', '.join(broken[:5])} fail their CRC check (the file is corrupt)."
        )
    else:
        checks.append("zip CRCs ok")


def _check_safetensors(path: str, checks: List[str], problems: List[str]) -> None:
    try:
        layout = _safetensors_layout(path)
    except CheckpointError as e:
        layout = [str(e)]
    problems.extend(layout)
    if not layout:
        checks.append("safetensors header and offsets ok")


def _check_contents(path: str, result: Dict[str, Any], progress: bool) -> None:
    """A safe load, the model's tensors readable and finite, and the training state."""
    checks, problems = result["checks"], result["problems"]
    try:
        opened = open_checkpoint(path, mmap=True, weights_only=True)
        result["format"] = opened.format
        state, _ = opened.split_model()  # read below through one checked reader
    except CheckpointError as e:
        problems.append(str(e))
        return
    checks.append("loads with weights_only")
    result["tensors"] = len(state)
    try:
        tensor_problems = _tensor_problems(opened, state, progress)
    except CheckpointError as e:
        tensor_problems = [str(e)]
    problems.extend(tensor_problems)
    if not tensor_problems:
        checks.append(f"{len(state)} model tensors readable and finite")
    if is_training_metadata(opened.metadata):
        try:
            count = _read_training_state(opened)
            checks.append(f"training state decoded, {count} tensors readable")
        except CheckpointError as e:
            problems.append(str(e))


def _read_training_state(opened: OpenedCheckpoint) -> int:
    """Read every tensor outside the model (optimizer, scheduler, ...) length-checked."""
    _, rest = opened.split_model()
    tensors = list(tensors_in(rest))
    with opened.reader() as reader:
        for t in tensors:
            reader.read(t)
    return len(tensors)


def run(args) -> int:
    result = verify_file(args.file, args.sha256, show_progress(args))
    if result["ok"]:
        text = f"OK: {result['file']} ({result['format']}): " + "; ".join(result["checks"])
        text += f"\nsha256 {result['sha256']}"
    else:
        text = f"FAILED: {result['file']}\n" + "\n".join(f"  - {p}" for p in result["problems"])
    emit(args, result, text)
    return EXIT_OK if result["ok"] else EXIT_FAILED
