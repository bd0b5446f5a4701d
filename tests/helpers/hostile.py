"""Build hostile and broken checkpoint files: a tiny pickle assembler and file wrappers.

Each helper writes a file in one of the formats the loader reads (torch zip ``.pth``,
legacy ``.pth``, ``.pkl``, ``.pyth``, ``.safetensors``) around a pickle program of the
test's choosing, so that a test states an attack in a few lines.
"""

import io
import json
import pickle
import struct
import zipfile
from typing import Any, Dict, Iterable

import torch

# ------------------------------------------------------------------ pickle assembler
PROTO2 = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
EMPTY_TUPLE = b")"
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
APPEND = b"a"
APPENDS = b"e"
SETITEM = b"s"
SETITEMS = b"u"
REDUCE = b"R"
BUILD = b"b"
NONE = b"N"
NEWTRUE = b"\x88"
NEWFALSE = b"\x89"
DUP = b"2"
POP = b"0"
BINPERSID = b"Q"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def b(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def i(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def put(idx: int) -> bytes:
    return b"r" + struct.pack("<I", idx)


def get(idx: int) -> bytes:
    return b"j" + struct.pack("<I", idx)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(fn: bytes, *args: bytes) -> bytes:
    return fn + tup(*args) + REDUCE


def dict_of(pairs: Dict[str, bytes]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(s(k) + v for k, v in pairs.items()) + SETITEMS


def program(*parts: bytes) -> bytes:
    return PROTO2 + b"".join(parts) + STOP


def storage(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    """A persistent id naming storage ``key`` of a torch zip file."""
    return tup(s("storage"), glob("torch", kind), s(key), s("cpu"), i(numel)) + BINPERSID


def tensor(
    key: str, numel: int, shape=None, stride=None, offset: int = 0, storage_numel: int = 4
) -> bytes:
    """A tensor viewing storage ``key`` (by default the 4-float storage of :func:`torch_zip`)."""
    shape = (numel,) if shape is None else shape
    stride = (1,) * len(shape) if stride is None else stride
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        storage(key, storage_numel),
        i(offset),
        tup(*[i(v) for v in shape]),
        tup(*[i(v) for v in stride]),
        NEWFALSE,
        call(glob("collections", "OrderedDict")),
    )


# ------------------------------------------------------------------ file wrappers
def torch_zip(path: str, pkl: bytes, storages: Dict[str, bytes] = None, **zip_kw: Any) -> str:
    """A torch zip archive holding ``pkl`` as data.pkl and raw storages under data/."""
    storages = storages if storages is not None else {"0": torch.arange(4.0).numpy().tobytes()}
    with zipfile.ZipFile(path, "w", zip_kw.pop("compression", zipfile.ZIP_STORED)) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")
    return path


def legacy(path: str, obj: Any) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def raw_file(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def safetensors(path: str, header: Dict[str, Any], data: bytes, pad: bool = True) -> str:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return raw_file(path, struct.pack("<Q", len(text)) + text + data)


def replace_bytes(path: str, old: bytes, new: bytes) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(old) >= 1, old
    with open(path, "wb") as f:
        f.write(data.replace(old, new, 1))


def duplicate_record(src: str, dst: str, name_suffix: str = "data/0") -> str:
    """Copy a torch zip, adding a second, different record under an existing name."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        names = zin.namelist()
        target = next(n for n in names if n.endswith(name_suffix))
        for name in names:
            zout.writestr(name, zin.read(name))
        fake = bytes(len(zin.read(target)))
        with _quiet_duplicate_warning():
            zout.writestr(target, fake)
    return dst


def recompress(src: str, dst: str) -> str:
    """Copy a torch zip with every record deflate-compressed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    return dst


class _quiet_duplicate_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def plain_pickle(obj: Any, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=protocol)
    return buf.getvalue()


def all_formats(tmp_path, name: str, pkl: bytes) -> Iterable[str]:
    """The same hostile pickle as a .pkl, a torch zip .pth and a .pyth (zip)."""
    yield raw_file(str(tmp_path / f"{name}.pkl"), pkl)
    yield torch_zip(str(tmp_path / f"{name}.pth"), pkl)
    yield torch_zip(str(tmp_path / f"{name}.pyth"), pkl)


def legacy_raw(path: str, main: bytes, keys: bytes = None, storages: bytes = b"") -> str:
    """A legacy (pre-zip) torch file around a main pickle of the test's choosing."""
    info = {"protocol_version": 1001, "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}  # fmt: skip
    head = plain_pickle(0x1950A86A20F9469CFC6C) + plain_pickle(1001) + plain_pickle(info)
    keys = plain_pickle([]) if keys is None else keys
    return raw_file(path, head + main + keys + storages)


# ------------------------------------------------------------------ attack builders
def object_field_dtype():
    """A dtype whose BUILD state declares an object field over raw bytes."""
    obj = call(glob("numpy", "dtype"), s("O8"), NEWFALSE, NEWTRUE)
    state = tup(
        i(3), s("|"), NONE, tup(s("a")),
        dict_of({"a": tup(obj, i(0))}), i(8), i(1), i(63),
    )  # fmt: skip
    return call(glob("numpy", "dtype"), s("V8"), NEWFALSE, NEWTRUE) + state + BUILD


def fields_on_plain_dtype():
    """A plain float dtype whose BUILD state adds a field."""
    state = tup(i(3), s("|"), NONE, tup(s("a")), dict_of({}), i(8), i(1), i(0))
    return call(glob("numpy", "dtype"), s("f8"), NEWFALSE, NEWTRUE) + state + BUILD


def direct_ndarray():
    """A numpy.ndarray built directly over raw bytes."""
    base = b(b"\0" * 16)
    return call(glob("numpy", "ndarray"), tup(i(2)), s("f8"), base)


def set_over_array():
    """A set built over the plain dtype of :func:`fields_on_plain_dtype`."""
    return call(glob("builtins", "set"), tup(fields_on_plain_dtype()))


def dag(depth):
    """A list whose every level holds the level below twice: 2**depth paths, 3 KB."""
    out = EMPTY_LIST + put(0)
    for level in range(1, depth + 1):
        prev = get(level - 1)
        out += POP + EMPTY_LIST + MARK + prev + prev + APPENDS + put(level)
    return out


def wrap_model(model_pkl):
    """``{"model": <model_pkl>}`` as one pickle program."""
    return program(EMPTY_DICT, s("model"), model_pkl[2:-1], SETITEM)


def long(value):
    """LONG4: integers of any length, as pickle writes them."""
    raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


def int_keyed(key):
    """A one-item dict keyed by the integer ``key`` (as LONG4)."""
    return EMPTY_DICT + long(key) + i(1) + SETITEM


def colliding_int_keys(n):
    """``n`` distinct ints that Python hashes alike (all to 7, modulo 2**61 - 1)."""
    return [7 + i * ((1 << 61) - 1) for i in range(n)]
