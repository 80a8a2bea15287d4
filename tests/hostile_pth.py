"""Hostile PyTorch checkpoints, built by hand (no torch): pickles that try to run code or to make a
reader allocate, loop or read out of bounds, and zip/legacy/tar containers that lie about themselves.

Each :class:`Case` writes one file and returns its path and the exact error line mconv must print
(``mconv: error: <message>``).  Payloads that would run code try to create ``marker`` (a file that
must never appear).  ``heavy`` cases would allocate or inflate gigabytes in a careless reader: run
them under an address-space limit.  Reusable by fuzzers and corpus builders: ``CASES``, the pickle
assembler (``op``, ``tup``, ``pid``, ``tensor_expr``, ``state_dict_pickle``, ``offset_of``) and the
container builders (``torch_zip``, ``raw_zip`` with lying ``Entry`` fields, ``legacy_file``).
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

PKL = "archive/data.pkl"


# ==================================================================================================
# pickle assembly (protocol 2 opcodes)
# ==================================================================================================

class op:
    PROTO2 = b"\x80\x02"
    MARK = b"("
    STOP = b"."
    TUPLE = b"t"
    TUPLE1, TUPLE2, TUPLE3 = b"\x85", b"\x86", b"\x87"
    EMPTY_TUPLE = b")"
    EMPTY_DICT = b"}"
    EMPTY_LIST = b"]"
    SETITEM = b"s"
    SETITEMS = b"u"
    APPEND = b"a"
    APPENDS = b"e"
    REDUCE = b"R"
    NEWOBJ = b"\x81"
    BUILD = b"b"
    BINPERSID = b"Q"
    NONE = b"N"
    TRUE = b"\x88"
    FALSE = b"\x89"

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return b"c" + f"{module}\n{name}\n".encode()

    @staticmethod
    def str(s: str) -> bytes:
        raw = s.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw

    @staticmethod
    def int(x: int) -> bytes:
        if 0 <= x < 256:
            return b"K" + bytes([x])
        if -(1 << 31) <= x < (1 << 31):
            return b"J" + struct.pack("<i", x)
        n = (x.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + x.to_bytes(n, "little", signed=True)

    @staticmethod
    def put(i: int) -> bytes:
        return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)

    @staticmethod
    def get(i: int) -> bytes:
        return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def tup(*items: bytes) -> bytes:
    return op.MARK + b"".join(items) + op.TUPLE


def ints(values: Sequence[int]) -> bytes:
    return tup(*(op.int(v) for v in values))


def pid(key: str = "0", storage: str = "FloatStorage", numel: int = 4, location: str = "cpu",
        legacy: bool = False) -> bytes:
    extra = op.NONE if legacy else b""
    return tup(op.str("storage"), op.glob("torch", storage), op.str(key), op.str(location), op.int(numel), extra) + \
        op.BINPERSID


def tensor_expr(key: str = "0", storage: str = "FloatStorage", numel: int = 4, offset: int = 0,
                size: Sequence[int] = (4,), stride: Sequence[int] = (1,), legacy: bool = False) -> bytes:
    """_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())"""
    return (op.glob("torch._utils", "_rebuild_tensor_v2")
            + tup(pid(key, storage, numel, legacy=legacy), op.int(offset), ints(size), ints(stride), op.FALSE,
                  op.glob("collections", "OrderedDict") + op.EMPTY_TUPLE + op.REDUCE)
            + op.REDUCE)


def state_dict_pickle(entries: Sequence[tuple[str, bytes]]) -> bytes:
    """{name: <expression>} as a protocol-2 pickle."""
    body = b"".join(op.str(k) + v for k, v in entries)
    return op.PROTO2 + op.EMPTY_DICT + op.MARK + body + op.SETITEMS + op.STOP


def offset_of(prefix_entries: Sequence[tuple[str, bytes]], name: str, inner: bytes = b"") -> int:
    """Pickle offset of entry ``name``'s value (plus ``len(inner)``) in ``state_dict_pickle``."""
    pos = len(op.PROTO2 + op.EMPTY_DICT + op.MARK)
    for k, v in prefix_entries:
        pos += len(op.str(k))
        if k == name:
            return pos + len(inner)
        pos += len(v)
    raise KeyError(name)


# ==================================================================================================
# containers
# ==================================================================================================

