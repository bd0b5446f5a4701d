"""`python -m d2_efficient_ckpt verify` checks the integrity record of a saved checkpoint."""

import json
import os

from d2_efficient_ckpt.cli import main
from tests.helpers.faults import flip_byte


def _verify(capsys, path):
    code = main(["verify", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_uses_the_record(make_ckpt, tmp_path, capsys):
    ck = make_ckpt(tmp_path, with_optimizer=False)
    ck.save("model_0000003", iteration=3)
    path = tmp_path / "model_0000003.pth"
    code, r = _verify(capsys, path)
    assert code == 0 and any("integrity record matches" in c for c in r["checks"])
    # A bit flipped inside a tensor's bytes: the zip CRC would also catch it, the record
    # names it as a changed file.
    flip_byte(str(path), os.path.getsize(path) // 2)
    code, r = _verify(capsys, path)
    assert code == 1 and any("content changed" in p for p in r["problems"])
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    code, r = _verify(capsys, path)
    assert code == 1 and any("truncated" in p for p in r["problems"])
