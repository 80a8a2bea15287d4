"""The one restricted unpickler of torch checkpoints: it validates while it builds.

It runs the same opcode set as torch's ``weights_only`` unpickler (FORMATS.md P1.1: protocol 2/3
opcodes without INST, OBJ, EXT*, STACK_GLOBAL, text PERSID, FRAME, MEMOIZE...), but nothing is ever
imported, resolved or called: a GLOBAL is looked up by its exact ``module.name`` string in a table of
*inert* stand-ins (unknown names raise, nothing is substituted), and REDUCE / NEWOBJ / BUILD only
dispatch to this module's own handlers, which type-check their arguments.  What it builds is plain
data: dicts, lists, tuples, strings, numbers, and the records below (:class:`StorageRef`,
:class:`TensorRef`, :class:`Record` for TorchScript objects, ...).

Checks beyond torch's (which limits none of these, FORMATS.md P1.1): SETITEM(S) only on dicts and
APPEND(S) only on lists (exact types), dict keys only of types whose hash cannot be forced to collide
(str, bytes, bool, None, ints below 2**61), BUILD only on an OrderedDict or a TorchScript record, once,
with a dict; persistent ids only of the storage form; every tensor view bounds-checked against its
storage before it is formed; and limits on pickle bytes, objects and container slots, memo entries,
stack items and open MARKs.  Nesting depth is checked where structures are walked (``walk`` in
_torch_file.py), since a list can be deepened after it was linked into its parent.
"""

from __future__ import annotations

import pickletools
import struct
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

from mconv.plugins import FormatError, UnsupportedError, check_view_bounds, get_dtype

#: limits (a 70B state_dict pickles to ~100 KB; a training checkpoint with optimizer state to a few MB)
MAX_PICKLE_BYTES = 64 << 20
MAX_OBJECTS = 4_000_000          # objects built plus container slots filled
MAX_MEMO = 1_000_000
MAX_STACK = 1_000_000
MAX_MARKS = 1_000
MAX_GLOBAL_BYTES = 256
MAX_DIMS = 64
#: largest int accepted as a dict key: below the modulus of Python's int hash, so keys cannot collide
MAX_INT_KEY = (1 << 61) - 1

#: torch dtype attribute name -> mconv dtype name
TORCH_DTYPES: dict[str, str] = {
    "float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool",
    "uint16": "u16", "uint32": "u32", "uint64": "u64", "float8_e4m3fn": "f8_e4m3", "float8_e5m2": "f8_e5m2",
}
#: legacy typed storage classes (torch.<X>Storage) -> mconv dtype name
STORAGE_TYPES: dict[str, str] = {
    "DoubleStorage": "f64", "FloatStorage": "f32", "HalfStorage": "f16", "BFloat16Storage": "bf16",
    "LongStorage": "i64", "IntStorage": "i32", "ShortStorage": "i16", "CharStorage": "i8",
    "ByteStorage": "u8", "BoolStorage": "bool",
}
#: names torch's own weights_only loader accepts that mconv cannot represent
UNSUPPORTED: dict[str, str] = {
    **{f"torch.{n}": "complex tensors" for n in ("ComplexFloatStorage", "ComplexDoubleStorage", "complex32",
                                                 "complex64", "complex128", "chalf", "cfloat", "cdouble")},
    **{f"torch.{n}": "quantized tensors" for n in ("QInt8Storage", "QUInt8Storage", "QInt32Storage",
                                                   "QUInt4x2Storage", "QUInt2x4Storage", "qint8", "quint8",
                                                   "qint32", "quint4x2", "quint2x4", "per_tensor_affine",
                                                   "per_channel_affine", "per_channel_affine_float_qparams")},
    "torch._utils._rebuild_qtensor": "quantized tensors",
    "torch._utils._rebuild_sparse_tensor": "sparse tensors",
    "torch._utils._rebuild_sparse_csr_tensor": "sparse tensors",
    "torch._utils._rebuild_meta_tensor_no_storage": "tensors on the meta device (they have no data)",
    "torch._utils._rebuild_nested_tensor": "nested tensors",
    "torch._utils._rebuild_wrapper_subclass": "tensor subclasses",
    "torch._utils._rebuild_device_tensor_from_numpy": "numpy-backed device tensors",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "device tensors rebuilt from CPU tensors",
    "torch.storage.TypedStorage": "TypedStorage persistent ids (no dtype)",
}