def torch_zip(pickle: bytes, storages: Optional[dict[str, bytes]] = None, folder: str = "archive",
              extra: Sequence[tuple[str, bytes]] = (), deflate: Sequence[str] = ()) -> bytes:
    """A zip laid out like torch.save's, built with the standard library's zipfile."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        members = [(f"{folder}/data.pkl", pickle), (f"{folder}/byteorder", b"little")]
        members += [(f"{folder}/data/{k}", v) for k, v in (storages or {}).items()]
        members += [(f"{folder}/version", b"3\n"), *extra]
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return buf.getvalue()


@dataclass
class Entry:
    """One member of :func:`raw_zip`; the ``*_override`` fields make its headers lie."""

    name: str
    data: bytes
    method: int = 0
    compressed: Optional[bytes] = None
    declared_size: Optional[int] = None
    local_name: Optional[str] = None
    header_offset: Optional[int] = None   # central directory's offset (default: where it is written)
    written: bool = True                  # False: only a central entry (its local header lives elsewhere)


def local_header(name: bytes, comp: bytes, crc: int, size: int, method: int = 0) -> bytes:
    return b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0x0800, method, 0, 0, crc, len(comp), size,
                                       len(name), 0) + name + comp


def raw_zip(entries: Sequence[Entry], zip64_entries: Optional[int] = None) -> bytes:
    """A zip written by hand: local headers with sizes (no descriptors), central directory, end
    record; ``zip64_entries`` adds zip64 end records claiming that many entries."""
    out = bytearray()
    central = bytearray()
    for e in entries:
        comp = e.compressed if e.compressed is not None else (
            zlib.compress(e.data)[2:-4] if e.method == 8 else e.data)
        crc = zlib.crc32(e.data)
        size = len(e.data) if e.declared_size is None else e.declared_size
        offset = len(out)
        if e.written:
            out += local_header((e.local_name or e.name).encode(), comp, crc, size, e.method)
        central += b"PK\x01\x02" + struct.pack(
            "<HHHHHHIIIHHHHHII", 20, 20, 0x0800, e.method, 0, 0, crc, len(comp), size, len(e.name.encode()), 0, 0,
            0, 0, 0, offset if e.header_offset is None else e.header_offset) + e.name.encode()
    cd_off = len(out)
    out += central
    n = len(entries)
    if zip64_entries is not None:
        z64 = len(out)
        out += b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, zip64_entries, zip64_entries,
                                           len(central), cd_off)
        out += b"PK\x06\x07" + struct.pack("<IQI", 0, z64, 1)
        n = 0xFFFF
    out += b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, n, n, len(central), cd_off, 0)
    return bytes(out)


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def legacy_file(obj_pickle: bytes, keys: Sequence[str], storages: Sequence[tuple[int, bytes]]) -> bytes:
    """The pre-zip format: magic, protocol 1001, sys_info, the object, the key list, then per storage
    ``int64 count`` + bytes (``storages`` gives the count written and the bytes)."""
    magic = op.PROTO2 + b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little") + op.STOP
    proto = op.PROTO2 + b"M" + struct.pack("<H", 1001) + op.STOP
    sys_info = op.PROTO2 + op.EMPTY_DICT + op.MARK + op.str("protocol_version") + b"M" + struct.pack("<H", 1001) + \
        op.str("little_endian") + op.TRUE + op.SETITEMS + op.STOP
    key_list = op.PROTO2 + op.EMPTY_LIST + op.MARK + b"".join(op.str(k) for k in keys) + op.APPENDS + op.STOP
    data = b"".join(struct.pack("<q", n) + raw for n, raw in storages)
    return magic + proto + sys_info + obj_pickle + key_list + data


# ==================================================================================================
# cases
# ==================================================================================================

F4 = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
_V2 = op.glob("torch._utils", "_rebuild_tensor_v2")
_HOOKS = op.glob("collections", "OrderedDict") + op.EMPTY_TUPLE + op.REDUCE


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str, str], tuple[str, str]]   # (directory, marker path) -> (file, expected message)
    heavy: bool = False


def _write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name + ".pth")
    with open(path, "wb") as f:
        f.write(data)
    return path


Entries = list[tuple[str, bytes]]


def _state(name: str, entries: Callable[[str], Entries], at: Optional[Callable[[Entries], int]], message: str,
           heavy: bool = False) -> Case:
    """A state_dict pickle (after a valid tensor "w") in a torch-like zip.  ``at`` gives the pickle
    offset the error is reported at; None: a structural error found after unpickling (no offset)."""
    def build(directory: str, marker: str) -> tuple[str, str]:
        ents = [*entries(marker), ("w", tensor_expr())]
        path = _write(directory, name, torch_zip(state_dict_pickle(ents), {"0": F4}))
        where = f"member {PKL!r}, offset {at(ents)}: " if at is not None else ""
        return path, f"{path}: {where}{message}"
    return Case(name, build, heavy)


def at_x(inner: bytes = b"") -> Callable[[Entries], int]:
    """Offset of entry x's value, plus ``len(inner)``."""
    return lambda ents: offset_of(ents, "x", inner)


def last_of_x(ents: Entries) -> int:
    """Offset of the last opcode of entry x's value (the outermost REDUCE)."""
    return offset_of(ents, "x") + len(dict(ents)["x"]) - 1


def _call(module: str, fn: str, marker: str) -> bytes:
    return op.glob(module, fn) + tup(op.str(f"touch {marker}")) + op.REDUCE


def _dag(level: int) -> bytes:
    """T0 = [], Ti = (T(i-1), T(i-1)) through the memo: a DAG of 2**level paths in a few bytes."""
    if level == 0:
        return op.EMPTY_LIST
    return op.MARK + _dag(level - 1) + op.put(level - 1) + op.get(level - 1) + op.TUPLE


def _persid_prefix(m: str) -> bytes:
    return tup(op.str("module"), op.str(f"touch {m}"))


