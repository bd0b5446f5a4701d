"""The checkpoint command line on objects in S3 (``s3://bucket/key``), against a real S3 server
(SeaweedFS on loopback, see tests/helpers/s3server.py).

Every command runs as a user runs it: ``python -m d2_efficient_ckpt ...`` in a child process
that reaches the server through the standard AWS chain (the server's environment, nothing of
this machine's). ``inspect``, ``verify`` and ``diff`` read objects; ``convert`` and ``strip``
read one and write their output as an object, with its integrity record next to it.
"""

import contextlib
import hashlib
import io
import json
import os
import uuid

import pytest
import torch
from detectron2.modeling import build_model
from safetensors.torch import load as load_safetensors

from d2_efficient_ckpt import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.save.integrity import hash_file, read_record
from d2_efficient_ckpt.checkpoint.storage.registry import forget_stores, store_for
from d2_efficient_ckpt.cli import main
from tests.helpers.config import REPO, tiny_frcnn_cfg

PREFIX = "ckpt"


def _child_env(server, root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env())
    env.update(
        AWS_CONFIG_FILE=os.path.join(root, "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=os.path.join(root, "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=REPO,
    )
    return env


@pytest.fixture(scope="module")
def remote(s3_server, tmp_path_factory):
    """Two checkpoints of a tiny Faster R-CNN with momentum (B = A with roi_heads trained),
    saved with their integrity records and put in a bucket of the module:
    ``s3://<bucket>/ckpt/{a,b}.pth``. The local copies stay for comparisons."""

    root = tmp_path_factory.mktemp("s3cli")
    torch.manual_seed(0)
    cfg = tiny_frcnn_cfg()
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    ck = EfficientDetectionCheckpointer(model, str(root), optimizer=opt)
    ck.save("a", iteration=9)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("roi_heads."):
                p.add_(0.01 * torch.randn_like(p))
    ck.save("b", iteration=19)

    bucket = s3_server.make_bucket(f"cli-{uuid.uuid4().hex[:16]}")
    client = s3_server.client()
    for name in ("a.pth", "a.pth.integrity.json", "b.pth", "b.pth.integrity.json"):
        client.upload_file(str(root / name), bucket, f"{PREFIX}/{name}")
    yield {
        "root": root,
        "bucket": bucket,
        "a": f"s3://{bucket}/{PREFIX}/a.pth",
        "b": f"s3://{bucket}/{PREFIX}/b.pth",
        "params": len(list(model.parameters())),
        "env": _child_env(s3_server, str(root)),
        "client": client,
    }
    s3_server.remove_bucket(bucket)


@pytest.fixture
def store(s3_env):
    """This process reaches the server through the AWS chain; its S3 store made anew."""
    forget_stores()
    yield
    forget_stores()


def cli(remote, tmp_path, *argv):
    """``python -m d2_efficient_ckpt ARGV``, run in this process with the server's environment
    (a child would spend most of its time importing torch): ``(code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    saved, cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(remote["env"])
    forget_stores()  # the store reads the AWS chain anew
    try:
        os.chdir(tmp_path)  # nothing a command might write by mistake lands in the repository
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        forget_stores()
    assert "Traceback" not in out.getvalue() + err.getvalue(), err.getvalue()[-4000:]
    return code, out.getvalue(), err.getvalue()


def cli_json(remote, tmp_path, *argv):
    code, out, err = cli(remote, tmp_path, *argv, "--json")
    try:
        return code, json.loads(out)
    except ValueError:
        raise AssertionError(f"exit {code}, no JSON:\n{out[-2000:]}\n{err[-2000:]}") from None


def _key(url):
    return url.split("/", 3)[3]


def _put(remote, name, data, record=None):
    """Put ``data`` as ``s3://<bucket>/ckpt/<name>``, with a record of ``record``'s content
    renamed to it (a record names its file); returns the URL."""
    client, bucket = remote["client"], remote["bucket"]
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}", Body=data)
    if record is not None:
        fields = json.loads((remote["root"] / record).read_text())
        fields["file"] = name
        body = json.dumps(fields).encode()
        client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}.integrity.json", Body=body)
    return f"s3://{bucket}/{PREFIX}/{name}"


def _object_bytes(remote, url):
    return remote["client"].get_object(Bucket=remote["bucket"], Key=_key(url))["Body"].read()


def _assert_complete(url):
    """The output object is whole and matches the integrity record written next to it."""
    record = read_record(url)
    assert record is not None, f"no integrity record next to {url}"
    assert store_for(url).info(url).size == record.size
    assert hash_file(url) == record.hash
    return record


def test_inspect_lists_the_entries_of_an_object(remote, tmp_path):
    code, info = cli_json(remote, tmp_path, "inspect", remote["a"])
    assert code == 0, info
    assert info["file"] == remote["a"] and info["format"] == "torch-zip"
    assert info["bytes"] == os.path.getsize(remote["root"] / "a.pth")
    assert info["iteration"] == 9 and info["safe"] and not info["pickle_free"]
    assert set(info["entries"]) == {"model", "optimizer", "iteration"}
    assert info["entries"]["model"]["keys"] == 150
    # One momentum buffer per parameter.
    assert info["entries"]["optimizer"]["tensors"] == remote["params"]
    assert info["dtypes"]["float32"]["tensors"] == 130 and info["dtypes"]["int64"]["tensors"] == 20


def test_verify_passes_on_a_complete_object(remote, tmp_path):
    code, r = cli_json(remote, tmp_path, "verify", remote["a"])
    assert code == 0 and r["ok"], r
    assert any(c.startswith("integrity record matches") for c in r["checks"])
    assert "zip CRCs ok" in r["checks"] and "loads with weights_only" in r["checks"]
    assert r["sha256"] == hashlib.sha256((remote["root"] / "a.pth").read_bytes()).hexdigest()


def test_verify_fails_on_an_object_with_flipped_bytes(remote, tmp_path):
    data = bytearray((remote["root"] / "a.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor's bytes: the archive still parses
    url = _put(remote, "flipped.pth", bytes(data), record="a.pth.integrity.json")
    code, out, _ = cli(remote, tmp_path, "verify", url)
    assert code == 1, out
    assert out.startswith(f"FAILED: {url}")
    assert "content changed after it was written" in out and "CRC" in out


def test_verify_fails_on_a_truncated_object(remote, tmp_path):
    data = (remote["root"] / "a.pth").read_bytes()
    url = _put(remote, "cut.pth", data[: len(data) // 2], record="a.pth.integrity.json")
    code, r = cli_json(remote, tmp_path, "verify", url)
    assert code == 1 and not r["ok"], r
    assert r["file"] == url
    assert any("truncated" in p for p in r["problems"]), r["problems"]


def test_verify_of_a_missing_object_is_bad_input(remote, tmp_path):
    url = f"s3://{remote['bucket']}/{PREFIX}/nope.pth"
    code, out, err = cli(remote, tmp_path, "verify", url)
    assert code == 2, out + err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert url in line and "no such object" in line


def test_diff_two_objects(remote, tmp_path):
    code, out, _ = cli(remote, tmp_path, "diff", remote["a"], remote["b"], "--depth", "2")
    assert code == 0, out
    size = os.path.getsize(remote["root"] / "a.pth") / 2**20
    assert f"A: {remote['a']} (torch-zip, 150 keys, {size:.1f} MiB, iteration 9)" in out
    assert f"B: {remote['b']} (torch-zip, 150 keys" in out and "iteration 19" in out
    assert "2 changed" in out and "frozen" in out and "roi_heads.box_head" in out


def test_convert_an_object_to_an_object(remote, tmp_path, store):
    out_url = f"s3://{remote['bucket']}/exported/a.safetensors"
    code, s = cli_json(remote, tmp_path, "convert", remote["a"], out_url)
    assert code == 0, s
    assert s["input"] == remote["a"] and s["output"] == out_url
    assert s["input_format"] == "torch-zip" and s["output_format"] == "safetensors"
    assert s["tensors"] == 150 and s["entries"] == {"iteration": 9}
    record = _assert_complete(out_url)
    assert record.size == s["bytes"] and record.iteration == 9
    tensors = load_safetensors(_object_bytes(remote, out_url))
    ref = torch.load(remote["root"] / "a.pth", weights_only=True)["model"]
    assert tensors.keys() == ref.keys()
    assert all(torch.equal(tensors[k], v) for k, v in ref.items())
    # The output exists now: refused without --force, as for a local file.
    code, _, err = cli(remote, tmp_path, "convert", remote["a"], out_url)
    assert code == 2 and "--force" in err


def test_strip_an_object_to_an_object(remote, tmp_path, store):
    out_url = f"s3://{remote['bucket']}/exported/deploy.pth"
    code, s = cli_json(remote, tmp_path, "strip", "--fp16", remote["a"], out_url)
    assert code == 0, s
    assert s["output"] == out_url and s["output_format"] == "torch"
    assert s["dropped_entries"] == ["optimizer", "iteration"] and s["fp16_tensors"] == 130
    assert s["input_bytes"] == os.path.getsize(remote["root"] / "a.pth")
    assert s["bytes"] < 0.3 * s["input_bytes"]  # weights only, in half the bytes
    assert _assert_complete(out_url).size == s["bytes"]
    stripped = _load_object(out_url)
    ref = torch.load(remote["root"] / "a.pth", weights_only=True)["model"]
    assert set(stripped) == {"model"} and stripped["model"].keys() == ref.keys()
    for k, v in ref.items():
        want = v.half() if v.dtype == torch.float32 else v
        assert stripped["model"][k].dtype == want.dtype and torch.equal(stripped["model"][k], want)


def test_an_output_in_a_missing_bucket_is_bad_input(remote, tmp_path):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    code, out, err = cli(remote, tmp_path, "strip", remote["a"], f"s3://{bucket}/deploy.pth")
    assert code == 2, out + err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"s3://{bucket}" in line and "does not exist" in line


def _load_object(url):
    with open(store_for(url).local_path(url), "rb") as f:
        return torch.load(f, weights_only=True)