# ==================================================================================================
# what the VM builds
# ==================================================================================================

@dataclass(frozen=True)
class StorageType:
    """torch.<X>Storage (dtype = mconv name) or torch.storage.UntypedStorage (dtype None: bytes)."""

    name: str
    dtype: Optional[str]


@dataclass(frozen=True)
class DTypeRef:
    name: str       # torch spelling, "torch.float32"
    dtype: str      # mconv name


@dataclass(frozen=True)
class Device:
    type: str
    index: Optional[int]


@dataclass(frozen=True)
class StorageSpec:
    """A validated persistent id: ('storage', type, key, location, numel[, view])."""

    storage_type: StorageType
    key: str
    location: str
    numel: int
    #: legacy format only: (view key, element offset, element count) of a storage view
    view: Optional[tuple[str, int, int]]


class StorageRef:
    """One storage of the file; the container fills in where its bytes are (``source``)."""

    __slots__ = ("key", "dtype", "numel", "nbytes", "source")

    def __init__(self, key: str, dtype: Optional[str], numel: int, source: Any = None) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.nbytes = numel * (get_dtype(dtype).type_size if dtype else 1)
        self.source = source


@dataclass(frozen=True)
class TensorRef:
    """A bounds-checked view: ``offset``/``strides`` in elements of ``dtype`` over ``storage``."""

    storage: StorageRef
    dtype: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    parameter: bool = False


class Record:
    """A TorchScript object (``__torch__.*``): its class name and BUILD state, never resolved."""

    __slots__ = ("qualname", "state")

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname
        self.state: Optional[dict[Any, Any]] = None


class PickledOrderedDict(OrderedDict):  # type: ignore[type-arg]
    """collections.OrderedDict; ``state`` holds what BUILD gave it (state_dict's ``_metadata``)."""

    state: Optional[dict[Any, Any]] = None


@dataclass(frozen=True)
class Global:
    """An allowlisted global: what REDUCE (``call``) and NEWOBJ (``new``) on it do, if anything."""

    name: str
    call: Optional[Callable[[tuple[Any, ...]], Any]] = None
    new: Optional[Callable[[tuple[Any, ...]], Any]] = None
    #: a rebuild function whose result is a tensor (accepted as _rebuild_from_type_v2's func)
    rebuilds_tensor: bool = False


# ==================================================================================================
# handlers (REDUCE / NEWOBJ targets)
# ==================================================================================================

def _bad(fn: str, msg: str) -> FormatError:
    return FormatError(f"{fn}: {msg}")


def _kind(x: Any) -> str:
    return type(x).__name__


def _int(fn: str, what: str, x: Any, minimum: int = 0) -> int:
    if type(x) is not int or x < minimum:
        raise _bad(fn, f"{what} must be an integer >= {minimum}, got {_kind(x) if type(x) is not int else x}")
    return x


def _ints(fn: str, what: str, x: Any) -> tuple[int, ...]:
    if type(x) not in (tuple, list):
        raise _bad(fn, f"{what} must be a tuple of integers, got {_kind(x)}")
    if len(x) > MAX_DIMS:
        raise _bad(fn, f"{what} has {len(x)} dimensions; the limit is {MAX_DIMS}")
    return tuple(_int(fn, what, v) for v in x)


def _empty_hooks(fn: str, x: Any) -> None:
    if x is not None and (type(x) not in (dict, PickledOrderedDict) or x):
        raise _bad(fn, "backward hooks must be an empty OrderedDict")


def _storage(fn: str, x: Any) -> StorageRef:
    if not isinstance(x, StorageRef):
        raise _bad(fn, f"storage argument is a {_kind(x)}, not a storage")
    return x