CASES: list[Case] = [
    # -- code execution through globals ------------------------------------------------------------------
    _state("reduce_os_system", lambda m: [("x", _call("os", "system", m))], at_x(),
           "global 'os.system' is not allowed"),
    _state("reduce_posix_system", lambda m: [("x", _call("posix", "system", m))], at_x(),
           "global 'posix.system' is not allowed"),
    _state("builtins_eval", lambda m: [("x", op.glob("builtins", "eval")
                                        + tup(op.str(f"__import__('os').system('touch {m}')")) + op.REDUCE)],
           at_x(), "global 'builtins.eval' is not allowed"),
    _state("builtins_exec", lambda m: [("x", _call("builtins", "exec", m))], at_x(),
           "global 'builtins.exec' is not allowed"),
    _state("subprocess_popen", lambda m: [("x", _call("subprocess", "Popen", m))], at_x(),
           "global 'subprocess.Popen' is not allowed"),
    _state("getattr_chain", lambda m: [("x", op.glob("builtins", "getattr") + tup(op.glob("os", "path"), op.str("join"))
                                        + op.REDUCE)], at_x(), "global 'builtins.getattr' is not allowed"),
    _state("dotted_attribute", lambda m: [("x", _call("torch", "serialization.os.system", m))], at_x(),
           "global 'torch.serialization.os.system' is not allowed"),
    _state("torch_load_itself", lambda m: [("x", _call("torch", "load", m))], at_x(),
           "global 'torch.load' is not allowed"),
    _state("numpy_reconstruct", lambda m: [("x", op.glob("numpy.core.multiarray", "_reconstruct") + op.EMPTY_TUPLE
                                            + op.REDUCE)], at_x(),
           "global 'numpy.core.multiarray._reconstruct' is not allowed"),
    # payloads nested inside the arguments of allowed rebuild functions
    _state("nested_in_rebuild_args",
           lambda m: [("x", _V2 + op.MARK + _call("os", "system", m) + op.int(0) + ints((4,)) + ints((1,)) + op.FALSE
                       + _HOOKS + op.TUPLE + op.REDUCE)],
           at_x(_V2 + op.MARK), "global 'os.system' is not allowed"),
    _state("nested_in_parameter",
           lambda m: [("x", op.glob("torch._utils", "_rebuild_parameter") + tup(_call("os", "system", m), op.TRUE,
                                                                                _HOOKS) + op.REDUCE)],
           at_x(op.glob("torch._utils", "_rebuild_parameter") + op.MARK), "global 'os.system' is not allowed"),
    _state("nested_in_hooks",
           lambda m: [("x", _V2 + tup(pid(), op.int(0), ints((4,)), ints((1,)), op.FALSE, _call("os", "system", m))
                       + op.REDUCE)],
           at_x(_V2 + op.MARK + pid() + op.int(0) + ints((4,)) + ints((1,)) + op.FALSE),
           "global 'os.system' is not allowed"),
    _state("rebuild_with_string_storage",
           lambda m: [("x", _V2 + tup(op.str(f"touch {m}"), op.int(0), ints((4,)), ints((1,)), op.FALSE, _HOOKS)
                       + op.REDUCE)],
           last_of_x, "torch._utils._rebuild_tensor_v2: storage argument is a str, not a storage"),
    _state("rebuild_from_type_with_ordereddict",
           lambda m: [("x", op.glob("torch._tensor", "_rebuild_from_type_v2")
                       + tup(op.glob("collections", "OrderedDict"), op.glob("torch", "Tensor"), op.EMPTY_TUPLE, op.NONE)
                       + op.REDUCE)],
           last_of_x, "torch._tensor._rebuild_from_type_v2: func argument is collections.OrderedDict, not a tensor "
                      "rebuild function"),
    _state("reduce_on_storage_class", lambda m: [("x", op.glob("torch", "FloatStorage") + tup(op.int(4)) + op.REDUCE)],
           last_of_x, "REDUCE on torch.FloatStorage is not allowed"),
    _state("torchscript_class_outside_torchscript",
           lambda m: [("x", op.glob("__torch__", "M") + op.EMPTY_TUPLE + op.NEWOBJ)], at_x(),
           "global '__torch__.M' (a TorchScript class) outside a TorchScript archive"),
    # -- opcodes torch's unpickler does not run ---------------------------------------------------------
    _state("stack_global", lambda m: [("x", op.str("os") + op.str("system") + b"\x93")],
           at_x(op.str("os") + op.str("system")), "pickle opcode STACK_GLOBAL (0x93) is not allowed"),
    _state("inst", lambda m: [("x", op.MARK + op.str(f"touch {m}") + b"ios\nsystem\n")],
           lambda ents: last_of_x(ents) - len(b"os\nsystem\n"), "pickle opcode INST (0x69) is not allowed"),
    _state("obj", lambda m: [("x", op.MARK + op.EMPTY_LIST + b"o")], at_x(op.MARK + op.EMPTY_LIST),
           "pickle opcode OBJ (0x6f) is not allowed"),
    _state("ext1", lambda m: [("x", b"\x82\x01")], at_x(), "pickle opcode EXT1 (0x82) is not allowed"),
    _state("text_persid", lambda m: [("x", b"P0\n")], at_x(), "pickle opcode PERSID (0x50) is not allowed"),
    _state("newobj_ex", lambda m: [("x", op.glob("collections", "OrderedDict") + op.EMPTY_TUPLE + op.EMPTY_DICT
                                    + b"\x92")],
           lambda ents: last_of_x(ents), "pickle opcode NEWOBJ_EX (0x92) is not allowed"),
    # -- type-checked opcode targets --------------------------------------------------------------------
    _state("setitem_on_list", lambda m: [("x", op.EMPTY_LIST + op.str("a") + op.str("b") + op.SETITEM)], last_of_x,
           "SETITEM on a list (only dicts take items)"),
    _state("append_on_dict", lambda m: [("x", op.EMPTY_DICT + op.NONE + op.APPEND)], last_of_x,
           "APPEND on a dict (only lists take appends)"),
    _state("build_on_list", lambda m: [("x", op.EMPTY_LIST + op.EMPTY_DICT + op.BUILD)], last_of_x,
           "BUILD on a list is not allowed"),
    _state("build_on_tensor", lambda m: [("x", tensor_expr() + op.EMPTY_DICT + op.BUILD)], last_of_x,
           "BUILD on a TensorRef is not allowed"),
    _state("hash_flood_key", lambda m: [("x", op.EMPTY_DICT + op.int(1 << 62) + op.NONE + op.SETITEM)], last_of_x,
           "dict key 4611686018427387904 is out of range"),
    _state("persistent_id_not_storage", lambda m: [("x", _persid_prefix(m) + op.BINPERSID)], last_of_x,
           "persistent id is not of the form ('storage', ...)"),
    # -- storages and views --------------------------------------------------------------------------------
    _state("path_traversal_key", lambda m: [("x", _V2 + op.MARK + pid(key="../../../../etc/passwd"))], last_of_x,
           "storage record 'archive/data/../../../../etc/passwd' is not in the archive"),
    _state("view_out_of_bounds", lambda m: [("x", tensor_expr(size=(10,)))], last_of_x,
           "torch._utils._rebuild_tensor_v2: view reaches element 9 of a storage of 4 elements"),
    _state("view_offset_out_of_bounds", lambda m: [("x", tensor_expr(offset=3, size=(2,)))], last_of_x,
           "torch._utils._rebuild_tensor_v2: view reaches element 4 of a storage of 4 elements"),
    _state("view_stride_out_of_bounds", lambda m: [("x", tensor_expr(size=(2, 2), stride=(3, 1)))], last_of_x,
           "torch._utils._rebuild_tensor_v2: view reaches element 4 of a storage of 4 elements"),
    _state("negative_stride", lambda m: [("x", tensor_expr(stride=(-1,)))], last_of_x,
           "torch._utils._rebuild_tensor_v2: stride must be an integer >= 0, got -1"),
    _state("huge_view", lambda m: [("x", tensor_expr(size=(1 << 40, 1 << 40), stride=(1, 1)))], last_of_x,
           "torch._utils._rebuild_tensor_v2: view reaches element 2199023255550 of a storage of 4 elements",
           heavy=True),
    _state("empty_but_huge_shape", lambda m: [("x", tensor_expr(size=(0, 1 << 62, 1 << 62), stride=(1, 1, 1)))], None,
           f"tensor 'x': shape [0, {1 << 62}, {1 << 62}] is too large"),
    _state("size_lie", lambda m: [("x", _V2 + op.MARK + pid(numel=1000))], last_of_x,
           "storage '0' declares 1000 f32 elements (4000 bytes) but its record holds 16 bytes"),
    _state("huge_numel", lambda m: [("x", _V2 + op.MARK + pid(numel=1 << 62))], last_of_x,
           f"storage '0' declares {1 << 62} f32 elements ({1 << 64} bytes) but its record holds 16 bytes", heavy=True),
    _state("binunicode_length_lie", lambda m: [("x", b"X" + struct.pack("<I", 0xFFFFFFF0) + b"abc")],
           at_x(b"X\xf0\xff\xff\xff"), "BINUNICODE of 4294967280 bytes runs past the end of the pickle", heavy=True),
    # -- structure --------------------------------------------------------------------------------------
    _state("deep_nesting", lambda m: [("x", op.EMPTY_LIST * 100_000 + op.APPEND * 99_999)], None,
           f"object nests deeper than 64 levels at {('x' + '.0' * 63)!r}"),
    _state("memo_dag", lambda m: [("x", _dag(60))], None, "object has more than 500000 nodes"),
    _state("self_cycle", lambda m: [("x", op.EMPTY_DICT + op.put(200) + op.str("self") + op.get(200) + op.SETITEM)],
           None, "object contains itself at 'x.self'"),
    # the dict's own SETITEMS MARK is open too
    _state("too_many_marks", lambda m: [("x", op.MARK * 2000)], at_x(op.MARK * 999),
           "pickle opens more than 1000 MARKs"),
    _state("memo_read_before_store", lambda m: [("x", op.get(7))], at_x(), "memo entry 7 is read before it is stored"),
]


