"""The globals a checkpoint pickle may name, as constructors with checked arguments.

A name in a pickle never resolves to the real function or class. It resolves to a
:class:`Ctor` that checks its arguments and builds a fresh object, or to an immutable value
(a ``torch.dtype``), or to a :class:`Token` that only this package's code interprets (a
storage type). So a file cannot reach, let alone change, anything global.

numpy arrays and dtypes are pickled as "make an empty object, then ``BUILD`` it with this
state". Their constructors return :class:`Pending` placeholders, and :func:`build_pending`
checks the state (plain numeric dtypes, the exact number of data bytes) before it builds
the real object. numpy's own ``__setstate__`` never runs: it accepts object fields over raw
bytes, which is how a file can make numpy read bytes as pointers.
"""

import collections
import math
import warnings
from typing import Any, Callable, Dict, Literal, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "Ctor",
    "Token",
    "Pending",
    "StorageRef",
    "build_pending",
    "is_safe_key",
    "itemsize",
    "torch_globals",
    "numpy_globals",
    "MAX_DIM",
    "MAX_DIMS",
]

MAX_DIMS = 64  # more dimensions than any real tensor or array has


class _Frozen:
    """Objects handed to a pickle: no attributes can be set, no state can be built."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state: Any) -> None:
        raise TypeError(f"{type(self).__name__} has no state to set")

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class Ctor(_Frozen):
    """A checked constructor standing for the global ``name``."""

    __slots__ = ("name", "_fn")
    name: str
    _fn: Callable[..., Any]

    def __init__(self, name: str, fn: Callable[..., Any]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<constructor {self.name}>"


class Token(_Frozen):
    """A global that is only ever an argument (a storage type, ``numpy.ndarray``)."""

    __slots__ = ("name", "value")
    name: str
    value: Any

    def __init__(self, name: str, value: Any):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)

    def __repr__(self) -> str:
        return f"<{self.name}>"


class Pending:
    """An object made by a constructor whose real value comes with its ``BUILD``."""

    __slots__ = ()


class _PendingArray(Pending):
    __slots__ = ()


class _PendingDtype(Pending):
    __slots__ = ("base",)

    def __init__(self, base: np.dtype):
        self.base = base


class StorageRef:
    """A storage of a checkpoint file, as its reader's ``persistent_load`` returns it.

    Attributes:
        key: the storage's name in the file.
        storage: a ``torch.UntypedStorage`` with exactly the storage's bytes.
        dtype: the element type the file declares for it.
        max_bytes: the most bytes a tensor viewing it may claim (the file's size).
    """

    __slots__ = ("key", "storage", "dtype", "max_bytes")

    def __init__(self, key: str, storage: Any, dtype: torch.dtype, max_bytes: int):
        # Plain attributes: the unpickler never lets a file set attributes (no BUILD on it).
        self.key, self.storage, self.dtype, self.max_bytes = key, storage, dtype, max_bytes


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    size = _ITEMSIZE.get(dtype)
    if size is None:
        size = _ITEMSIZE[dtype] = torch.empty((), dtype=dtype).element_size()
    return size


_ITEMSIZE: Dict[torch.dtype, int] = {}


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _is_int(x: Any) -> bool:
    return type(x) is int


# Every size, stride and offset of a tensor or array is below this before any arithmetic:
# a product of 64 integers of 128 KiB each would take minutes to compute.
MAX_DIM = 1 << 62


def _shape(value: Any, what: str) -> Tuple[int, ...]:
    if type(value) is tuple and len(value) <= MAX_DIMS:
        for v in value:
            if type(v) is not int or not 0 <= v < MAX_DIM:
                break
        else:
            return value
    raise ValueError(f"{what} is not a tuple of at most {MAX_DIMS} integers from 0 to 2**62")


def _elements_viewed(offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]) -> int:
    """How many elements of its storage a strided view reaches, from the storage's start."""
    if 0 in size:
        return 0
    return offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1


# Keys of dicts and members of sets built from a file: types whose hashes a file cannot make
# collide in bulk, so that building them stays linear. Python's hash of an int is the int
# modulo 2**61 - 1 (k and k + 2**61 - 1 collide), and a float's is its value modulo the same
# prime (1.5 and 1.5 * 2**61 collide); strings and bytes use randomized SipHash.
_HASH_MODULUS = (1 << 61) - 1
_FLOAT_KEY_BOUND = float(1 << 53)


def is_safe_key(key: Any, _nested: bool = False) -> bool:
    """Whether ``key`` may be a dict key or set member of a checkpoint's data.

    Strings, bytes, bools and None; integers of absolute value below ``2**61 - 1``; finite
    floats below ``2**53`` in magnitude; and tuples of up to 8 of those (not nested).
    """
    kind = type(key)
    if kind in (str, bytes, bool) or key is None:
        return True
    if kind is int:
        return -_HASH_MODULUS < key < _HASH_MODULUS
    if kind is float:
        return -_FLOAT_KEY_BOUND < key < _FLOAT_KEY_BOUND  # False for NaN and infinities
    if kind is tuple and not _nested:
        return len(key) <= 8 and all(is_safe_key(k, True) for k in key)
    return False


def _empty_hooks(value: Any) -> bool:
    return isinstance(value, dict) and not value


# ------------------------------------------------------------------------------ torch
def _rebuild_tensor(
    ref: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    _check(isinstance(ref, StorageRef), "a tensor's storage is not a storage of this file")
    _check(_is_int(offset) and 0 <= offset < MAX_DIM, "a tensor's storage offset is out of range")
    _shape(size, "a tensor's size")
    _shape(stride, "a tensor's stride")
    _check(len(size) == len(stride), "a tensor's size and stride differ in length")
    # Against the storage's own bytes, on every reader: set_() grows a resizable storage
    # instead of refusing a view that leaves it, which would hold uninitialised memory.
    _check(
        _elements_viewed(offset, size, stride) * itemsize(ref.dtype) <= ref.storage.nbytes(),
        "a tensor reaches past the end of its storage",
    )
    _check(type(requires_grad) is bool, "a tensor's requires_grad is not a bool")
    _check(hooks is None or _empty_hooks(hooks), "a tensor carries backward hooks")
    _check(metadata is None or metadata == {}, "a tensor carries metadata this reader ignores")
    _check(
        math.prod(size) * itemsize(ref.dtype) <= ref.max_bytes, "a tensor is larger than its file"
    )
    t = torch.empty(0, dtype=ref.dtype)
    t.set_(ref.storage, offset, size, stride)  # raises when the view leaves its storage
    if requires_grad:
        t.requires_grad_(True)  # raises for integer tensors, as torch.load does
    return t


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> torch.nn.Parameter:
    _check(type(data) is torch.Tensor, "a parameter's data is not a tensor built from this file")
    _check(type(requires_grad) is bool, "a parameter's requires_grad is not a bool")
    _check(_empty_hooks(hooks), "a parameter carries backward hooks")
    return torch.nn.Parameter(data, requires_grad)


def _torch_size(dims: Any = ()) -> torch.Size:
    return torch.Size(_shape(dims, "torch.Size"))


def _torch_device(kind: Any, index: Any = None) -> torch.device:
    _check(isinstance(kind, str) and len(kind) < 32, "a device is not a short string")
    _check(index is None or (_is_int(index) and 0 <= index < 1 << 16), "bad device index")
    return torch.device(kind) if index is None else torch.device(kind, index)


_STORAGE_TYPES = (
    "DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
    "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
    "ComplexFloatStorage", "ComplexDoubleStorage",
)  # fmt: skip


def _storage_dtype(name: str) -> Optional[torch.dtype]:
    cls = getattr(torch, name, None)
    if cls is None:
        return None
    # The legacy storage classes warn when their dtype is read; their names say it anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.dtype


def torch_globals() -> Dict[Tuple[str, str], Any]:
    """Globals of torch checkpoints: tensors, parameters, storage types, dtypes, sizes."""
    out: Dict[Tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): Ctor("_rebuild_tensor_v2", _rebuild_tensor),
        ("torch._utils", "_rebuild_parameter"): Ctor("_rebuild_parameter", _rebuild_parameter),
        ("torch", "Size"): Ctor("torch.Size", _torch_size),
        ("torch", "device"): Ctor("torch.device", _torch_device),
        ("torch", "UntypedStorage"): Token("torch.UntypedStorage", torch.uint8),
    }
    for name in _STORAGE_TYPES:
        dtype = _storage_dtype(name)
        if dtype is not None:
            out[("torch", name)] = Token(f"torch.{name}", dtype)
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            out[("torch", name)] = value  # dtypes are immutable singletons
    return out


# ------------------------------------------------------------------------------ numpy
_NUMPY_CODES = {
    np.dtype(c).str[1:]: np.dtype(c)
    for c in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")
}
_NUMPY_CODES.update({"?": np.dtype("?"), "bool": np.dtype("?")})
_NDARRAY = Token("numpy.ndarray", np.ndarray)


def _numpy_dtype(code: Any, align: Any = False, copy: Any = False) -> _PendingDtype:
    if isinstance(code, bytes):
        code = code.decode("latin1")
    _check(isinstance(code, str), "a numpy dtype code is not a string")
    base = _NUMPY_CODES.get(code)
    if base is None:
        raise ValueError(f"numpy dtype '{code[:16]}' is not a plain numeric type")
    return _PendingDtype(base)


def _reconstruct(subtype: Any, shape: Any, code: Any) -> _PendingArray:
    _check(subtype is _NDARRAY, "numpy arrays must be plain numpy.ndarray")
    _check(shape == (0,) and code in (b"b", "b"), "an unusual numpy array header")
    return _PendingArray()


def _raw_bytes(raw: Any) -> bytes:
    if isinstance(raw, str):
        return raw.encode("latin1")  # Python 2 pickles keep array data in a str
    _check(isinstance(raw, (bytes, bytearray)), "numpy array data is not bytes")
    return bytes(raw)


def _numpy_scalar(dtype: Any, raw: Any = b"") -> np.generic:
    _check(isinstance(dtype, np.dtype) and not dtype.hasobject, "a numpy scalar's dtype")
    raw = _raw_bytes(raw)
    _check(len(raw) == dtype.itemsize, "a numpy scalar's data has the wrong length")
    return np.frombuffer(raw, dtype=dtype)[0]


def _build_dtype(pending: _PendingDtype, state: Any) -> np.dtype:
    _check(isinstance(state, tuple) and len(state) in (8, 9), "a numpy dtype state")
    version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
    _check(version in (3, 4), "a numpy dtype state of an unknown version")
    _check(
        subarray is None and names is None and fields is None and state[8:] in ((), (None,)),
        "a numpy dtype with fields or sub-arrays (only plain numeric types are data)",
    )
    _check(elsize == -1 and alignment == -1 and flags == 0, "a numpy dtype with odd flags")
    _check(order in ("<", ">", "|", "="), "a numpy dtype with an unknown byte order")
    return pending.base.newbyteorder(order) if order in "<>" else pending.base


def _build_array(state: Any, blobs: Dict[int, Any]) -> np.ndarray:
    """A writable numpy array in native byte order from its pickled state.

    Arrays whose state names the same data bytes (a pickle can reference one blob any number
    of times) are views of one copy of it, so their memory is that of the file's bytes, not
    of the number of references; such a shared blob can back only native-order arrays.
    A big-endian array is converted to native order, with the same values: torch reads only
    native order.
    """
    _check(isinstance(state, tuple) and len(state) in (4, 5), "a numpy array state")
    if len(state) == 5:
        _check(state[0] == 1, "a numpy array state of an unknown version")
        state = state[1:]
    shape, dtype, fortran, pickled = state
    _shape(shape, "a numpy array's shape")
    _check(isinstance(dtype, np.dtype) and not dtype.hasobject, "a numpy array's dtype")
    _check(type(fortran) in (bool, int), "a numpy array's order flag")
    raw = _raw_bytes(pickled)
    _check(
        len(raw) == math.prod(shape) * dtype.itemsize,
        f"numpy array data has {len(raw)} bytes but shape {shape} needs "
        f"{math.prod(shape) * dtype.itemsize}",
    )
    order: Literal["C", "F"] = "F" if fortran else "C"
    # Keyed by the pickled object itself (kept alive in the entry, so its id stays its own).
    seen = blobs.get(id(pickled))
    if not dtype.isnative:
        _check(seen is None, "numpy data shared by an array in another byte order")
        blobs[id(pickled)] = (pickled, None)  # no other array may share it
        flat = np.frombuffer(raw, dtype=dtype)
        return flat.reshape(shape, order=order).astype(dtype.newbyteorder("="))
    if seen is None:
        seen = blobs[id(pickled)] = (pickled, np.frombuffer(bytearray(raw), dtype=np.uint8))
    _check(seen[1] is not None, "numpy data shared by an array in another byte order")
    return seen[1].view(dtype).reshape(shape, order=order)


def build_pending(pending: Pending, state: Any, blobs: Dict[int, Any]) -> Any:
    """The real object for ``pending`` given its ``BUILD`` state, after checking it.

    Args:
        pending: the placeholder a constructor returned.
        state: its ``BUILD`` state.
        blobs: per load, the data copies arrays share (see :func:`_build_array`); it also
            keeps every blob alive while the load runs, so ids are not reused.

    Raises:
        ValueError: the state is not that of a plain numeric array or dtype.
    """
    if isinstance(pending, _PendingDtype):
        return _build_dtype(pending, state)
    return _build_array(state, blobs)


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    _check(isinstance(text, str), "_codecs.encode of something that is not a string")
    _check(encoding in ("latin1", "latin-1", "latin_1"), "_codecs.encode to an odd encoding")
    return text.encode("latin1")


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if isinstance(data, str):
        return bytearray(_encode(data, encoding or "latin1"))
    _check(isinstance(data, bytes) and encoding is None, "bytearray() of something not bytes")
    return bytearray(data)


def _hashables(items: Any, what: str) -> Any:
    _check(isinstance(items, (list, tuple)), f"{what}() of something not a list")
    _check(all(is_safe_key(k) for k in items), f"{what}() of members whose hashes may collide")
    return items


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    _check(all(type(v) in (int, float) for v in (real, imag)), "complex() of non-numbers")
    return complex(real, imag)


def _slice(*args: Any) -> slice:
    _check(
        1 <= len(args) <= 3 and all(a is None or _is_int(a) for a in args),
        "slice() of non-integers",
    )
    return slice(*args)


def _ordered_dict(items: Any = ()) -> collections.OrderedDict:
    _check(
        isinstance(items, (list, tuple))
        and all(isinstance(p, tuple) and len(p) == 2 and is_safe_key(p[0]) for p in items),
        "OrderedDict() of something not a list of (key, value) pairs",
    )
    return collections.OrderedDict(items)


def _counter(counts: Any = None) -> collections.Counter:
    # torch's MultiStepLR keeps its milestones in a Counter and pickles it as Counter(dict).
    counts = {} if counts is None else counts
    _check(type(counts) is dict, "Counter() of something not a dict")
    _check(
        all(type(v) in (int, float) for v in counts.values()),
        "Counter() of counts that are not numbers",
    )
    return collections.Counter(counts)


def numpy_globals() -> Dict[Tuple[str, str], Any]:
    """Globals of numpy arrays, numpy scalars and the builtins that plain pickles use."""
    out: Dict[Tuple[str, str], Any] = {
        ("collections", "OrderedDict"): Ctor("collections.OrderedDict", _ordered_dict),
        ("collections", "Counter"): Ctor("collections.Counter", _counter),
        ("_codecs", "encode"): Ctor("_codecs.encode", _encode),
        ("builtins", "bytearray"): Ctor("bytearray", _bytearray),
        ("builtins", "set"): Ctor("set", lambda items=(): set(_hashables(items, "set"))),
        ("builtins", "frozenset"): Ctor(
            "frozenset", lambda items=(): frozenset(_hashables(items, "frozenset"))
        ),
        ("builtins", "complex"): Ctor("complex", _complex),
        ("builtins", "slice"): Ctor("slice", _slice),
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): Ctor("numpy.dtype", _numpy_dtype),
    }
    # Python 2 pickles name the builtins module differently.
    for (mod, name), value in list(out.items()):
        if mod == "builtins":
            out[("__builtin__", name)] = value
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = Ctor("numpy _reconstruct", _reconstruct)
        out[(mod, "scalar")] = Ctor("numpy scalar", _numpy_scalar)
    return out
