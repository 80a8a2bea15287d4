"""The dtype table: plain element types and block-quantized types.

Like gguf-py's ``GGML_QUANT_SIZES``, every type is described by ``(block_size, type_size)``: a row of
``n`` values occupies ``n // block_size * type_size`` bytes.  Plain types have block 1.  Block types
subclass :class:`BlockDType` and implement ``quantize_blocks`` / ``dequantize_blocks`` on arrays of
shape ``(n_blocks, block_size)`` float32 <-> ``(n_blocks, type_size)`` uint8; subclassing registers
them (see ``core/quant/``).

numpy has no bfloat16 or float8: those are kept as their raw bits (uint16 / uint8) and decoded to
float32 on demand.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Iterable, Optional

import numpy as np

from .errors import QuantError, UnsupportedError

F32 = np.dtype("<f4")


class DType:
    """One entry of the dtype table.  Instances are immutable and compared by (name, block_size)."""

    name: str
    block_size: int
    type_size: int
    is_float: bool
    is_quantized: bool
    #: numpy dtype of one stored element (raw bits for bf16/f8); uint8 for block types
    storage: np.dtype
    #: numpy dtype that ``decode`` returns
    natural: np.dtype

    def row_bytes(self, n_cols: int) -> int:
        if n_cols % self.block_size:
            raise QuantError(
                f"row of {n_cols} values is not a multiple of the {self.name} block size {self.block_size}")
        return n_cols // self.block_size * self.type_size

    def nbytes(self, shape: Iterable[int]) -> int:
        shape = tuple(shape)
        if not shape:
            return self.row_bytes(1)
        rows = 1
        for d in shape[:-1]:
            rows *= d
        return rows * self.row_bytes(shape[-1])

    # -- value conversion on 2-D row arrays -------------------------------------------------------
    def decode(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        """Raw bytes (n_rows, row_bytes) uint8 -> values (n_rows, n_cols) in ``natural``."""
        raise NotImplementedError

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Values (n_rows, n_cols) -> raw bytes (n_rows, row_bytes) uint8."""
        raise NotImplementedError

    def to_f32(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        return np.asarray(self.decode(raw, n_cols), dtype=F32)

    @property
    def label(self) -> str:
        """The name, plus ``@block_size`` for a non-default variant of a parametric type ("l2c_q8@32");
        :func:`get_dtype` accepts it back."""
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.label})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DType) and (self.name, self.block_size) == (other.name, other.block_size)

    def __hash__(self) -> int:
        return hash((self.name, self.block_size))


# --------------------------------------------------------------------------------------------------
# plain types
# --------------------------------------------------------------------------------------------------

def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, ggml's rule (ggml_compute_fp32_to_bf16).

    NaN (|u| > 0x7f800000) keeps sign and payload and is quieted: (u >> 16) | 0x40.  Everything else
    rounds to nearest even: (u + 0x7fff + ((u >> 16) & 1)) >> 16.  torch differs only for NaN.
    """
    f = np.ascontiguousarray(x, dtype=F32)
    u = f.view(np.uint32)
    r = u >> np.uint32(16)                 # in place on one temporary: (u + 0x7fff + lsb) >> 16
    r &= np.uint32(1)
    r += np.uint32(0x7FFF)
    r += u
    r >>= np.uint32(16)
    nan = np.isnan(f)
    if nan.any():
        r = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), r)
    return r.astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(F32)


def bf16_bits_to_f16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits -> IEEE half bits, equal to ``bf16_bits_to_f32(bits).astype(float16)`` (round to
    nearest even) but in integer arithmetic, several times faster than numpy's float -> half cast.

    A bf16 with biased exponent e in [113, 142] is a normal half exactly: the half's exponent is
    e - 112 and its mantissa the bf16's 7 bits followed by three zeros, so the half is
    ((|b| - (112 << 7)) << 3) with the sign on top.  The few other values (zeros, half subnormals,
    overflow, inf, NaN) go through float32."""
    b = np.ascontiguousarray(bits, dtype=np.uint16)
    mag = b & np.uint16(0x7FFF)
    out = mag - np.uint16(0x3800)
    out <<= np.uint16(3)
    out |= b & np.uint16(0x8000)
    # out of range <=> |b| - 0x3880 >= 0x0F00 in wrapping uint16 arithmetic
    mag -= np.uint16(0x3880)
    odd = np.flatnonzero(mag >= np.uint16(0x0F00))
    if odd.size:
        flat = out.reshape(-1)
        with np.errstate(over="ignore"):
            flat[odd] = bf16_bits_to_f32(b.reshape(-1)[odd]).astype(np.float16).view(np.uint16)
    return out


