"""Load checkpoint files in a fresh process and check the loader's promise for each.

:func:`run_worker` runs ``load_worker.py`` on a batch of files: a crash or a signal there
is a test failure that names the file, not a lost test run. Every record must end in values
or the project's error, change none of torch's functions, and stay within the memory bound
of ``docs/security.md``.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "load_worker.py")


# A load, inspect and verify of one file may raise the process's peak memory by at most this
# many bytes per byte of the file, plus a fixed allowance (docs/security.md).
MEMORY_PER_FILE_BYTE = 8
MEMORY_SLACK = 64 << 20


def run_worker(paths, tmp_path, timeout=120):
    """Load ``paths`` in a fresh process; return ``{path: record}``."""
    out = str(tmp_path / f"worker_{len(os.listdir(tmp_path))}.jsonl")
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, WORKER, out, *map(str, paths)],
        env=env,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    lines = [json.loads(x) for x in open(out)] if os.path.exists(out) else []
    started = [x["start"] for x in lines if "start" in x]
    assert proc.returncode == 0, (
        f"the loader process died (status {proc.returncode}) on {started[-1:]}: "
        f"{proc.stderr[-2000:]}"
    )
    records = {x["file"]: x for x in lines if "file" in x}
    for rec in records.values():
        assert not rec["poisoned"], f"{rec['file']} changed torch's functions"
        # The memory bound of docs/security.md.
        bound = MEMORY_SLACK + MEMORY_PER_FILE_BYTE * rec["size"]
        assert rec["peak_growth"] <= bound, f"{rec['file']}: peak grew {rec['peak_growth']} bytes"
        for what in ("outcome", "inspect", "verify"):
            assert not str(rec[what]).startswith("RAW"), f"{what} of {rec['file']}: {rec}"
    return records
