"""A pickle machine that builds data and nothing else.

Python's unpicklers call whatever a file names. Restricting ``find_class`` is not enough:
``BUILD`` can still set attributes on the objects it returns (a function's ``__defaults__``,
a class's attributes), and the C unpickler sizes its memo from the file, so a few bytes can
ask for gigabytes. This machine is small and has no such doors:

* Only data opcodes run. Opcodes that create instances of arbitrary classes (``INST``,
  ``OBJ``, ``NEWOBJ``, extension codes, out-of-band buffers) are refused.
* A global resolves only through an allowlist of *constructors with checked arguments*
  (:mod:`.allowlist`), never to the function or class itself, so nothing global can be
  changed by the file.
* ``BUILD`` applies only to objects this load created and that expect it: numpy arrays and
  dtypes (whose state is checked before anything is built) and ``OrderedDict`` attributes
  such as ``_metadata``.
* The memo is a dict, strings are as long as the bytes that hold them, and the result is
  checked by :func:`check_tree`: no cycles, bounded depth, and a bounded number of paths,
  so that later walks over shared sub-structures cannot blow up.
"""

import codecs
import struct
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ...errors import CheckpointFormatError, UnsafeCheckpointError
from .allowlist import Ctor, Pending, build_pending, is_safe_key
from .tree_limits import TreeError, check_tree

__all__ = [
    "MAX_DEPTH",
    "PickleError",
    "MalformedPickle",
    "UnsafeGlobal",
    "pickle_error",
    "unpickle",
]

# The deepest structure a checkpoint may have, and how many nodes a full walk of it (shared
# sub-structures counted once per path) may visit per byte of pickle.
MAX_DEPTH = 100
_PATHS_PER_BYTE = 8
_MIN_PATHS = 100_000


class PickleError(Exception):
    """Base of the errors raised while running a pickle."""


class MalformedPickle(PickleError):
    """The pickle is corrupt or uses data this machine does not build."""

    def __init__(self, problem: str, pos: int = -1):
        self.problem, self.pos = problem, pos
        super().__init__(problem if pos < 0 else f"{problem} (at pickle byte {pos})")


class UnsafeGlobal(PickleError):
    """The pickle names a global outside the allowlist, i.e. it would run code."""

    def __init__(self, name: str):
        self.global_name = name
        super().__init__(f"global '{name}' is not allowed")


def pickle_error(path: str, err: Exception) -> Exception:
    """The project's error for a failure of :func:`unpickle` on the file ``path``."""
    if isinstance(err, UnsafeGlobal):
        return UnsafeCheckpointError(path, [err.global_name])
    return CheckpointFormatError(
        path,
        f"its pickle is corrupt or holds something that is not data: {err}.",
        "The file is damaged or was not written by torch.save; re-download or re-export it.",
    )


_MARK = object()  # a stack marker only this module can create
# The attributes a torch state dict carries (module versions); BUILD may set no other.
_STATE_DICT_ATTRIBUTES = ("_metadata",)
_unpack_i = struct.Struct("<i").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

# Opcodes that instantiate classes or use out-of-band data: never in a checkpoint of data.
_REFUSED = {
    ord("i"): "INST",
    ord("o"): "OBJ",
    0x81: "NEWOBJ",
    0x92: "NEWOBJ_EX",
    0x82: "EXT1",
    0x83: "EXT2",
    0x84: "EXT4",
    0x97: "NEXT_BUFFER",
    0x98: "READONLY_BUFFER",
}


def _is_dotted_name(s: str) -> bool:
    return bool(s) and all(part.isidentifier() for part in s.split("."))