def _protocol4(directory: str, marker: str) -> tuple[str, str]:
    path = _write(directory, "protocol_4", torch_zip(b"\x80\x04" + op.EMPTY_DICT + op.STOP))
    return path, f"{path}: member {PKL!r}, offset 0: pickle protocol 4 is not supported (torch writes 2)"


CASES.append(Case("protocol_4", _protocol4))


# -- containers ---------------------------------------------------------------------------------------------

def _container(name: str, data: Callable[[], tuple[bytes, str]], heavy: bool = False) -> Case:
    """``data()`` returns the file's bytes and the message after ``<path>: ``."""
    def build(directory: str, marker: str) -> tuple[str, str]:
        blob, message = data()
        path = _write(directory, name, blob)
        return path, f"{path}: {message}"
    return Case(name, build, heavy)


def _valid_pickle(tensor: Optional[bytes] = None) -> bytes:
    return state_dict_pickle([("w", tensor if tensor is not None else tensor_expr())])


def _entries() -> list[Entry]:
    return [Entry(PKL, _valid_pickle()), Entry("archive/data/0", F4), Entry("archive/version", b"3\n")]


def _overlap() -> tuple[bytes, str]:
    # member data/0's local header and data lie inside member blob's data
    inner = local_header(b"archive/data/0", F4, zlib.crc32(F4), len(F4))
    pkl = Entry(PKL, _valid_pickle())
    blob_offset = 30 + len(PKL) + len(pkl.data)
    data_offset = blob_offset + 30 + len("archive/blob")
    entries = [pkl, Entry("archive/blob", inner), Entry("archive/data/0", F4, header_offset=data_offset, written=False)]
    return raw_zip(entries), f"member 'archive/data/0', offset {data_offset}: member overlaps member 'archive/blob'"


