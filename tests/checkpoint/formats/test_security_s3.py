"""Hostile and broken torch zip files are refused in an object store as on a disk.

Every torch zip file of the local hostile-file tests (``test_security.py``,
``test_hostile_round2.py``, built with ``tests/helpers/hostile.py``), plus damage to the
archive's structure (local headers, the central directory, CRCs, truncation, a zip bomb), is
written to a local file and uploaded unchanged to a real S3 server (SeaweedFS on loopback).
Loading the object, with the checkpointer and with ``open_checkpoint``, must end in the same
error class as loading the local file, with the local tests' message fragment, and in the
same message with the URL in place of the path unless the case says why not. A refused load
leaves the model untouched.

The remote reader takes each record's start from the directory's layout and checks its
local header only when the record's data is first read (``torch_zip._starts_from_layout``,
``S3Source.add_check``); the cases that damage a header of a record the load reads check that
this lazy check still catches it.
"""

import re
import struct
import uuid
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict

import pytest
import torch
import torch.nn as nn

from d2_efficient_ckpt.checkpoint import EfficientDetectionCheckpointer
from d2_efficient_ckpt.checkpoint.errors import (
    CheckpointFormatError,
    PartialLoadError,
    UnsafeCheckpointError,
)
from d2_efficient_ckpt.checkpoint.formats import open_checkpoint
from d2_efficient_ckpt.checkpoint.storage.registry import forget_stores
from d2_efficient_ckpt.errors import USER_ERRORS
from tests.helpers import hostile as h

# ------------------------------------------------------------------ building the files
Build = Callable[[str], str]  # build(base): writes the file at base + a suffix, returns it

_WEIGHTS = h.dict_of({"w": h.tensor("0", 4)})  # a valid model: 4 floats of storage "0"


def _pickle(model: bytes = _WEIGHTS, **entries: bytes) -> bytes:
    """The pickle program of ``{"model": model, **entries}``."""
    return h.program(h.dict_of({"model": model, **entries}))


def _zip(pkl: bytes, suffix: str = ".pth") -> Build:
    """The archive of ``hostile.torch_zip`` around ``pkl`` (records named ``archive/...``)."""
    return lambda base: h.torch_zip(base + suffix, pkl)


def _saved(base: str) -> str:
    """A file of ``torch.save`` itself: data descriptors and 64-byte aligned records."""
    path = base + ".pth"
    torch.save({"model": {"w": torch.arange(4.0)}}, path)
    return path


def _rewritten(build: Build, change: Callable[[bytes], bytes]) -> Build:
    """The file ``build`` makes, its bytes passed through ``change``."""

    def rebuild(base: str) -> str:
        path = build(base)
        with open(path, "rb") as f:
            data = f.read()
        return h.raw_file(path, change(data))

    return rebuild