def unpickle(
    data: bytes,
    *,
    find_global: Callable[[str, str], Any],
    persistent_load: Optional[Callable[[Any], Any]] = None,
    encoding: str = "ASCII",
    start: int = 0,
    max_paths: Optional[int] = None,
) -> Tuple[Any, int]:
    """Run the pickle that starts at ``data[start]``.

    Args:
        data: bytes holding the pickle (and possibly more after it).
        find_global: ``(module, name) -> object``; raises :class:`UnsafeGlobal` for names
            outside its allowlist. The objects it returns are :class:`~.allowlist.Ctor`
            constructors or immutable values.
        persistent_load: turns a persistent id into an object; ``None`` refuses them.
        encoding: how Python 2 ``str`` pickles decode (``"latin1"`` for old zoo files, or
            ``"bytes"``).
        start: offset of the pickle in ``data``.
        max_paths: the most nodes a full walk of the result may visit (default from the
            pickle's size).

    Returns:
        The object, and the offset just past the pickle's ``STOP``.

    Raises:
        UnsafeGlobal: a global outside the allowlist.
        MalformedPickle: anything else that is not a well-formed pickle of allowed data.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    try:
        obj, end = _run(data, start, find_global, persistent_load, encoding)
    except PickleError:
        raise
    except (IndexError, struct.error):
        raise MalformedPickle("the pickle is truncated") from None
    except MemoryError:
        raise MalformedPickle("the pickle asks for more memory than this machine has") from None
    except RecursionError:
        raise MalformedPickle("the pickle is nested too deeply") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RuntimeError) as e:
        raise MalformedPickle(f"invalid data ({type(e).__name__}: {e})") from None
    if max_paths is None:
        max_paths = max(_MIN_PATHS, _PATHS_PER_BYTE * (end - start))
    try:
        check_tree(obj, max_depth=MAX_DEPTH, max_paths=max_paths, pending_type=Pending)
    except TreeError as e:
        raise MalformedPickle(str(e)) from None
    return obj, end


def _decode_str(raw: bytes, encoding: str) -> Any:
    if encoding == "bytes":
        return raw
    return raw.decode(encoding, "strict")


def _run(data, pos, find_global, persistent_load, encoding):  # noqa: C901 (one dispatch loop)
    stack: List[Any] = []
    metastack: List[List[Any]] = []
    memo: Dict[int, Any] = {}
    pending_memo: Dict[int, List[int]] = {}  # id(pending object) -> memo keys holding it
    blobs: Dict[int, Any] = {}  # id(data bytes) -> the one copy arrays over them share
    n = len(data)

    def pop_mark() -> List[Any]:
        nonlocal stack
        if not metastack:
            raise MalformedPickle("MARK missing", pos)
        items = stack
        stack = metastack.pop()
        return items

    def memo_put(key: int, obj: Any) -> None:
        if key < 0:
            raise MalformedPickle("negative memo key", pos)
        memo[key] = obj
        if isinstance(obj, Pending):
            pending_memo.setdefault(id(obj), []).append(key)

    def memo_get(key: int) -> Any:
        try:
            return memo[key]
        except KeyError:
            raise MalformedPickle(f"memo key {key} was never stored", pos) from None

    def take(count: int) -> bytes:
        nonlocal pos
        if count < 0 or pos + count > n:
            raise MalformedPickle("the pickle is truncated", pos)
        out = data[pos : pos + count]
        pos += count
        return out

    def line() -> bytes:
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise MalformedPickle("the pickle is truncated", pos)
        out = data[pos:end]
        pos = end + 1
        return out

    def resolve(module: str, name: str) -> Any:
        if not (_is_dotted_name(module) and _is_dotted_name(name)):
            raise MalformedPickle(f"global name {module!r}.{name!r} is not a name", pos)
        return find_global(module, name)

    while True:
        if pos >= n:
            raise MalformedPickle("the pickle ends without STOP", pos)
        op = data[pos]
        pos += 1
        if op == 0x71:  # BINPUT
            memo_put(data[pos], stack[-1])
            pos += 1
        elif op == 0x68:  # BINGET
            stack.append(memo_get(data[pos]))
            pos += 1
        elif op == 0x28:  # MARK
            metastack.append(stack)
            stack = []
        elif op == 0x4B:  # BININT1
            stack.append(data[pos])
            pos += 1
        elif op == 0x58:  # BINUNICODE
            (size,) = _unpack_I(data, pos)
            pos += 4
            stack.append(take(size).decode("utf-8", "surrogatepass"))
        elif op == 0x8C:  # SHORT_BINUNICODE
            size = data[pos]
            pos += 1
            stack.append(take(size).decode("utf-8", "surrogatepass"))
        elif op == 0x74:  # TUPLE
            items = pop_mark()
            stack.append(tuple(items))
        elif op == 0x52:  # REDUCE
            args = stack.pop()
            func = stack[-1]
            if not isinstance(func, Ctor):
                raise MalformedPickle(f"REDUCE on a {type(func).__name__}, not a constructor", pos)
            if not isinstance(args, tuple):
                raise MalformedPickle("REDUCE arguments are not a tuple", pos)
            stack[-1] = func(*args)
        elif op == 0x72:  # LONG_BINPUT
            (key,) = _unpack_I(data, pos)
            pos += 4
            memo_put(key, stack[-1])
        elif op == 0x6A:  # LONG_BINGET
            (key,) = _unpack_I(data, pos)
            pos += 4
            stack.append(memo_get(key))
        elif op == 0x94:  # MEMOIZE
            memo_put(len(memo), stack[-1])
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(())
        elif op == 0x85:  # TUPLE1
            stack[-1] = (stack[-1],)
        elif op == 0x86:  # TUPLE2
            b = stack.pop()
            stack[-1] = (stack[-1], b)
        elif op == 0x87:  # TUPLE3
            c = stack.pop()
            b = stack.pop()
            stack[-1] = (stack[-1], b, c)
        elif op == 0x88:  # NEWTRUE
            stack.append(True)
        elif op == 0x89:  # NEWFALSE
            stack.append(False)
        elif op == 0x4E:  # NONE
            stack.append(None)
        elif op == 0x4A:  # BININT
            (v,) = _unpack_i(data, pos)
            pos += 4
            stack.append(v)
        elif op == 0x4D:  # BININT2
            (v,) = _unpack_H(data, pos)
            pos += 2
            stack.append(v)
        elif op == 0x8A:  # LONG1
            size = data[pos]
            pos += 1
            stack.append(int.from_bytes(take(size), "little", signed=True))
        elif op == 0x8B:  # LONG4
            (size,) = _unpack_i(data, pos)
            pos += 4
            if size < 0:
                raise MalformedPickle("LONG4 with a negative size", pos)
            stack.append(int.from_bytes(take(size), "little", signed=True))
        elif op == 0x47:  # BINFLOAT
            (v,) = _unpack_d(data, pos)
            pos += 8
            stack.append(v)
        elif op == 0x51:  # BINPERSID
            pid = stack.pop()
            stack.append(_persistent(persistent_load, pid, pos))
        elif op == 0x50:  # PERSID
            pid = line().decode("ascii")
            stack.append(_persistent(persistent_load, pid, pos))
        elif op == 0x7D:  # EMPTY_DICT
            stack.append({})
        elif op == 0x5D:  # EMPTY_LIST
            stack.append([])
        elif op == 0x75:  # SETITEMS
            items = pop_mark()
            d = stack[-1]
            if not isinstance(d, dict) or len(items) % 2:
                raise MalformedPickle("SETITEMS on something that is not a dict", pos)
            for i in range(0, len(items), 2):
                d[_key(items[i], pos)] = items[i + 1]
        elif op == 0x73:  # SETITEM
            v = stack.pop()
            k = stack.pop()
            d = stack[-1]
            if not isinstance(d, dict):
                raise MalformedPickle("SETITEM on something that is not a dict", pos)
            d[_key(k, pos)] = v
        elif op == 0x65:  # APPENDS
            items = pop_mark()
            lst = stack[-1]
            if not isinstance(lst, list):
                raise MalformedPickle("APPENDS on something that is not a list", pos)
            lst.extend(items)
        elif op == 0x61:  # APPEND
            v = stack.pop()
            lst = stack[-1]
            if not isinstance(lst, list):
                raise MalformedPickle("APPEND on something that is not a list", pos)
            lst.append(v)
        elif op == 0x62:  # BUILD
            state = stack.pop()
            inst = stack[-1]
            stack[-1] = _build(inst, state, memo, pending_memo, blobs, pos)
        elif op == 0x63:  # GLOBAL
            module = line().decode("utf-8")
            name = line().decode("utf-8")
            stack.append(resolve(module, name))
        elif op == 0x93:  # STACK_GLOBAL
            name = stack.pop()
            module = stack.pop()
            if not (isinstance(module, str) and isinstance(name, str)):
                raise MalformedPickle("STACK_GLOBAL names are not strings", pos)
            stack.append(resolve(module, name))
        elif op == 0x80:  # PROTO
            if data[pos] > 5:
                raise MalformedPickle(f"unsupported pickle protocol {data[pos]}", pos)
            pos += 1
        elif op == 0x95:  # FRAME: a length hint only
            pos += 8
        elif op == 0x2E:  # STOP
            if len(stack) != 1 or metastack:
                raise MalformedPickle("STOP with an unbalanced stack", pos)
            return stack[0], pos
        elif op == 0x30:  # POP
            if stack:
                stack.pop()
            else:
                pop_mark()
        elif op == 0x31:  # POP_MARK
            pop_mark()
        elif op == 0x32:  # DUP
            stack.append(stack[-1])
        elif op == 0x42:  # BINBYTES
            (size,) = _unpack_I(data, pos)
            pos += 4
            stack.append(take(size))
        elif op == 0x43:  # SHORT_BINBYTES
            size = data[pos]
            pos += 1
            stack.append(take(size))
        elif op == 0x8E:  # BINBYTES8
            (size,) = _unpack_Q(data, pos)
            pos += 8
            stack.append(take(size))
        elif op == 0x8D:  # BINUNICODE8
            (size,) = _unpack_Q(data, pos)
            pos += 8
            stack.append(take(size).decode("utf-8", "surrogatepass"))
        elif op == 0x96:  # BYTEARRAY8
            (size,) = _unpack_Q(data, pos)
            pos += 8
            stack.append(bytearray(take(size)))
        elif op == 0x54:  # BINSTRING (Python 2 str)
            (size,) = _unpack_i(data, pos)
            pos += 4
            stack.append(_decode_str(take(size), encoding))
        elif op == 0x55:  # SHORT_BINSTRING
            size = data[pos]
            pos += 1
            stack.append(_decode_str(take(size), encoding))
        elif op == 0x8F:  # EMPTY_SET
            stack.append(set())
        elif op == 0x90:  # ADDITEMS
            items = pop_mark()
            s = stack[-1]
            if not isinstance(s, set):
                raise MalformedPickle("ADDITEMS on something that is not a set", pos)
            s.update(_key(k, pos) for k in items)
        elif op == 0x91:  # FROZENSET
            items = pop_mark()
            stack.append(frozenset(_key(k, pos) for k in items))
        elif op == 0x6C:  # LIST
            items = pop_mark()
            stack.append(items)
        elif op == 0x64:  # DICT
            items = pop_mark()
            if len(items) % 2:
                raise MalformedPickle("DICT with an odd number of items", pos)
            stack.append({_key(items[i], pos): items[i + 1] for i in range(0, len(items), 2)})
        elif op == 0x70:  # PUT
            memo_put(int(line()), stack[-1])
        elif op == 0x67:  # GET
            stack.append(memo_get(int(line())))
        elif op == 0x49:  # INT
            text = line()
            stack.append(False if text == b"00" else True if text == b"01" else int(text))
        elif op == 0x4C:  # LONG
            text = line()
            stack.append(int(text[:-1] if text.endswith(b"L") else text))
        elif op == 0x46:  # FLOAT
            stack.append(float(line()))
        elif op == 0x53:  # STRING
            text = line()
            if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
                raise MalformedPickle("STRING without quotes", pos)
            raw = codecs.escape_decode(text[1:-1])[0]
            stack.append(_decode_str(raw, encoding))
        elif op == 0x56:  # UNICODE
            stack.append(line().decode("raw-unicode-escape"))
        elif op in _REFUSED:
            raise MalformedPickle(
                f"opcode {_REFUSED[op]} builds instances of arbitrary classes", pos
            )
        else:
            raise MalformedPickle(f"unknown opcode 0x{op:02x}", pos - 1)


def _persistent(persistent_load, pid: Any, pos: int) -> Any:
    if persistent_load is None:
        raise MalformedPickle("persistent ids are not used by this format", pos)
    return persistent_load(pid)


def _key(key: Any, pos: int) -> Any:
    # Checked before it is hashed: keys whose hashes collide make a dict quadratic to build.
    if not is_safe_key(key):
        raise MalformedPickle(
            f"a dict key of type {type(key).__name__} that is not a plain short value", pos
        )
    return key


def _build(
    inst: Any,
    state: Any,
    memo: Dict[int, Any],
    pending_memo: Mapping[int, List[int]],
    blobs: Dict[int, Any],
    pos: int,
) -> Any:
    """``BUILD``: only objects of this load that expect a state."""
    if isinstance(inst, Pending):
        built = build_pending(inst, state, blobs)
        for key in pending_memo.get(id(inst), ()):
            if memo.get(key) is inst:
                memo[key] = built
        return built
    if type(inst) is OrderedDict:
        # torch state dicts carry module versions as one attribute, ``_metadata``; any other
        # name could shadow a method (``items``) of the state dict it is set on.
        if not isinstance(state, dict) or not all(k in _STATE_DICT_ATTRIBUTES for k in state):
            raise MalformedPickle(
                "BUILD of an OrderedDict with attributes other than _metadata", pos
            )
        inst.__dict__.update(state)
        return inst
    raise MalformedPickle(f"BUILD on a {type(inst).__name__} is not allowed", pos)