def _bomb_stream(total: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero = bytes(1 << 20)
    return b"".join(z.compress(zero) for _ in range(total >> 20)) + z.flush()


def _bomb_lie() -> tuple[bytes, str]:
    entries = _entries()
    entries[0] = Entry(PKL, b"", method=8, compressed=_bomb_stream(64 << 20), declared_size=100)
    return raw_zip(entries), f"member {PKL!r}: member inflates past its declared size of 100 bytes"


def _bomb_declared() -> tuple[bytes, str]:
    entries = _entries()
    entries[0] = Entry(PKL, b"", method=8, compressed=_bomb_stream(1 << 20), declared_size=3 << 30)
    return raw_zip(entries), f"member {PKL!r}: member declares {3 << 30} bytes; the limit for it is {64 << 20}"


def _compressed_storage_bomb() -> tuple[bytes, str]:
    numel = 1 << 29
    pkl = _valid_pickle(tensor_expr(numel=numel, size=(numel,)))
    persid = offset_of([("w", b"")], "w") + len(_V2 + op.MARK + pid(numel=numel)) - 1
    entries = [Entry(PKL, pkl), Entry("archive/data/0", b"", method=8, compressed=_bomb_stream(1 << 20),
                                      declared_size=numel * 4)]
    return raw_zip(entries), (f"member {PKL!r}, offset {persid}: compressed storages exceed {1 << 30} bytes "
                              "in total; re-save the checkpoint uncompressed (torch.save stores them uncompressed)")


def _legacy(numel: int, keys: Sequence[str], storages: Sequence[tuple[int, bytes]]) -> tuple[bytes, int]:
    """A legacy file with one tensor on storage '1'; also the offset where its storage data start."""
    obj = _valid_pickle(tensor_expr(key="1", numel=numel, size=(numel,), legacy=True))
    return legacy_file(obj, keys, storages), len(legacy_file(obj, keys, []))


def _legacy_huge() -> tuple[bytes, str]:
    numel = 1 << 40
    blob, at = _legacy(numel, ["1"], [(numel, F4)])
    return blob, f"offset {at}: storage '1' declares {numel * 4} bytes but only 16 remain in the file"


def _legacy_count() -> tuple[bytes, str]:
    blob, at = _legacy(4, ["1"], [(5, F4)])
    return blob, f"offset {at}: storage '1': the file says 5 elements, the pickle 4"


def _legacy_unlisted() -> tuple[bytes, str]:
    blob, _ = _legacy(4, [], [])
    return blob, "storage '1' is used by the pickle but has no data"


def _tar() -> tuple[bytes, str]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in (("sys_info", b"x"), ("pickle", b"y"), ("tensors", b"z"), ("storages", b"w")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue(), ("the legacy tar format of torch < 0.4 is not supported (torch refuses it too with "
                            "weights_only=True); re-save it with torch.save")


def _with(entries: list[Entry], message: str) -> Callable[[], tuple[bytes, str]]:
    return lambda: (raw_zip(entries), message)


def _local_mismatch() -> tuple[bytes, str]:
    entries = _entries()
    entries[0].local_name = "archive/data.pkX"
    return raw_zip(entries), (f"member {PKL!r}, offset 0: local header names b'archive/data.pkX', the central "
                              "directory b'archive/data.pkl'")


def _too_many() -> tuple[bytes, str]:
    blob = raw_zip(_entries(), zip64_entries=300_000)
    return blob, f"offset {len(blob) - 22}: zip declares 300000 entries; the limit is 200000"


CASES += [
    _container("duplicate_member", lambda: (raw_zip(_entries() + [Entry(PKL, b"\x80\x02N.")]),
                                            f"member {PKL!r}: duplicate member {PKL!r}")),
    _container("local_header_mismatch", _local_mismatch),
    _container("member_path_traversal", lambda: (raw_zip(_entries() + [Entry("archive/../../evil", b"x")]),
                                                 "member name 'archive/../../evil' is not a plain relative path")),
    _container("member_absolute", lambda: (raw_zip(_entries() + [Entry("/etc/passwd", b"x")]),
                                           "member name '/etc/passwd' is not a plain relative path")),
    _container("member_outside_folder", lambda: (raw_zip(_entries() + [Entry("other/x", b"x")]),
                                                 "member 'other/x': member is outside the archive folder 'archive/'")),
    _container("two_data_pkl", lambda: (raw_zip(_entries() + [Entry("archive/b/data.pkl", b"\x80\x02N.")]),
                                         "archive must hold exactly one <folder>/data.pkl (found 'archive/data.pkl', "
                                         "'archive/b/data.pkl')")),
    _container("overlapping_members", _overlap),
    _container("too_many_entries", _too_many),
    _container("zip_bomb_lie", _bomb_lie, heavy=True),
    _container("zip_bomb_declared", _bomb_declared, heavy=True),
    _container("compressed_storage_bomb", _compressed_storage_bomb, heavy=True),
    _container("legacy_huge_numel", _legacy_huge, heavy=True),
    _container("legacy_count_mismatch", _legacy_count),
    _container("legacy_storage_without_data", _legacy_unlisted),
    _container("legacy_tar", _tar),
    _container("not_a_checkpoint_zip", lambda: (raw_zip([Entry("archive/weights.npy", b"x")]),
                                                "archive must hold exactly one <folder>/data.pkl (found none)")),
]


def case(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


# ==================================================================================================
# more legacy containers
# ==================================================================================================

def _legacy_parts(obj: bytes, keys: Sequence[str]) -> list[bytes]:
    """The five pickles of a legacy file, separately (see :func:`legacy_file`)."""
    whole = legacy_file(obj, keys, [])
    magic = op.PROTO2 + b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little") + op.STOP
    proto = op.PROTO2 + b"M" + struct.pack("<H", 1001) + op.STOP
    rest = whole[len(magic) + len(proto):]
    sys_info = rest[: rest.index(op.STOP) + 1]
    key_list = whole[len(magic) + len(proto) + len(sys_info) + len(obj):]
    return [magic, proto, sys_info, obj, key_list]


def _legacy_edit(part: int, new: bytes, message: Callable[[list[bytes]], str],
                 obj: Optional[bytes] = None) -> Callable[[], tuple[bytes, str]]:
    """A valid one-tensor legacy file with pickle number ``part`` replaced by ``new``."""
    def data() -> tuple[bytes, str]:
        o = obj if obj is not None else _valid_pickle(tensor_expr(key="1", legacy=True))
        parts = _legacy_parts(o, ["1"])
        parts[part] = new
        return b"".join(parts) + struct.pack("<q", 4) + F4, message(parts)
    return data


def _offset(parts: list[bytes], index: int, inner: int = 0) -> int:
    return sum(len(p) for p in parts[:index]) + inner


def _legacy_code() -> tuple[bytes, str]:
    obj = state_dict_pickle([("x", _call("os", "system", "/nonexistent/MARKER")),
                             ("w", tensor_expr(key="1", legacy=True))])
    parts = _legacy_parts(obj, ["1"])
    return (legacy_file(obj, ["1"], [(4, F4)]),
            f"offset {_offset(parts, 3, offset_of([('x', b'')], 'x'))}: global 'os.system' is not allowed")


def _legacy_truncated_data() -> tuple[bytes, str]:
    blob, at = _legacy(4, ["1"], [(4, F4[:10])])
    return blob, f"offset {at}: storage '1' declares 16 bytes but only 10 remain in the file"


CASES += [
    _container("legacy_code_execution", _legacy_code),
    _container("legacy_truncated_storage", _legacy_truncated_data),
    _container("legacy_wrong_protocol",
               _legacy_edit(1, op.PROTO2 + b"M" + struct.pack("<H", 1000) + op.STOP,
                            lambda p: f"offset {_offset(p, 1)}: legacy protocol version is 1000, not 1001")),
    _container("legacy_protocol_not_int",
               _legacy_edit(1, op.PROTO2 + op.str("1001") + op.STOP,
                            lambda p: f"offset {_offset(p, 1)}: legacy protocol version is a str, not 1001")),
    _container("legacy_sys_info_not_dict",
               _legacy_edit(2, op.PROTO2 + op.EMPTY_LIST + op.STOP,
                            lambda p: f"offset {_offset(p, 2)}: legacy sys_info is not a dict")),
    _container("legacy_big_endian",
               _legacy_edit(2, op.PROTO2 + op.EMPTY_DICT + op.str("little_endian") + op.FALSE + op.SETITEM + op.STOP,
                            lambda p: f"offset {_offset(p, 2)}: big-endian checkpoints are not supported")),
    _container("legacy_key_list_not_strings",
               _legacy_edit(4, op.PROTO2 + op.EMPTY_LIST + op.int(1) + op.APPEND + op.STOP,
                            lambda p: f"offset {_offset(p, 4)}: legacy storage key list is not a list of strings")),
    _container("legacy_key_twice",
               _legacy_edit(4, op.PROTO2 + op.EMPTY_LIST + op.MARK + op.str("1") + op.str("1") + op.APPENDS + op.STOP,
                            lambda p: f"offset {_offset(p, 4)}: legacy storage key list names a storage twice")),
    _container("legacy_key_unused",
               _legacy_edit(4, op.PROTO2 + op.EMPTY_LIST + op.MARK + op.str("1") + op.str("2") + op.APPENDS + op.STOP,
                            lambda p: f"offset {_offset(p, 4)}: legacy storage key '2' is not used by the pickle")),
    _container("legacy_truncated_pickle", lambda: (_legacy(4, ["1"], [])[0][:60],
                                                   "offset 54: BINUNICODE of 13 bytes runs past the end of the "
                                                   "pickle")),
]


# ==================================================================================================
# a small valid model (the fuzz seeds' starting point), and the corpus / fuzz hooks
# ==================================================================================================

#: a llama small enough to fuzz quickly: head size 4, GQA 4:2, one block (as corpus.builders.TINY)
TINY = dict(n_vocab=32, n_embd=16, n_layer=1, n_head=4, n_head_kv=2, n_ff=24, n_ctx=64, norm_eps=1e-5,
            rope_theta=10000.0)
#: storage class -> (numpy dtype of the values, element size)
_STORAGE_NP = {"FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2"}


def _contiguous(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


@dataclass(frozen=True)
class Storage:
    key: str
    kind: str       # FloatStorage, HalfStorage, BFloat16Storage
    data: bytes

    @property
    def numel(self) -> int:
        return len(self.data) // (4 if self.kind == "FloatStorage" else 2)


def model_state(hp: Optional[dict] = None, *, legacy: bool = False, names: str = "meta",
                seed: int = 0) -> tuple[bytes, list[Storage]]:
    """(pickle of ``{name: tensor}``, storages in key order) for every tensor of ``hp``: f32, f16 and
    bf16 storages; attn_q and attn_k views into one shared storage (k at an offset), attn_output a
    transposed (column-major) view; the rest contiguous."""
    import numpy as np

    from mconv.core.arch.llama import expected_shapes
    from mconv.core.names import table

    hp = dict(TINY if hp is None else hp)
    rng = np.random.default_rng(seed)
    naming = table("llama")
    views: list[tuple[str, str, int, tuple[int, ...], tuple[int, ...]]] = []   # name, key, offset, size, stride
    storages: dict[str, Storage] = {}
    for i, (canonical, shape) in enumerate(expected_shapes(hp).items()):
        name = naming.from_canonical(canonical, names) or canonical
        kind = ("HalfStorage" if canonical.endswith("ffn_up.weight") else
                "BFloat16Storage" if canonical.endswith("ffn_gate.weight") else "FloatStorage")
        values = rng.standard_normal(shape).astype("<f4")
        stride = _contiguous(shape)
        if canonical.endswith("attn_output.weight"):
            values, stride = values.T.copy(), (1, shape[0])  # stored transposed, walked column by column
        raw = ((values.view("<u4") >> 16).astype("<u2").tobytes() if kind == "BFloat16Storage" else
               values.astype(_STORAGE_NP[kind]).tobytes())
        key = canonical.rsplit(".", 2)[0] + ".qk" if canonical.endswith(("attn_q.weight", "attn_k.weight")) else str(i)
        prev = storages.get(key, Storage(key, kind, b""))
        views.append((name, key, prev.numel, tuple(shape), stride))
        storages[key] = Storage(key, kind, prev.data + raw)
    exprs = [(name, tensor_expr(key, storages[key].kind, storages[key].numel, offset, size, stride, legacy=legacy))
             for name, key, offset, size, stride in views]
    return state_dict_pickle(exprs), list(storages.values())


def model_args(hp: Optional[dict] = None) -> bytes:
    """llama2.c train.py's ``model_args`` dict for ``hp`` (Meta key names), as pickle opcodes."""
    hp = dict(TINY if hp is None else hp)
    items = [("dim", hp["n_embd"]), ("n_layers", hp["n_layer"]), ("n_heads", hp["n_head"]),
             ("n_kv_heads", hp["n_head_kv"]), ("vocab_size", hp["n_vocab"]), ("hidden_dim", hp["n_ff"]),
             ("multiple_of", 8), ("max_seq_len", hp["n_ctx"])]
    body = b"".join(op.str(k) + op.int(v) for k, v in items)
    body += op.str("norm_eps") + b"G" + struct.pack(">d", hp["norm_eps"]) + op.str("dropout") + b"G" + bytes(8)
    return op.EMPTY_DICT + op.MARK + body + op.SETITEMS


def checkpoint_zip(hp: Optional[dict] = None) -> bytes:
    """A llama2.c-style training checkpoint: ``{'model': state_dict, 'model_args': {...}, 'iter_num': 7}``
    in a torch zip (self-contained: the hparams are in the file)."""
    state, storages = model_state(hp)
    inner = state[len(op.PROTO2):-1]   # the state_dict expression without PROTO and STOP
    pkl = op.PROTO2 + op.EMPTY_DICT + op.MARK + op.str("model") + inner + op.str("model_args") + model_args(hp) + \
        op.str("iter_num") + op.int(7) + op.SETITEMS + op.STOP
    return torch_zip(pkl, {s.key: s.data for s in storages})


def legacy_model(hp: Optional[dict] = None) -> bytes:
    """A bare state_dict of ``hp`` in the legacy (pre-zip) format (its hparams come from params.json)."""
    state, storages = model_state(hp, legacy=True)
    return legacy_file(state, [s.key for s in storages], [(s.numel, s.data) for s in storages])


def _meta_params(hp: Optional[dict] = None) -> bytes:
    import json

    hp = dict(TINY if hp is None else hp)
    return json.dumps({"dim": hp["n_embd"], "n_layers": hp["n_layer"], "n_heads": hp["n_head"],
                       "n_kv_heads": hp["n_head_kv"], "vocab_size": -1, "multiple_of": 8,
                       "norm_eps": hp["norm_eps"]}).encode()


def meta_dir(root: str, shards: int = 2) -> str:
    """A Meta directory: consolidated.0N.pth model-parallel shards (zip) + params.json."""
    import numpy as np

    from mconv.core.arch.llama import expected_shapes
    from mconv.core.names import table

    os.makedirs(root, exist_ok=True)
    naming = table("llama")
    rng = np.random.default_rng(5)
    full = {c: rng.standard_normal(s).astype("<f4") for c, s in expected_shapes(dict(TINY)).items()}
    for i in range(shards):
        entries, storages = [], {}
        for j, (canonical, values) in enumerate(full.items()):
            name = naming.from_canonical(canonical, "meta") or canonical
            axis1 = canonical.startswith("token_embd") or canonical.endswith(("attn_output.weight",
                                                                              "ffn_down.weight"))
            if values.ndim == 1:
                part = values
            else:
                part = np.split(values, shards, axis=1 if axis1 else 0)[i]
            part = np.ascontiguousarray(part)
            entries.append((name, tensor_expr(str(j), numel=part.size, size=part.shape,
                                              stride=_contiguous(part.shape))))
            storages[str(j)] = part.tobytes()
        with open(os.path.join(root, f"consolidated.{i:02d}.pth"), "wb") as f:
            f.write(torch_zip(state_dict_pickle(entries), storages))
    with open(os.path.join(root, "params.json"), "wb") as f:
        f.write(_meta_params())
    return root


# -- fuzzing: where the integers are, and the pickle inside its zip ------------------------------------

def pickle_int_fields(data: bytes, start: int = 0, pickles: int = 1) -> list[tuple[int, int]]:
    """(offset, size) of every integer argument (ints, lengths, memo indices) of ``pickles``
    consecutive pickles from ``start``; as far as the bytes parse."""
    import pickletools
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)   # pickletools on escapes of mutated text opcodes
    sizes = {-2: 1, -3: 4, -4: 4, -5: 8}   # length prefixes: TAKEN_FROM_ARGUMENT1/4/4U/8U
    fields: list[tuple[int, int]] = []
    pos = start
    for _ in range(pickles):
        stream = io.BytesIO(data)
        stream.seek(pos)
        try:
            for opcode, _arg, at in pickletools.genops(stream):
                n = opcode.arg.n if opcode.arg is not None else 0
                if n in (1, 2, 4, 8):
                    fields.append((at + 1, n))
                elif n in sizes:
                    fields.append((at + 1, sizes[n]))
                if opcode.name == "STOP":
                    pos = stream.tell()
        except Exception:  # noqa: BLE001 - a mutated pickle: the fields found so far
            break
    return fields


def zip_int_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the size, offset, count and length fields of every zip record found."""
    layout = {b"PK\x03\x04": [(8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
              b"PK\x01\x02": [(10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (42, 4)],
              b"PK\x05\x06": [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
              b"PK\x06\x06": [(4, 8), (24, 8), (32, 8), (40, 8), (48, 8)],
              b"PK\x06\x07": [(8, 8)],
              b"PK\x07\x08": [(4, 4), (8, 4), (12, 4)]}
    fields = []
    for sig, offsets in layout.items():
        at = data.find(sig)
        while at >= 0 and len(fields) < 4096:
            fields += [(at + o, s) for o, s in offsets]
            at = data.find(sig, at + 4)
    return fields


#: globals a mutated pickle may name instead of the one it had
PICKLE_GLOBALS = ("torch FloatStorage", "torch HalfStorage", "torch BFloat16Storage", "torch LongStorage",
                  "torch BoolStorage", "torch UntypedStorage", "torch ByteStorage", "torch._utils _rebuild_tensor",
                  "torch._utils _rebuild_tensor_v3", "torch._utils _rebuild_parameter", "collections OrderedDict",
                  "torch._tensor _rebuild_from_type_v2", "torch Tensor", "torch float16", "torch bfloat16",
                  "builtins set", "os system", "__torch__ M", "torch.nn.modules.linear Linear")


def pickle_retoken(data: bytes, k: int, literal: bytes) -> Optional[bytes]:
    """Replace the k-th int, string or global of a pickle: ints and strings by the literal's value
    (when it is one), globals by one of ``PICKLE_GLOBALS`` picked by the literal."""
    import json
    import pickletools
    import zlib as _zlib

    spots = []
    try:
        for opcode, arg, at in pickletools.genops(data):
            if opcode.name in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG", "BINUNICODE",
                               "SHORT_BINUNICODE", "BINSTRING", "SHORT_BINSTRING", "GLOBAL"):
                spots.append((opcode.name, at))
    except Exception:  # noqa: BLE001 - the parsed part of a mutated pickle
        pass
    if not spots:
        return None
    name, at = spots[k % len(spots)]
    end = at + 1
    stream = io.BytesIO(data)
    stream.seek(at)
    try:
        for _opcode, _arg, _at in pickletools.genops(stream):
            end = stream.tell()
            break
    except Exception:  # noqa: BLE001
        return None
    if name == "GLOBAL":
        module, _, attr = PICKLE_GLOBALS[_zlib.crc32(literal) % len(PICKLE_GLOBALS)].partition(" ")
        new = op.glob(module, attr)
    else:
        try:
            value = json.loads(literal)
        except (ValueError, RecursionError):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return None
        if isinstance(value, int):
            new = op.int(value)
        else:  # lone surrogates too: a BINUNICODE that is not UTF-8
            raw = value.encode("utf-8", "surrogatepass")
            new = b"X" + struct.pack("<I", len(raw)) + raw
    return data[:at] + new + data[end:]


def _zip_layer(member: str) -> Callable[[bytes], tuple[bytes, Callable[[bytes], bytes]]]:
    """Fuzz the member ``member`` of a zip: (its bytes, rebuild the zip around new bytes with
    correct sizes and CRCs)."""
    def layer(blob: bytes) -> tuple[bytes, Callable[[bytes], bytes]]:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            members = [(i, z.read(i)) for i in z.infolist()]

        def repack(payload: bytes) -> bytes:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for info, data in members:
                    z.writestr(info, payload if info.filename == member else data)
            return buf.getvalue()
        return dict((i.filename, d) for i, d in members)[member], repack
    return layer


def fuzz_seeds() -> list:
    from corpus.seeds import Seed, json_retoken

    def zip_file(d: str) -> tuple[str, str]:
        path = os.path.join(d, "ckpt.pth")
        with open(path, "wb") as f:
            f.write(checkpoint_zip())
        return path, path

    def legacy(d: str) -> tuple[str, str]:
        path = os.path.join(d, "model.pth")
        with open(path, "wb") as f:
            f.write(legacy_model())
        with open(os.path.join(d, "params.json"), "wb") as f:
            f.write(_meta_params())
        return path, path

    def shards(d: str) -> tuple[str, str]:
        root = meta_dir(os.path.join(d, "meta"))
        return root, os.path.join(root, "consolidated.01.pth")

    def params(d: str) -> tuple[str, str]:
        root = meta_dir(os.path.join(d, "meta"))
        return root, os.path.join(root, "params.json")

    return [
        Seed("pth", "zip", zip_file, zip_int_fields),
        Seed("pth", "zip-pickle", zip_file, pickle_int_fields, pickle_retoken, layer=_zip_layer(PKL)),
        Seed("pth", "legacy", legacy, lambda data: pickle_int_fields(data, 0, 5), pickle_retoken),
        Seed("pth", "meta-shard", shards, zip_int_fields),
        Seed("pth", "meta-shard-pickle", shards, pickle_int_fields, pickle_retoken,
             layer=_zip_layer(PKL)),
        Seed("pth", "meta-params.json", params, retoken=json_retoken),
    ]


def corpus_cases() -> list:
    """Every case above for the subprocess corpus (legacy containers counted apart), with its exact
    message; a payload that ran would create MARKER in the case's directory, which the corpus
    runner reports as a changed input tree."""
    from corpus.make_corpus import Case as CorpusCase

    def build(c: Case) -> Callable[[str], tuple[str, str]]:
        return lambda d: c.build(d, os.path.join(d, "MARKER"))

    return [CorpusCase("pth-legacy" if c.name.startswith("legacy") else "pth", c.name, build(c), "")
            for c in CASES]