def _view(fn: str, storage: StorageRef, dtype: str, offset: Any, size: Any, stride: Any) -> TensorRef:
    offset = _int(fn, "storage offset", offset)
    shape = _ints(fn, "size", size)
    strides = _ints(fn, "stride", stride)
    itemsize = get_dtype(dtype).type_size
    try:
        check_view_bounds(shape, strides, offset, storage.nbytes // itemsize)
    except ValueError as e:
        raise _bad(fn, str(e))
    # a dimension of extent <= 1 never moves: its stride cannot matter (and may be any huge number)
    strides = tuple(0 if d <= 1 else s for d, s in zip(shape, strides))
    return TensorRef(storage, dtype, offset, shape, strides)


def _typed(fn: str, storage: StorageRef) -> str:
    if storage.dtype is None:
        raise _bad(fn, "an untyped storage needs _rebuild_tensor_v3 with an explicit dtype")
    return storage.dtype


def _rebuild_tensor(args: tuple[Any, ...]) -> TensorRef:
    fn = "torch._utils._rebuild_tensor"
    if len(args) != 4:
        raise _bad(fn, f"takes 4 arguments, got {len(args)}")
    st = _storage(fn, args[0])
    return _view(fn, st, _typed(fn, st), *args[1:4])


def _rebuild_tensor_v2(args: tuple[Any, ...]) -> TensorRef:
    fn = "torch._utils._rebuild_tensor_v2"
    if len(args) not in (6, 7):
        raise _bad(fn, f"takes 6 or 7 arguments, got {len(args)}")
    st = _storage(fn, args[0])
    _flag(fn, args[4])
    _empty_hooks(fn, args[5])
    _metadata(fn, args[6] if len(args) == 7 else None)
    return _view(fn, st, _typed(fn, st), *args[1:4])


def _rebuild_tensor_v3(args: tuple[Any, ...]) -> TensorRef:
    fn = "torch._utils._rebuild_tensor_v3"
    if len(args) not in (7, 8):
        raise _bad(fn, f"takes 7 or 8 arguments, got {len(args)}")
    st = _storage(fn, args[0])
    _flag(fn, args[4])
    _empty_hooks(fn, args[5])
    if not isinstance(args[6], DTypeRef):
        raise _bad(fn, f"dtype argument is a {_kind(args[6])}, not a torch dtype")
    _metadata(fn, args[7] if len(args) == 8 else None)
    return _view(fn, st, args[6].dtype, *args[1:4])


def _flag(fn: str, x: Any) -> None:
    if type(x) is not bool:
        raise _bad(fn, f"requires_grad must be a bool, got {_kind(x)}")


def _metadata(fn: str, x: Any) -> None:
    if x is not None and type(x) not in (dict, PickledOrderedDict):
        raise _bad(fn, f"tensor metadata must be a dict, got {_kind(x)}")


def _tensor(fn: str, x: Any) -> TensorRef:
    if not isinstance(x, TensorRef):
        raise _bad(fn, f"data argument is a {_kind(x)}, not a tensor")
    return x


def _rebuild_parameter(args: tuple[Any, ...]) -> TensorRef:
    fn = "torch._utils._rebuild_parameter"
    if len(args) != 3:
        raise _bad(fn, f"takes 3 arguments, got {len(args)}")
    t = _tensor(fn, args[0])
    _flag(fn, args[1])
    _empty_hooks(fn, args[2])
    return replace(t, parameter=True)


def _rebuild_parameter_with_state(args: tuple[Any, ...]) -> TensorRef:
    fn = "torch._utils._rebuild_parameter_with_state"
    if len(args) != 4:
        raise _bad(fn, f"takes 4 arguments, got {len(args)}")
    t = _rebuild_parameter(args[:3])
    _metadata(fn, args[3])  # the Parameter's __dict__: inert data, dropped
    return t


def _parameter_new(args: tuple[Any, ...]) -> TensorRef:
    fn = "torch.nn.parameter.Parameter"
    if len(args) not in (1, 2):
        raise _bad(fn, f"takes 1 or 2 arguments, got {len(args)}")
    if len(args) == 2:
        _flag(fn, args[1])
    return replace(_tensor(fn, args[0]), parameter=True)


TENSOR_TYPE = Global("torch.Tensor")
PARAMETER_TYPE = Global("torch.nn.parameter.Parameter", new=_parameter_new)


def _rebuild_from_type_v2(args: tuple[Any, ...]) -> TensorRef:
    fn = "torch._tensor._rebuild_from_type_v2"
    if len(args) != 4:
        raise _bad(fn, f"takes 4 arguments, got {len(args)}")
    func, new_type, inner, state = args
    if not (isinstance(func, Global) and func.rebuilds_tensor and func.call is not None):
        what = func.name if isinstance(func, Global) else f"a {_kind(func)}"
        raise _bad(fn, f"func argument is {what}, not a tensor rebuild function")
    if new_type is not TENSOR_TYPE and new_type is not PARAMETER_TYPE:
        raise _bad(fn, f"type argument must be torch.Tensor or torch.nn.parameter.Parameter, got {_kind(new_type)}")
    if type(inner) is not tuple:
        raise _bad(fn, f"args argument is a {_kind(inner)}, not a tuple")
    _metadata(fn, state)  # the tensor's __dict__: inert data, dropped
    t = _tensor(fn, func.call(inner))
    return replace(t, parameter=True) if new_type is PARAMETER_TYPE else t


def _ordered_dict(args: tuple[Any, ...]) -> PickledOrderedDict:
    if args:
        raise _bad("collections.OrderedDict", f"takes no arguments here, got {len(args)}")
    return PickledOrderedDict()


def _size(args: tuple[Any, ...]) -> tuple[int, ...]:
    if len(args) != 1:
        raise _bad("torch.Size", f"takes 1 argument, got {len(args)}")
    return _ints("torch.Size", "size", args[0])


def _device(args: tuple[Any, ...]) -> Device:
    fn = "torch.device"
    if not 1 <= len(args) <= 2 or type(args[0]) is not str or len(args[0]) > 64:
        raise _bad(fn, "takes a device name and an optional index")
    return Device(args[0], _int(fn, "device index", args[1]) if len(args) == 2 else None)


def _codecs_encode(args: tuple[Any, ...]) -> bytes:
    # protocol 2 pickles a bytes object as _codecs.encode(text, 'latin1')
    fn = "_codecs.encode"
    if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
        raise _bad(fn, "only encode(str, 'latin1') is accepted")
    try:
        return args[0].encode("latin-1")
    except UnicodeEncodeError:
        raise _bad(fn, "text has characters above U+00FF")


def _set(args: tuple[Any, ...]) -> list[Any]:
    # kept as a list: set members would have to be hashed
    if len(args) > 1 or (args and type(args[0]) is not list):
        raise _bad("builtins.set", "takes one list")
    return list(args[0]) if args else []


def _identity_list(name: str) -> Callable[[tuple[Any, ...]], Any]:
    def build(args: tuple[Any, ...]) -> Any:
        if len(args) != 1 or type(args[0]) is not list:
            raise _bad(name, "takes one list")
        return args[0]
    return build


def _restore_type_tag(args: tuple[Any, ...]) -> Any:
    if len(args) != 2 or type(args[1]) is not str:
        raise _bad("torch.jit._pickle.restore_type_tag", "takes a value and a type string")
    return args[0]


def _globals() -> dict[str, Global]:
    table: dict[str, Global] = {}

    def add(g: Global) -> None:
        table[g.name] = g

    add(Global("collections.OrderedDict", call=_ordered_dict, new=_ordered_dict))
    for name, fn in (("_rebuild_tensor", _rebuild_tensor), ("_rebuild_tensor_v2", _rebuild_tensor_v2),
                     ("_rebuild_tensor_v3", _rebuild_tensor_v3), ("_rebuild_parameter", _rebuild_parameter),
                     ("_rebuild_parameter_with_state", _rebuild_parameter_with_state)):
        add(Global(f"torch._utils.{name}", call=fn, rebuilds_tensor=True))
    add(Global("torch._tensor._rebuild_from_type_v2", call=_rebuild_from_type_v2, rebuilds_tensor=True))
    add(TENSOR_TYPE)
    add(PARAMETER_TYPE)
    add(Global("torch.Size", call=_size))
    add(Global("torch.device", call=_device))
    add(Global("_codecs.encode", call=_codecs_encode))
    add(Global("builtins.set", call=_set))
    return table


GLOBALS = _globals()
#: protocol 2 spells builtins with their Python 2 module (pickle's fix_imports), as torch maps them
GLOBALS["__builtin__.set"] = GLOBALS["builtins.set"]
#: module.name -> inert value of the global itself (pushed as is)
VALUES: dict[str, Any] = {
    **{f"torch.{k}": StorageType(f"torch.{k}", v) for k, v in STORAGE_TYPES.items()},
    **{f"torch.cuda.{k}": StorageType(f"torch.cuda.{k}", v) for k, v in STORAGE_TYPES.items()},
    "torch.storage.UntypedStorage": StorageType("torch.storage.UntypedStorage", None),
    **{f"torch.{k}": DTypeRef(f"torch.{k}", v) for k, v in TORCH_DTYPES.items()},
}
#: TorchScript archives only: the list builders of torch.jit._pickle are plain data
TORCHSCRIPT_GLOBALS: dict[str, Global] = {
    **{f"torch.jit._pickle.{n}": Global(f"torch.jit._pickle.{n}", call=_identity_list(f"torch.jit._pickle.{n}"))
       for n in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "build_genericlist")},
    "torch.jit._pickle.restore_type_tag": Global("torch.jit._pickle.restore_type_tag", call=_restore_type_tag),
}