def _first(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """Replace the first ``old`` (a record's local header comes before the directory)."""

    def change(data: bytes) -> bytes:
        assert old in data and len(old) == len(new), old
        return data.replace(old, new, 1)

    return change


def _entry(data: bytes, name: str) -> int:
    """Offset of the central directory entry of the record ``<prefix>/<name>``."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len].endswith(b"/" + name.encode()):
            return at
        at = data.find(b"PK\x01\x02", at + 46)
    raise AssertionError(f"no record {name}")


def _header_offset(data: bytes, name: str) -> int:
    return struct.unpack_from("<I", data, _entry(data, name) + 42)[0]


def _directory(name: str, **fields: int) -> Callable[[bytes], bytes]:
    """Set fields of record ``name``'s directory entry: ``crc``, ``size`` (both sizes) or
    ``offset`` (of its local header)."""
    at_field = {"crc": (16,), "size": (20, 24), "offset": (42,)}

    def change(data: bytes) -> bytes:
        out, at = bytearray(data), _entry(data, name)
        for key, value in fields.items():
            for field_at in at_field[key]:
                struct.pack_into("<I", out, at + field_at, value)
        return bytes(out)

    return change


def _alias(name: str, other: str) -> Callable[[bytes], bytes]:
    """Point record ``name``'s directory entry at the local header of ``other``."""
    return lambda data: _directory(name, offset=_header_offset(data, other))(data)


def _local_header(name: str, at: int, value: bytes) -> Callable[[bytes], bytes]:
    """Overwrite bytes ``at`` of record ``name``'s local header (0: the magic, 28: the
    length of its extra field)."""

    def change(data: bytes) -> bytes:
        start = _header_offset(data, name) + at
        return data[:start] + value + data[start + len(value) :]

    return change


def _cut(fraction: float) -> Callable[[bytes], bytes]:
    return lambda data: data[: int(len(data) * fraction)]


def _zip64_of_two_disks(data: bytes) -> bytes:
    # As test_security's test_damaged_zip64_locator_is_a_format_error builds it.
    end = data.rfind(b"PK\x05\x06")
    locator = b"PK\x06\x07" + (0).to_bytes(4, "little") + bytes(8) + (2).to_bytes(4, "little")
    return data[:end] + locator + data[end:]


def _zip_bomb(base: str) -> str:
    """A storage of 64 MiB of zeros, deflated to 64 KiB."""
    zeros = bytes(64 << 20)
    pkl = _pickle(h.dict_of({"w": h.tensor("0", 4, storage_numel=len(zeros) // 4)}))
    return h.torch_zip(base + ".pth", pkl, {"0": zeros}, compression=zipfile.ZIP_DEFLATED)


def _hash_flood() -> bytes:
    # test_hostile_round2's test_dict_keys_whose_hashes_collide_are_refused_fast.
    keys = h.colliding_int_keys(100_000)
    body = b"".join(h.long(k) + h.i(0) for k in keys)
    return h.EMPTY_DICT + h.MARK + body + h.SETITEMS


def _huge_dimensions() -> bytes:
    # test_hostile_round2's test_huge_dimensions_are_refused_before_any_arithmetic.
    huge = h.long(1 << (8 * 128 * 1024))  # a 128 KiB integer
    return h.call(
        h.glob("torch._utils", "_rebuild_tensor_v2"),
        h.storage("0", 4),
        h.i(0),
        h.tup(*[huge] * 64),
        h.tup(*[h.i(1)] * 64),
        h.NEWFALSE,
        h.call(h.glob("collections", "OrderedDict")),
    )


def _poisoning(target) -> bytes:
    # test_security's test_build_on_globals_is_refused_and_nothing_is_poisoned.
    negate = h.dict_of({"__defaults__": h.tup(h.NONE)})
    attack = h.glob(*target) + h.tup(h.NONE, negate) + h.BUILD + h.POP
    return h.program(attack + h.dict_of({"model": _WEIGHTS}))


def _shadowing_attribute() -> bytes:
    # test_hostile_round2's test_state_dict_attributes_other_than_metadata_are_refused.
    model = h.program(
        h.glob("collections", "OrderedDict"),
        h.EMPTY_TUPLE,
        h.REDUCE,
        h.dict_of({"items": h.i(1)}),
        h.BUILD,
    )
    return h.wrap_model(model)


# ------------------------------------------------------------------ the cases
@dataclass(frozen=True)
class Case:
    """One hostile file and the refusal it must meet, locally and in the store.

    Attributes:
        build: writes the file.
        error: the class of the local load's error, which the object's must have too.
        match: a regular expression both messages match (the local tests' fragment).
        differs: why the object's message may differ from the file's ("" if it may not).
        remote: a regular expression the object's message also matches.
    """

    build: Build
    error: type = CheckpointFormatError
    match: str = ""
    differs: str = ""
    remote: str = ""


_OS_SYSTEM = h.program(h.call(h.glob("os", "system"), h.s("true")))
_LAYOUT = (
    "the object's reader takes a record's start from the directory's layout and checks the "
    "local header against it, where the file's reader takes the start from the header"
)
_ZIPFILE = "the object's reader gives zipfile's reason, the file's sniffing its own"
_DAMAGED = "damaged local header"

CASES: Dict[str, Case] = {
    # Pickles that would run code, build pointers or poison torch (test_security.py).
    "os_system": Case(_zip(_OS_SYSTEM), UnsafeCheckpointError, "os.system"),
    "os_system_pyth": Case(_zip(_OS_SYSTEM, ".pyth"), UnsafeCheckpointError, "os.system"),
    **{
        f"numpy{attack.__name__}": Case(
            _zip(_pickle(h.dict_of({"w": attack()}))), match="not data|corrupt"
        )
        for attack in (
            h.object_field_dtype,
            h.fields_on_plain_dtype,
            h.direct_ndarray,
            h.set_over_array,
        )
    },
    **{
        f"build_on_{target[1]}": Case(_zip(_poisoning(target)), match="not data")
        for target in [
            ("torch._utils", "_rebuild_tensor_v2"),
            ("collections", "OrderedDict"),
            ("torch", "float32"),
        ]
    },
    "build_on_tensor": Case(
        _zip(
            _pickle(
                h.dict_of({"w": h.tensor("0", 2) + h.tup(h.tensor("0", 2, offset=2)) + h.BUILD})
            )
        ),
        match="BUILD on a Tensor",
    ),
    "corrupt_pickle": Case(_zip(h.PROTO2 + b"\xfe\xfd" + h.STOP), match="corrupt"),
    # Memory, recursion and time (test_security.py, test_hostile_round2.py).
    "shared_substructures": Case(_zip(_pickle(optimizer=h.dag(64))), match="shared sub-structures"),
    "bytearray": Case(
        _zip(_pickle(x=h.call(h.glob("builtins", "bytearray"), h.i(1 << 40)))), match="not bytes"
    ),
    "deep_nesting": Case(
        _zip(_pickle(x=h.EMPTY_LIST * 100_000 + h.APPEND * 99_999)), match="nested"
    ),
    "huge_view": Case(
        _zip(_pickle(h.dict_of({"w": h.tensor("0", 4, shape=(1 << 40,), stride=(0,))}))),
        match="larger than its file",
    ),
    "huge_dimensions": Case(_zip(_pickle(h.dict_of({"w": _huge_dimensions()}))), match=r"2\*\*62"),
    "hash_flood": Case(_zip(_pickle(h.EMPTY_DICT, optimizer=_hash_flood())), match="dict key"),
    "zip_bomb": Case(_zip_bomb, match="compressed"),
    # The model entry and its tensors.
    "int_key": Case(
        _zip(_pickle(h.EMPTY_DICT + h.MARK + h.i(3) + h.tensor("0", 4) + h.SETITEMS)),
        match="not a string",
    ),
    "huge_int_key": Case(_zip(_pickle(h.int_keyed(10**5000))), match="dict key of type int"),
    "str_value": Case(_zip(_pickle(h.dict_of({"w": h.s("text")}))), match="holds a str"),
    "list_model": Case(_zip(_pickle(h.EMPTY_LIST)), match="not a state dict"),
    "state_dict_attribute": Case(_zip(_shadowing_attribute()), match="_metadata"),
    **{
        f"tensor_past_its_storage_{name}{suffix.replace('.', '_')}": Case(
            _zip(_pickle(h.dict_of({"w": h.tensor("0", 4, shape=shape, stride=stride)})), suffix),
            match="past the end of its storage",
        )
        for name, (shape, stride) in {"big": ((1000,), (1,)), "strided": ((2, 2), (3, 1))}.items()
        for suffix in (".pth", ".pyth")
    },
    "storage_of_another_size": Case(
        _zip(_pickle(h.dict_of({"w": h.tensor("0", 4, storage_numel=8)}))), match="not 8 elements"
    ),
    "storage_without_record": Case(
        _zip(_pickle(h.dict_of({"w": h.tensor("1", 4)}))), match="has no record"
    ),
    # The archive's structure.
    "compressed_records": Case(
        lambda base: h.recompress(_saved(base), base + "_deflated.pth"), match="compressed"
    ),
    "duplicate_records": Case(
        lambda base: h.duplicate_record(_saved(base), base + "_twice.pth"), match="twice"
    ),
    "zip64_locator_of_two_disks": Case(
        _rewritten(_saved, _zip64_of_two_disks), match="truncated or corrupt", differs=_ZIPFILE
    ),
    **{
        f"truncated_to_{int(fraction * 1000)}_permille": Case(
            _rewritten(_saved, _cut(fraction)), match="truncated or corrupt", differs=_ZIPFILE
        )
        for fraction in (0.5, 0.9, 0.999)
    },
    "data_pkl_fails_its_crc": Case(
        _rewritten(_zip(_pickle()), _first(b"model", b"modex")), match="fails its CRC check"
    ),
    "data_pkl_crc_in_the_directory": Case(
        _rewritten(_saved, _directory("data.pkl", crc=0)), match="fails its CRC check"
    ),
    **{
        f"local_header_name_of_{name.replace('/', '_')}": Case(
            _rewritten(_zip(_pickle()), _first(f"/{name}".encode(), f"/{name[:-1]}X".encode())),
            match=_DAMAGED,
        )
        for name in ("data.pkl", "byteorder", "data/0")
    },
    "local_header_magic_of_data_0": Case(
        _rewritten(_saved, _local_header("data/0", 0, b"PK\0\0")), match=_DAMAGED
    ),
    "local_header_extra_of_data_pkl": Case(
        _rewritten(_saved, _local_header("data.pkl", 28, struct.pack("<H", 7))),
        match=f"{_DAMAGED}|fails its CRC check",
        differs=_LAYOUT,
        remote=_DAMAGED,
    ),
    "local_header_extra_of_byteorder": Case(
        _rewritten(_saved, _local_header("byteorder", 28, struct.pack("<H", 7))),
        match=f"{_DAMAGED}|byteorder record is damaged",
        differs=_LAYOUT,
        remote=_DAMAGED,
    ),
    "local_header_extra_of_data_0": Case(
        _rewritten(_saved, _local_header("data/0", 28, struct.pack("<H", 7))),
        match=_DAMAGED,
    ),
    "storage_starts_outside_the_file": Case(
        _rewritten(_saved, _directory("data/0", offset=1 << 30)), match="starts outside the file"
    ),
    "storage_runs_past_the_end": Case(
        _rewritten(_saved, _directory("data/0", size=0xFFFFFF00)),
        match=f"runs past the end|{_DAMAGED}",
        differs=_LAYOUT,
        remote=_DAMAGED,
    ),
    "storage_overlaps_the_next_record": Case(
        _rewritten(_saved, _directory("data/0", size=200)),
        match=f"overlap|{_DAMAGED}",
        differs=_LAYOUT,
        remote=_DAMAGED,
    ),
    "two_records_on_one_header": Case(
        _rewritten(_saved, _alias("byteorder", "data/0")), match=f"overlap|{_DAMAGED}"
    ),
}

# Records whose local header the object's reader checks only when the copy into the model
# first reads them: the checkpointer's load then fails during the copy.
_HEADER_OF_A_COPIED_RECORD = {
    "local_header_name_of_data_0",
    "local_header_magic_of_data_0",
    "local_header_extra_of_data_0",
}
_KNOWN_GAPS: dict = {
    # Gaps these tests found go here, each with its reason, until they are fixed; a fixed
    # one makes its test fail, so the entry is removed. The first three found are fixed:
    # a local header's extra length against the layout (formats/torch_zip.py), the checks
    # of a remote record's header before the first copy (load/pipeline.py), and the URL in
    # the errors of objects read whole (formats/registry.py).
}


# ------------------------------------------------------------------ loading
class _W(nn.Module):
    """A model of one parameter ``w`` of 4 floats: the files' model entry, read whole."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))


def _checkpointer_load(path: str) -> BaseException:
    """The error of ``EfficientDetectionCheckpointer(model).load(path)``, which must leave
    the model as it was (a header is checked before its record's bytes are copied)."""
    model = _W()
    with pytest.raises(Exception) as info:
        EfficientDetectionCheckpointer(model).load(path)
    assert torch.equal(model.w.detach(), torch.zeros(4)), f"changed by {info.value!r}"
    return info.value


def _open_and_read(path: str) -> BaseException:
    """The error of opening the checkpoint and reading every value of its model."""
    with pytest.raises(Exception) as info:
        model, _ = open_checkpoint(path).read_model()
        for key in model:
            model[key]
    return info.value


@pytest.fixture(scope="module")
def upload(s3_server):
    """``upload(path, key="")``: the file as an object of the module's bucket (under a new
    prefix unless ``key`` is given); returns its URL.

    One bucket and one client serve the module (making either costs the server or boto3
    a good part of a second); the package's S3 store is made anew for the module.
    """
    client = s3_server.client()
    bucket = s3_server.make_bucket(f"hostile-{uuid.uuid4().hex[:12]}")
    forget_stores()

    def put(path: str, key: str = "") -> str:
        key = key or f"{uuid.uuid4().hex[:8]}/{path.rsplit('/', 1)[1]}"
        with open(path, "rb") as f:
            client.put_object(Bucket=bucket, Key=key, Body=f.read())
        return f"s3://{bucket}/{key}"

    yield put
    forget_stores()
    client.delete_bucket(Bucket=bucket)  # the server removes the objects with it


def _known(name: str, what: str, check: Callable[[], None]) -> None:
    """Run ``check``: it must pass, unless ``(name, what)`` is a known gap, which it must fail
    (the test is then an expected failure, and a fixed gap fails it until it is removed)."""
    gap = _KNOWN_GAPS.get((name, what))
    try:
        check()
    except (AssertionError, pytest.fail.Exception):
        if gap:
            pytest.xfail(gap)
        raise
    assert not gap, f"fixed: remove {(name, what)} from _KNOWN_GAPS"


@pytest.mark.parametrize("how", ["load", "open"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_object_is_refused_as_the_local_file_is(s3_env, upload, tmp_path, name, how):
    case = CASES[name]
    local = case.build(str(tmp_path / name))
    url = upload(local)
    load = _checkpointer_load if how == "load" else _open_and_read

    got = load(url)  # the object first: a known gap of the file must not hide its checks
    assert isinstance(got, USER_ERRORS), repr(got)
    message = str(got)
    assert re.search(case.match, message), message
    if case.remote:
        assert re.search(case.remote, message), message
    if name in _HEADER_OF_A_COPIED_RECORD:
        assert _DAMAGED in message, message  # found, before its bytes were used
    if name == "corrupt_pickle":
        assert "arbitrary code" not in message, message

    errors = []

    def the_file_is_refused() -> None:
        errors.append(load(local))
        assert type(errors[0]) is case.error, f"the local file: {errors[0]!r}"
        assert re.search(case.match, str(errors[0])), errors[0]

    def of_the_same_class() -> None:
        assert type(got) is type(errors[0]), f"the object: {got!r}; the file: {errors[0]!r}"

    def naming_the_url() -> None:
        assert url in message and str(tmp_path) not in message, message

    _known(name, "file", the_file_is_refused)
    _known(name, how, of_the_same_class)
    _known(name, "url", naming_the_url)
    if not case.differs:
        assert message.replace(url, "<path>") == str(errors[0]).replace(local, "<path>")


def test_a_resume_passes_over_an_object_whose_storage_header_is_damaged(s3_env, upload, tmp_path):
    run = tmp_path / "run1"
    model = _W()
    ck = EfficientDetectionCheckpointer(model, str(run))
    ck.save("model_0000001", iteration=1)
    with torch.no_grad():
        model.w.add_(1)
    ck.save("model_0000002", iteration=2)  # the newest, tagged: its storage header damaged
    _rewritten(lambda _: str(run / "model_0000002.pth"), _local_header("data/0", 0, b"PK\0\0"))("")
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    remote = [upload(str(p), f"{prefix}/{p.name}") for p in sorted(run.iterdir())]
    remote_run = remote[0].rsplit("/", 1)[0]

    local = _W()
    extra = EfficientDetectionCheckpointer(local, str(run)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and torch.equal(local.w.detach(), torch.zeros(4))

    def falls_back_too() -> None:
        fresh = _W()
        try:
            extra = EfficientDetectionCheckpointer(fresh, remote_run).resume_or_load(
                "", resume=True
            )
        except PartialLoadError as e:
            assert _DAMAGED in str(e), e  # found, and named
            raise AssertionError(f"the resume stopped: {e}") from None
        assert extra["iteration"] == 1 and torch.equal(fresh.w.detach(), torch.zeros(4))

    _known("resume", "fallback", falls_back_too)
