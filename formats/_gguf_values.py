"""GGUF metadata values: the gguf_type enum, and reading / writing one value (FORMATS.md G(a)).

Scalars are little-endian; a string is a u64 length + bytes; an array is i32 element type + u64
count + packed elements (strings each with their length, bools one byte each).  Reading bounds every
length and count by gguf.cpp's limits and by the bytes left, before allocating anything.

Values read keep their GGUF type as numpy scalars / arrays (np.uint32, np.float32 ...), string
arrays are lists of str, nested arrays lists of arrays; the writer maps them back to the same types.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Iterable

import numpy as np

from mconv.plugins import MAX_TOKENS, UnsupportedError

from ._binary import Cursor

#: gguf.cpp's limits for one string and one array, also checked against the bytes left
MAX_STRING = 1 << 30
MAX_ARRAY = 1 << 30
#: mconv's own cap on the elements of one string array (each becomes a Python object of about 60
#: bytes: 2^24 two-byte strings, a 168 MB file, would take over a GiB); real vocabularies have at
#: most a few hundred thousand tokens and merges
MAX_STRING_ARRAY = MAX_TOKENS
#: arrays inside arrays (gguf-py can write them; the C reader rejects them)
MAX_NESTING = 4
# gguf_type value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
TYPE_NAMES = {U8: "u8", I8: "i8", U16: "u16", I16: "i16", U32: "u32", I32: "i32", F32: "f32", BOOL: "bool",
              STRING: "string", ARRAY: "array", U64: "u64", I64: "i64", F64: "f64"}
#: scalar value types -> little-endian numpy dtype
SCALARS: dict[int, np.dtype] = {
    U8: np.dtype("u1"), I8: np.dtype("i1"), U16: np.dtype("<u2"), I16: np.dtype("<i2"), U32: np.dtype("<u4"),
    I32: np.dtype("<i4"), F32: np.dtype("<f4"), BOOL: np.dtype("u1"), U64: np.dtype("<u8"), I64: np.dtype("<i8"),
    F64: np.dtype("<f8"),
}
#: numpy scalar kind -> value type (for writing metadata that came from a GGUF file)
NUMPY_TO_TYPE: dict[np.dtype, int] = {np.dtype(v).newbyteorder("="): k for k, v in SCALARS.items() if k != BOOL}
NUMPY_TO_TYPE[np.dtype(bool)] = BOOL
#: smallest encoding of one element of each type (bounds element counts before reading)
MIN_ELEM_BYTES = {**{k: v.itemsize for k, v in SCALARS.items()}, STRING: 8, ARRAY: 12}
def read_string(cur: Cursor, what: str) -> bytes:
    """A GGUF string: u64 length (at most 1 GiB and the bytes left) + bytes, no terminator."""
    at = cur.pos
    n = cur.u64(f"length of {what}")
    if n > MAX_STRING:
        raise cur.error(f"{what} has length {n}, over the 1 GiB limit", at)
    return cur.take(n, what, at)


def text(raw: bytes) -> str:
    """GGUF strings are UTF-8 in practice; anything else survives a round trip through surrogates."""
    return raw.decode("utf-8", errors="surrogateescape")


def read_value(cur: Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    if vtype in SCALARS:
        raw = cur.array(SCALARS[vtype], 1, f"value of {key!r}")
        if vtype == BOOL:
            return bool(raw[0])
        return raw[0]
    if vtype == STRING:
        return text(read_string(cur, f"value of {key!r}"))
    if vtype == ARRAY:
        at = cur.pos
        etype = cur.i32(f"element type of {key!r}")
        count = cur.u64(f"element count of {key!r}")
        if etype not in MIN_ELEM_BYTES:
            raise cur.error(f"array {key!r} has unknown element type {etype}", at)
        label = TYPE_NAMES[etype]
        if count > MAX_ARRAY:
            raise cur.error(f"array {key!r} has {count} elements, over the 2^30 limit", at)
        need = count * MIN_ELEM_BYTES[etype]
        left = cur.size - cur.pos
        if need > left:
            raise cur.error(f"array {key!r} of {count} {label} elements needs at least {need} bytes but only "
                            f"{left} are left in the file", at)
        if etype in SCALARS:
            values = cur.array(SCALARS[etype], count, f"array {key!r}")
            return values.astype(bool) if etype == BOOL else values
        if count > MAX_STRING_ARRAY:
            raise cur.error(f"array {key!r} has {count} {label} elements, over mconv's limit of "
                            f"{MAX_STRING_ARRAY}", at)
        if etype == STRING:
            return [text(read_string(cur, f"element {i} of {key!r}")) for i in range(count)]
        if depth + 1 >= MAX_NESTING:
            raise cur.error(f"array {key!r} nests arrays more than {MAX_NESTING} levels deep", at)
        return [read_value(cur, ARRAY, key, depth + 1) for _ in range(count)]
    raise cur.error(f"key {key!r} has unknown value type {vtype}", cur.pos - 4)


def pack_string(value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else value.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def _int_type(values: Iterable[int]) -> int:
    lo = hi = 0
    for v in values:
        lo, hi = min(lo, v), max(hi, v)
    if -(1 << 31) <= lo and hi < (1 << 31):
        return I32
    if -(1 << 63) <= lo and hi < (1 << 63):
        return I64
    if lo >= 0 and hi < (1 << 64):
        return U64
    raise UnsupportedError(f"integer {hi if hi >= (1 << 63) else lo} does not fit a GGUF integer type")


def infer_type(value: Any) -> tuple[int, Any]:
    """(value type, normalized value) for a metadata value: numpy scalars and arrays keep their own
    type (that is how metadata read from a GGUF file round-trips); Python ints are i32 (or i64/u64
    when they do not fit), floats f64 (no precision lost), lists become arrays."""
    if isinstance(value, (bool, np.bool_)):
        return BOOL, bool(value)
    if isinstance(value, np.generic) and value.dtype.newbyteorder("=") in NUMPY_TO_TYPE:
        return NUMPY_TO_TYPE[value.dtype.newbyteorder("=")], value
    if isinstance(value, np.floating):
        return F32, np.float32(value)
    if isinstance(value, int):
        return _int_type([value]), value
    if isinstance(value, float):
        return F64, value
    if isinstance(value, (str, bytes)):
        return STRING, value
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            value = value.reshape(-1)
        dt = value.dtype.newbyteorder("=")
        if dt == np.float16:
            return ARRAY, value.astype(np.float32)
        if dt not in NUMPY_TO_TYPE:
            raise UnsupportedError(f"arrays of {value.dtype} have no GGUF type")
        return ARRAY, value
    if isinstance(value, (list, tuple)):
        items = list(value)
        if all(isinstance(v, (str, bytes)) for v in items):
            return ARRAY, items
        if all(isinstance(v, (bool, np.bool_)) for v in items):
            return ARRAY, np.array(items, dtype=bool)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
            t = _int_type(int(v) for v in items)
            return ARRAY, np.array(items, dtype={I32: np.int32, I64: np.int64, U64: np.uint64}[t])
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in items):
            return ARRAY, np.array(items, dtype=np.float64)
        if all(isinstance(v, (list, tuple, np.ndarray)) for v in items):
            return ARRAY, [infer_type(v)[1] for v in items]
        raise UnsupportedError("a metadata list mixes types GGUF cannot hold in one array")
    if isinstance(value, dict):
        return STRING, json.dumps(value, sort_keys=True, default=str)
    if value is None:
        raise UnsupportedError("None has no GGUF type")
    return STRING, str(value)


def _array_body(items: Any) -> bytes:
    """element type + count + elements of an (already normalized) array value."""
    if isinstance(items, np.ndarray):
        dt = items.dtype.newbyteorder("=")
        etype = NUMPY_TO_TYPE[dt]
        data = items.astype(np.uint8) if etype == BOOL else items.astype(SCALARS[etype], copy=False)
        return struct.pack("<iQ", etype, len(items)) + np.ascontiguousarray(data).tobytes()
    if items and all(isinstance(v, (list, tuple, np.ndarray)) for v in items):
        return struct.pack("<iQ", ARRAY, len(items)) + b"".join(_array_body(v) for v in items)
    return struct.pack("<iQ", STRING, len(items)) + b"".join(pack_string(v) for v in items)


def pack_kv(key: str, vtype: int, value: Any) -> bytes:
    out = pack_string(key) + struct.pack("<i", vtype)
    if vtype == STRING:
        return out + pack_string(value)
    if vtype == ARRAY:
        return out + _array_body(value)
    if vtype == BOOL:
        return out + (b"\x01" if value else b"\x00")
    dt = SCALARS[vtype]
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not info.min <= int(value) <= info.max:
            raise UnsupportedError(f"{key} = {value} does not fit {TYPE_NAMES[vtype]}")
        return out + np.array(int(value), dtype=dt).tobytes()
    return out + np.array(value, dtype=dt).tobytes()