@dataclass(frozen=True)
class RecordClass:
    """``__torch__.<qualname>`` in a TorchScript archive: NEWOBJ makes an inert :class:`Record`."""

    qualname: str


# ==================================================================================================
# the VM
# ==================================================================================================

#: opcode byte -> name, for messages
OPCODE_NAMES = {ord(info.code): info.name for info in pickletools.opcodes}


def _op_name(code: int) -> str:
    return OPCODE_NAMES.get(code, "unknown")


class _Input:
    """Bounded reads from bytes (zip member) or from a file position (legacy format)."""

    def __init__(self, data: Optional[bytes] = None, f: Any = None, start: int = 0, end: int = 0) -> None:
        self.data = data
        self.f = f
        self.pos = start
        self.end = len(data) if data is not None else end
        if f is not None:
            f.seek(start)

    def read(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise FormatError(f"{what} of {n} bytes runs past the end of the pickle", offset=self.pos)
        if self.data is not None:
            out = self.data[self.pos:self.pos + n]
        else:
            out = self.f.read(n)
            if len(out) != n:
                raise FormatError(f"{what} is truncated", offset=self.pos)
        self.pos += n
        return out

    def line(self, what: str) -> str:
        start = self.pos
        chunk = self.read(min(MAX_GLOBAL_BYTES, self.end - self.pos), what) if self.data is None else \
            self.data[self.pos:self.pos + MAX_GLOBAL_BYTES]
        nl = chunk.find(b"\n")
        if nl < 0:
            raise FormatError(f"{what} has no newline within {MAX_GLOBAL_BYTES} bytes", offset=start)
        self.pos = start + nl + 1
        if self.f is not None:
            self.f.seek(self.pos)
        try:
            return chunk[:nl].decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"{what} is not ASCII", offset=start)