def _f8_e4m3_table() -> np.ndarray:
    """All 256 float8_e4m3fn values: 1 sign, 4 exponent (bias 7), 3 mantissa bits, no inf;
    exponent 15 with mantissa 7 is NaN (so the largest finite value is 448)."""
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    val = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp.astype(np.float64) - 7))
    val = sign * val
    val[(exp == 15) & (man == 7)] = np.nan
    return val.astype(F32)


def _f8_e5m2_table() -> np.ndarray:
    """float8_e5m2 is the top byte of an IEEE half: 1 sign, 5 exponent (bias 15), 2 mantissa bits."""
    return (np.arange(256, dtype=np.uint16) << np.uint16(8)).view(np.float16).astype(F32)


class PlainDType(DType):
    block_size = 1
    is_quantized = False

    def __init__(self, name: str, storage: str, natural: Optional[str] = None, is_float: bool = False) -> None:
        self.name = name
        self.storage = np.dtype(storage)
        self.natural = np.dtype(natural or storage)
        self.type_size = self.storage.itemsize
        self.is_float = is_float

    def decode(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        values = np.ascontiguousarray(raw).view(self.storage).reshape(raw.shape[0], n_cols)
        return values

    def encode(self, values: np.ndarray) -> np.ndarray:
        stored = np.ascontiguousarray(values, dtype=self.storage)
        return stored.view(np.uint8).reshape(stored.shape[0], -1)

    def to_f32(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        return self.decode(raw, n_cols).astype(F32)


class BoolDType(PlainDType):
    def __init__(self) -> None:
        super().__init__("bool", "u1", "?")

    def decode(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        return np.ascontiguousarray(raw).reshape(raw.shape[0], n_cols) != 0

    def encode(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values) != 0).astype(np.uint8).reshape(np.shape(values)[0], -1)


class BF16DType(PlainDType):
    def __init__(self) -> None:
        super().__init__("bf16", "<u2", "<f4", is_float=True)

    def decode(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        bits = np.ascontiguousarray(raw).view(self.storage).reshape(raw.shape[0], n_cols)
        return bf16_bits_to_f32(bits)

    def encode(self, values: np.ndarray) -> np.ndarray:
        bits = f32_to_bf16_bits(np.asarray(values, dtype=F32))
        return bits.view(np.uint8).reshape(bits.shape[0], -1)


class F8DType(PlainDType):
    """float8 kept as raw bits; encode rounds to nearest even as torch does (e4m3fn: out of range or
    inf -> NaN, since the type has no inf; e5m2: out of range -> inf)."""

    def __init__(self, name: str, table: np.ndarray, saturate_to_inf: bool) -> None:
        super().__init__(name, "u1", "<f4", is_float=True)
        self.table = table
        self.saturate_to_inf = saturate_to_inf
        finite = np.isfinite(table[:128])
        self._pos_codes = np.nonzero(finite)[0].astype(np.uint8)       # ascending values for codes < 128
        self._pos_values = table[:128][finite].astype(np.float64)

    def decode(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        return self.table[np.ascontiguousarray(raw).reshape(raw.shape[0], n_cols)]

    def encode(self, values: np.ndarray) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        mag = np.abs(x)
        vals, codes = self._pos_values, self._pos_codes
        hi = np.clip(np.searchsorted(vals, mag), 1, len(vals) - 1)
        lo = hi - 1
        d_lo, d_hi = mag - vals[lo], vals[hi] - mag
        pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (codes[hi] % 2 == 0))
        code = np.where(pick_hi, codes[hi], codes[lo]).astype(np.uint8)
        top = vals[-1]
        step = vals[-1] - vals[-2]
        over = mag >= top + step / 2  # rounds past the largest finite value
        if self.saturate_to_inf:
            code = np.where(over | np.isinf(x), np.uint8(0x7C), code)
            code = np.where(np.isnan(x), np.uint8(0x7E), code)
        else:
            code = np.where(over | ~np.isfinite(x), np.uint8(0x7F), code)
        code = code | np.where(np.signbit(x), np.uint8(0x80), np.uint8(0)).astype(np.uint8)
        return code.astype(np.uint8).reshape(code.shape[0], -1)


# --------------------------------------------------------------------------------------------------
# block-quantized types
# --------------------------------------------------------------------------------------------------

class BlockDType(DType):
    """Base for block-quantized types; subclasses set name/block_size/type_size and the kernels."""

    is_float = True
    is_quantized = True
    storage = np.dtype("u1")
    natural = F32
    #: subclasses register themselves here by name
    registry: ClassVar[dict[str, "BlockDType"]] = {}
    #: True for types whose block size is chosen per file (llama2.c's group size).  The registered
    #: instance has the default size; ``variant(n)`` gives the same type with blocks of n values.
    #: Variants compare unequal (DType equality is by name and block size).
    parametric: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "name", None) and not cls.__dict__.get("abstract", False):  # abstract is not inherited
            instance = cls()
            if instance.name in TABLE and TABLE[instance.name] != instance:
                raise UnsupportedError(f"dtype {instance.name!r} is registered twice")
            TABLE[instance.name] = instance
            BlockDType.registry[instance.name] = instance

    def quantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        raise UnsupportedError(f"quantizing to {self.name} is not implemented")

    # -- parametric variants -----------------------------------------------------------------------
    def type_size_for(self, block_size: int) -> int:
        """Bytes of one block of ``block_size`` values (parametric types override this)."""
        raise UnsupportedError(f"{self.name} has a fixed block size of {self.block_size}")

    def variant(self, block_size: int) -> "BlockDType":
        """This type with blocks of ``block_size`` values (the same object for the current size)."""
        if block_size == self.block_size:
            return self
        default = BlockDType.registry.get(self.name, self)
        if block_size == default.block_size:
            return default
        if not self.parametric:
            raise UnsupportedError(f"{self.name} has a fixed block size of {self.block_size}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise UnsupportedError(f"{self.name} block size must be a positive integer, not {block_size!r}")
        key = (self.name, block_size)
        if key not in _VARIANTS:
            v = copy.copy(default)
            v.block_size = block_size
            v.type_size = default.type_size_for(block_size)
            _VARIANTS[key] = v
        return _VARIANTS[key]

    @property
    def label(self) -> str:
        default = BlockDType.registry.get(self.name)
        if default is not None and default.block_size != self.block_size:
            return f"{self.name}@{self.block_size}"
        return self.name

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, raw: np.ndarray, n_cols: int) -> np.ndarray:
        n_rows = raw.shape[0]
        blocks = np.ascontiguousarray(raw).reshape(-1, self.type_size)
        return self.dequantize_blocks(blocks).reshape(n_rows, n_cols).astype(F32, copy=False)

    def encode(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=F32)
        n_rows, n_cols = values.shape
        row_bytes = self.row_bytes(n_cols)
        blocks = np.ascontiguousarray(values).reshape(-1, self.block_size)
        out = self.quantize_blocks(blocks)
        return np.ascontiguousarray(out, dtype=np.uint8).reshape(n_rows, row_bytes)


TABLE: dict[str, DType] = {}
#: non-default variants of parametric block types, by (name, block_size)
_VARIANTS: dict[tuple[str, int], "BlockDType"] = {}


def _register_plain(dt: DType) -> DType:
    TABLE[dt.name] = dt
    return dt


F64_T = _register_plain(PlainDType("f64", "<f8", is_float=True))
F32_T = _register_plain(PlainDType("f32", "<f4", is_float=True))
F16_T = _register_plain(PlainDType("f16", "<f2", is_float=True))
BF16_T = _register_plain(BF16DType())
I64_T = _register_plain(PlainDType("i64", "<i8"))
I32_T = _register_plain(PlainDType("i32", "<i4"))
I16_T = _register_plain(PlainDType("i16", "<i2"))
I8_T = _register_plain(PlainDType("i8", "i1"))
U64_T = _register_plain(PlainDType("u64", "<u8"))
U32_T = _register_plain(PlainDType("u32", "<u4"))
U16_T = _register_plain(PlainDType("u16", "<u2"))
U8_T = _register_plain(PlainDType("u8", "u1"))
BOOL_T = _register_plain(BoolDType())
F8_E4M3_T = _register_plain(F8DType("f8_e4m3", _f8_e4m3_table(), saturate_to_inf=False))
F8_E5M2_T = _register_plain(F8DType("f8_e5m2", _f8_e5m2_table(), saturate_to_inf=True))

PLAIN_NAMES = ("f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u64", "u32", "u16", "u8", "bool",
               "f8_e4m3", "f8_e5m2")

#: target types that hold every value of the source type exactly, in order of preference
#: (smallest first).  Quantized types widen to f32 (their dequantized values are f32 computations).
EXACT_WIDENINGS: dict[str, tuple[str, ...]] = {
    "f16": ("f32", "f64"),
    "bf16": ("f32", "f64"),
    "f32": ("f64",),
    "f8_e4m3": ("f16", "bf16", "f32", "f64"),
    "f8_e5m2": ("f16", "bf16", "f32", "f64"),
    "bool": ("u8", "i8", "i16", "u16", "i32", "u32", "i64", "u64", "f16", "bf16", "f32", "f64"),
    "u8": ("i16", "u16", "i32", "u32", "i64", "u64", "f16", "f32", "f64"),
    "i8": ("i16", "i32", "i64", "f16", "f32", "f64"),
    "u16": ("i32", "u32", "i64", "u64", "f32", "f64"),
    "i16": ("i32", "i64", "f32", "f64"),
    "u32": ("i64", "u64", "f64"),
    "i32": ("i64", "f64"),
    "i64": (),
    "u64": (),
    "f64": (),
}


def _bf16_to_f16(raw: np.ndarray, n_cols: int) -> np.ndarray:
    bits = np.ascontiguousarray(raw).view(np.uint16)
    return bf16_bits_to_f16_bits(bits).view(np.uint8)


def _bf16_to_f32(raw: np.ndarray, n_cols: int) -> np.ndarray:
    bits = np.ascontiguousarray(raw).view(np.uint16)
    return bf16_bits_to_f32(bits).view(np.uint8)


#: raw -> raw kernels for casts that have a faster way than decode + encode, keyed by (from, to)
#: names; each gives the same bytes as ``to.encode(from.decode(raw))``
DIRECT_CASTS = {
    ("bf16", "f16"): _bf16_to_f16,
    ("bf16", "f32"): _bf16_to_f32,
}


def exact_widenings(dt: DType) -> tuple[str, ...]:
    if dt.is_quantized:
        return ("f32", "f64")
    return EXACT_WIDENINGS.get(dt.name, ())


def _load_kernels() -> None:
    """Import the quantization kernel families so their subclasses register."""
    import importlib
    import pkgutil

    from . import quant

    for info in pkgutil.iter_modules(quant.__path__):
        importlib.import_module(f"{quant.__name__}.{info.name}")


_kernels_loaded = False


def all_dtypes() -> dict[str, DType]:
    global _kernels_loaded
    if not _kernels_loaded:
        _kernels_loaded = True
        _load_kernels()
    return TABLE


def get_dtype(name: str) -> DType:
    """Look a dtype up by its (case-insensitive) name; ``name@N`` is the variant of a parametric
    block type with blocks of N values (``l2c_q8@32``)."""
    table = all_dtypes()
    key, sep, size = name.lower().partition("@")
    if key not in table:
        raise UnsupportedError(f"unknown dtype {name!r} (known: {', '.join(sorted(table))})")
    dt = table[key]
    if not sep:
        return dt
    if not isinstance(dt, BlockDType) or not dt.parametric:
        raise UnsupportedError(f"dtype {key} has no block-size variants ({name!r})")
    if not size.isdigit():
        raise UnsupportedError(f"dtype {name!r}: the block size after '@' must be a positive integer")
    return dt.variant(int(size))