class Unpickler:
    """Run one pickle.  ``load_storage`` turns a validated persistent id into a :class:`StorageRef`;
    ``legacy`` selects the 6-field persistent id of the pre-zip format; ``torchscript`` admits
    ``__torch__.*`` classes as inert records and torch.jit._pickle's list builders."""

    def __init__(self, load_storage: Callable[[StorageSpec], StorageRef], *, legacy: bool = False,
                 torchscript: bool = False) -> None:
        self.load_storage = load_storage
        self.legacy = legacy
        self.torchscript = torchscript
        self.objects = 0

    # -- entry points ---------------------------------------------------------------------------
    def loads(self, data: bytes) -> Any:
        """One pickle that must fill ``data`` exactly."""
        if len(data) > MAX_PICKLE_BYTES:
            raise FormatError(f"pickle of {len(data)} bytes exceeds the {MAX_PICKLE_BYTES}-byte limit")
        inp = _Input(data=data)
        obj = self._run(inp)
        if inp.pos != len(data):
            raise FormatError(f"{len(data) - inp.pos} bytes follow the pickle's STOP", offset=inp.pos)
        return obj

    def load_from(self, f: Any, start: int, file_size: int) -> tuple[Any, int]:
        """One pickle starting at ``start`` of an open file; returns (object, end position)."""
        inp = _Input(f=f, start=start, end=min(file_size, start + MAX_PICKLE_BYTES))
        obj = self._run(inp)
        return obj, inp.pos

    # -- helpers --------------------------------------------------------------------------------
    def _count(self, n: int, at: int) -> None:
        self.objects += n
        if self.objects > MAX_OBJECTS:
            raise FormatError(f"pickle builds more than {MAX_OBJECTS} objects and container slots", offset=at)

    def _run(self, inp: _Input) -> Any:
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        read = inp.read

        def pop() -> Any:
            if len(stack) <= (marks[-1] if marks else 0):
                raise FormatError("pickle stack underflow", offset=at)
            return stack.pop()

        def pop_mark() -> list[Any]:
            if not marks:
                raise FormatError("pickle opcode needs a MARK", offset=at)
            m = marks.pop()
            items = stack[m:]
            del stack[m:]
            return items

        def push(x: Any) -> None:
            if len(stack) >= MAX_STACK:
                raise FormatError(f"pickle stack exceeds {MAX_STACK} items", offset=at)
            stack.append(x)

        def new(x: Any) -> None:
            self._count(1, at)
            push(x)

        def top(what: str) -> Any:
            if len(stack) <= (marks[-1] if marks else 0):
                raise FormatError(f"{what} without a target", offset=at)
            return stack[-1]

        def put(idx: int) -> None:
            if not stack:
                raise FormatError("memo store from an empty stack", offset=at)
            if idx not in memo and len(memo) >= MAX_MEMO:
                raise FormatError(f"pickle memo exceeds {MAX_MEMO} entries", offset=at)
            memo[idx] = stack[-1]

        def get(idx: int) -> None:
            if idx not in memo:
                raise FormatError(f"memo entry {idx} is read before it is stored", offset=at)
            push(memo[idx])

        def setitems(target: Any, items: Sequence[Any]) -> None:
            if type(target) is not dict and type(target) is not PickledOrderedDict:
                raise FormatError(f"SETITEM on a {_kind(target)} (only dicts take items)", offset=at)
            self._count(len(items) // 2, at)
            for k, v in zip(items[::2], items[1::2]):
                tk = type(k)
                if tk is int and not -MAX_INT_KEY < k < MAX_INT_KEY:
                    raise FormatError(f"dict key {k} is out of range", offset=at)
                if not (tk is str or tk is bytes or tk is bool or tk is int or k is None):
                    raise FormatError(f"dict key of type {_kind(k)} is not allowed", offset=at)
                target[k] = v

        def append(target: Any, items: list[Any]) -> None:
            if type(target) is not list:
                raise FormatError(f"APPEND on a {_kind(target)} (only lists take appends)", offset=at)
            self._count(len(items), at)
            target.extend(items)

        at = inp.pos
        first = True
        while True:
            at = inp.pos
            op = read(1, "opcode")[0]
            if first and op != 0x80:
                raise FormatError("pickle does not start with PROTO", offset=at)
            first = False
            if op == 0x80:                                           # PROTO
                proto = read(1, "PROTO")[0]
                if proto not in (2, 3):
                    raise FormatError(f"pickle protocol {proto} is not supported (torch writes 2)", offset=at)
            elif op == 0x2E:                                         # STOP
                if len(stack) != 1 or marks:
                    raise FormatError(f"pickle stops with {len(stack)} stack items and {len(marks)} open MARKs",
                                      offset=at)
                return stack[0]
            elif op == 0x28:                                         # MARK
                if len(marks) >= MAX_MARKS:
                    raise FormatError(f"pickle opens more than {MAX_MARKS} MARKs", offset=at)
                marks.append(len(stack))
            elif op == 0x4B:                                         # BININT1
                push(read(1, "BININT1")[0])
            elif op == 0x4D:                                         # BININT2
                push(struct.unpack("<H", read(2, "BININT2"))[0])
            elif op == 0x4A:                                         # BININT
                push(struct.unpack("<i", read(4, "BININT"))[0])
            elif op == 0x8A:                                         # LONG1
                n = read(1, "LONG1")[0]
                new(int.from_bytes(read(n, "LONG1"), "little", signed=True))
            elif op == 0x47:                                         # BINFLOAT
                push(struct.unpack(">d", read(8, "BINFLOAT"))[0])
            elif op == 0x58:                                         # BINUNICODE
                n = struct.unpack("<I", read(4, "BINUNICODE"))[0]
                raw = read(n, "BINUNICODE")
                try:
                    new(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise FormatError("BINUNICODE string is not UTF-8", offset=at)
            elif op == 0x55:                                         # SHORT_BINSTRING
                n = read(1, "SHORT_BINSTRING")[0]
                raw = read(n, "SHORT_BINSTRING")
                try:
                    new(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise FormatError("SHORT_BINSTRING is not UTF-8", offset=at)
            elif op == 0x4E:                                         # NONE
                push(None)
            elif op == 0x88:                                         # NEWTRUE
                push(True)
            elif op == 0x89:                                         # NEWFALSE
                push(False)
            elif op == 0x29:                                         # EMPTY_TUPLE
                push(())
            elif op == 0x5D:                                         # EMPTY_LIST
                new([])
            elif op == 0x7D:                                         # EMPTY_DICT
                new({})
            elif op == 0x8F:                                         # EMPTY_SET
                new(set())
            elif op == 0x74:                                         # TUPLE
                items = pop_mark()
                self._count(len(items), at)
                new(tuple(items))
            elif op in (0x85, 0x86, 0x87):                           # TUPLE1/2/3
                n = op - 0x84
                items = [pop() for _ in range(n)][::-1]
                new(tuple(items))
            elif op == 0x61:                                         # APPEND
                value = pop()
                append(top("APPEND"), [value])
            elif op == 0x65:                                         # APPENDS
                items = pop_mark()
                append(top("APPENDS"), items)
            elif op == 0x73:                                         # SETITEM
                value = pop()
                key = pop()
                setitems(top("SETITEM"), [key, value])
            elif op == 0x75:                                         # SETITEMS
                items = pop_mark()
                if len(items) % 2:
                    raise FormatError("SETITEMS with an odd number of items", offset=at)
                setitems(top("SETITEMS"), items)
            elif op == 0x71:                                         # BINPUT
                put(read(1, "BINPUT")[0])
            elif op == 0x72:                                         # LONG_BINPUT
                put(struct.unpack("<I", read(4, "LONG_BINPUT"))[0])
            elif op == 0x68:                                         # BINGET
                get(read(1, "BINGET")[0])
            elif op == 0x6A:                                         # LONG_BINGET
                get(struct.unpack("<I", read(4, "LONG_BINGET"))[0])
            elif op == 0x63:                                         # GLOBAL
                module = inp.line("GLOBAL module")
                name = inp.line("GLOBAL name")
                new(self._global(module, name, at))
            elif op == 0x52:                                         # REDUCE
                args = pop()
                func = pop()
                new(self._call(func, args, at, "REDUCE"))
            elif op == 0x81:                                         # NEWOBJ
                args = pop()
                cls = pop()
                new(self._call(cls, args, at, "NEWOBJ"))
            elif op == 0x62:                                         # BUILD
                state = pop()
                self._build(top("BUILD"), state, at)
            elif op == 0x51:                                         # BINPERSID
                pid = pop()
                new(self._persistent(pid, at))
            else:
                raise FormatError(f"pickle opcode {_op_name(op)} ({op:#04x}) is not allowed", offset=at)

    # -- opcode semantics -------------------------------------------------------------------------
    def _global(self, module: str, name: str, at: int) -> Any:
        full = f"{module}.{name}"
        if full in GLOBALS:
            return GLOBALS[full]
        if full in VALUES:
            return VALUES[full]
        if self.torchscript:
            if full in TORCHSCRIPT_GLOBALS:
                return TORCHSCRIPT_GLOBALS[full]
            if (module == "__torch__" or module.startswith("__torch__.")) and name.isidentifier():
                return RecordClass(full)
        if full in UNSUPPORTED:
            raise UnsupportedError(f"{UNSUPPORTED[full]} ({full}) are not supported", offset=at)
        if module == "__torch__" or module.startswith("__torch__."):
            raise FormatError(f"global {full!r} (a TorchScript class) outside a TorchScript archive", offset=at)
        raise FormatError(f"global {full!r} is not allowed", offset=at)

    def _call(self, func: Any, args: Any, at: int, op: str) -> Any:
        if type(args) is not tuple:
            raise FormatError(f"{op} arguments are a {_kind(args)}, not a tuple", offset=at)
        if op == "NEWOBJ" and isinstance(func, RecordClass):
            if args:
                raise FormatError(f"NEWOBJ of TorchScript class {func.qualname} with arguments", offset=at)
            return Record(func.qualname)
        handler = None
        if isinstance(func, Global):
            handler = func.call if op == "REDUCE" else func.new
        if handler is None:
            what = func.name if isinstance(func, (Global, StorageType, DTypeRef)) else \
                func.qualname if isinstance(func, RecordClass) else f"a {_kind(func)}"
            raise FormatError(f"{op} on {what} is not allowed", offset=at)
        try:
            return handler(args)
        except FormatError as e:
            raise e.at(offset=at)

    def _build(self, inst: Any, state: Any, at: int) -> None:
        if type(inst) is not PickledOrderedDict and type(inst) is not Record:
            raise FormatError(f"BUILD on a {_kind(inst)} is not allowed", offset=at)
        if type(state) is not dict:
            raise FormatError(f"BUILD state is a {_kind(state)}, not a dict", offset=at)
        if inst.state is not None:
            raise FormatError(f"BUILD applied twice to one {_kind(inst)}", offset=at)
        self._count(len(state), at)
        inst.state = state

    def _persistent(self, pid: Any, at: int) -> StorageRef:
        n = 6 if self.legacy else 5
        if type(pid) is not tuple or not pid or pid[0] != "storage":
            raise FormatError("persistent id is not of the form ('storage', ...)", offset=at)
        if len(pid) != n:
            raise FormatError(f"persistent id has {len(pid)} fields, expected {n}", offset=at)
        stype, key, location, numel = pid[1:5]
        if not isinstance(stype, StorageType):
            raise FormatError(f"persistent id names a {_kind(stype)}, not a storage type", offset=at)
        if type(key) is not str or type(location) is not str or len(location) > 64:
            raise FormatError("persistent id key and location must be strings", offset=at)
        if type(numel) is not int or numel < 0:
            raise FormatError("persistent id element count must be an integer >= 0", offset=at)
        view = None
        if self.legacy and pid[5] is not None:
            v = pid[5]
            if (type(v) is not tuple or len(v) != 3 or type(v[0]) is not str
                    or type(v[1]) is not int or type(v[2]) is not int or v[1] < 0 or v[2] < 0):
                raise FormatError("persistent id view must be (key, offset, size)", offset=at)
            view = (v[0], v[1], v[2])
        try:
            return self.load_storage(StorageSpec(stype, key, location, numel, view))
        except FormatError as e:
            raise e.at(offset=at)
