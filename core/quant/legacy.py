"""The legacy 32-element block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (GGUF = ggjt v3 layout).

Quantizers reproduce ggml-quants.c ``quantize_row_*_ref`` bit for bit: float32 arithmetic in source
order, the UNROUNDED reciprocal ``id = d ? 1/d : 0`` for the quants and ``GGML_FP32_TO_FP16(d)`` for the
stored scale, C ``roundf`` (half away from zero) for Q8_0, ``(int8_t)(v + 8.5f)`` truncation for the
4/5-bit types.  NaN follows C's comparison semantics (a NaN never wins ``amax < fabsf(v)`` or
``v < min``; Q8_0's ``MAX(amax, fabsf(v))`` lets a NaN reset the running max) and x86's float->int
conversion (NaN -> 0).  Kernels are numpy on ``(n_blocks, 32)`` arrays, a cache-sized slice at a time.

Block layouts (bytes, in struct order; element e of the block):
  Q8_0 34 B: f16 d; i8 qs[32]                        x = qs[e]*d
  Q4_0 18 B: f16 d; u8 qs[16]                        qs[j] = q[j] | q[j+16]<<4;  x = (q-8)*d
  Q4_1 20 B: f16 d; f16 m; u8 qs[16]                 x = q*d + m
  Q5_0 22 B: f16 d; u32 qh (LE); u8 qs[16]           bit e of qh = bit 4 of q[e];  x = (q-16)*d
  Q5_1 24 B: f16 d; f16 m; u32 qh; u8 qs[16]         x = q*d + m
"""

from __future__ import annotations

import numpy as np

from ..dtypes import BlockDType
from .numeric import (F32, HALF_DOWN, all_finite, c_trunc_byte, f16_bits_to_f32, f32_to_f16_bits, first_absmax,
                      in_slices, roundf, row_reduce, safe_recip)

QK = 32
#: blocks per kernel slice: 8192 blocks = 1 MiB of float32 input, small enough to stay in cache
SLICE = 8192


def _trunc_int8(v: np.ndarray) -> np.ndarray:
    """``(int8_t)v`` for v that lies in [0, 127] unless a NaN/inf slipped in (then x86's rule)."""
    return v.astype(np.int8) if all_finite(v) else c_trunc_byte(v).view(np.int8)


def _put_f16(out: np.ndarray, offset: int, values: np.ndarray) -> None:
    out[:, offset:offset + 2] = f32_to_f16_bits(values).reshape(-1, 1).view(np.uint8)


def _get_f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    return f16_bits_to_f32(np.ascontiguousarray(blocks[:, offset:offset + 2]).view(np.uint16))  # (n, 1)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """qs[j] = low nibble of q[j] | low nibble of q[j+16] << 4 (the 'split halves' order since ggjt v2)."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _pack_qh(q: np.ndarray) -> np.ndarray:
    """The u32 qh (little-endian): bit e = bit 4 of q[e]."""
    return np.packbits(((q >> 4) & 1).astype(np.uint8), axis=1, bitorder="little")


def _unpack_qh(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little")


class _Legacy(BlockDType):
    abstract = True
    block_size = QK

    def quantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        blocks = np.asarray(blocks, dtype=F32)
        out = np.empty((blocks.shape[0], self.type_size), dtype=np.uint8)
        with np.errstate(all="ignore"):       # inf/NaN inputs follow C, silently
            for a, b in in_slices(blocks.shape[0], SLICE):
                self._quantize(blocks[a:b], out[a:b])
        return out

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        blocks = np.asarray(blocks, dtype=np.uint8)
        out = np.empty((blocks.shape[0], QK), dtype=F32)
        with np.errstate(all="ignore"):
            for a, b in in_slices(blocks.shape[0], SLICE):
                out[a:b] = self._dequantize(blocks[a:b])
        return out

    def _quantize(self, x: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# -- Q8_0 -------------------------------------------------------------------------------------------

def _q8_amax(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """``amax = 0; for v: amax = MAX(amax, fabsf(v))`` with MAX(a,b) = a > b ? a : b.
    Returns (amax, finite) where finite says every block was free of NaN and inf."""
    amax = row_reduce(np.abs(x), np.maximum)      # exact for finite blocks; NaN/inf propagate
    finite = bool(np.isfinite(amax).all())
    if not finite:
        a = np.abs(x)
        nan = np.isnan(a)
        amax = a.max(axis=1)
        bad = nan.any(axis=1)
        if bad.any():
            # a NaN makes the running max NaN, and the next element replaces it: the result is NaN
            # when the last element is NaN, else the max over the elements after the last NaN
            last = QK - 1 - np.argmax(nan[bad][:, ::-1], axis=1)
            after = np.arange(QK)[None, :] > last[:, None]
            tail = np.where(after, a[bad], np.float32(0.0)).max(axis=1)
            amax[bad] = np.where(last == QK - 1, np.float32(np.nan), tail)
    return amax.astype(F32, copy=False), finite


class Q8_0(_Legacy):
    name = "q8_0"
    type_size = 34

    def _quantize(self, x: np.ndarray, out: np.ndarray) -> None:
        amax, finite = _q8_amax(x)
        d = amax / np.float32(127)             # (1 << 7) - 1
        idv = safe_recip(d)
        v = x * idv[:, None]
        if finite and bool(np.isfinite(idv).all()):
            # |v| <= 127: roundf(v) = trunc(v + copysign(0.49999997f, v)), and the int8 cast truncates
            v += np.copysign(HALF_DOWN, v)
            q = v.astype(np.int8)
        else:
            q = c_trunc_byte(roundf(v)).view(np.int8)
        _put_f16(out, 0, d)
        out[:, 2:] = q.view(np.uint8)

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        d = _get_f16(blocks, 0)
        return blocks[:, 2:].view(np.int8).astype(F32) * d


# -- Q4_0 / Q5_0: symmetric, d = max / -2^(bits-1) ---------------------------------------------------

class _Symmetric(_Legacy):
    abstract = True
    bits: int

    def _codes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = 1 << (self.bits - 1)            # 8 or 16
        vmax = _first_absmax(x)
        d = vmax / np.float32(-half)
        idv = safe_recip(d)
        v = x * idv[:, None] + np.float32(half + 0.5)   # x*id + 8.5f / 16.5f
        # MIN(2^bits - 1, (int8_t)v): v lies in [0.5, 2^bits + 0.5] unless a NaN/inf slipped in
        q = _trunc_int8(v)
        return d, np.minimum(q, np.int8((1 << self.bits) - 1)).view(np.uint8)


class Q4_0(_Symmetric):
    name = "q4_0"
    type_size = 18
    bits = 4

    def _quantize(self, x: np.ndarray, out: np.ndarray) -> None:
        d, q = self._codes(x)
        _put_f16(out, 0, d)
        out[:, 2:] = _pack_nibbles(q)

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        d = _get_f16(blocks, 0)
        q = _unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
        return q.astype(F32) * d


class Q5_0(_Symmetric):
    name = "q5_0"
    type_size = 22
    bits = 5

    def _quantize(self, x: np.ndarray, out: np.ndarray) -> None:
        d, q = self._codes(x)
        _put_f16(out, 0, d)
        out[:, 2:6] = _pack_qh(q)
        out[:, 6:] = _pack_nibbles(q)

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        d = _get_f16(blocks, 0)
        q = _unpack_nibbles(blocks[:, 6:]) | (_unpack_qh(blocks[:, 2:6]) << 4)
        return (q.astype(np.int8) - np.int8(16)).astype(F32) * d


# -- Q4_1 / Q5_1: affine, d = (max - min) / (2^bits - 1), m = min ------------------------------------

def _first_absmax(x: np.ndarray) -> np.ndarray:
    """``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` from amax = max = 0: the signed value of
    the first element with the largest |v| (NaN never wins), +0 when every |v| is 0."""
    hi = row_reduce(x, np.maximum)
    lo = row_reduce(x, np.minimum)
    vmax = np.where(hi >= -lo, hi, lo)
    # ties between +a and -a, NaN blocks and all-zero blocks: the exact (slower) rule
    redo = (hi == -lo) | np.isnan(hi) | np.isnan(lo)
    if redo.any():
        vmax[redo] = first_absmax(x[redo], axis=1)[1]
    return vmax.astype(F32, copy=False)


def _minmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min = FLT_MAX; max = -FLT_MAX; if (v < min) min = v; if (v > max) max = v;``: NaN is skipped
    and among equal values (+0 and -0) the first one stays."""
    lo = row_reduce(x, np.minimum)
    hi = row_reduce(x, np.maximum)
    redo = np.isnan(lo) | np.isnan(hi) | (lo == 0) | (hi == 0)   # numpy propagates NaN, picks any zero
    if redo.any():
        big = np.float32(np.inf)
        xr = x[redo]
        nan = np.isnan(xr)
        low = np.where(nan, big, xr)
        high = np.where(nan, -big, xr)
        rows = np.arange(xr.shape[0])
        lo[redo] = low[rows, np.argmin(low, axis=1)]          # argmin/argmax: the first of equal values
        hi[redo] = high[rows, np.argmax(high, axis=1)]
    # min starts at FLT_MAX and max at -FLT_MAX: a block of +inf keeps min = FLT_MAX (and -inf max = -FLT_MAX)
    big = np.float32(np.finfo(np.float32).max)
    return np.minimum(lo, big).astype(F32, copy=False), np.maximum(hi, -big).astype(F32, copy=False)


class _Affine(_Legacy):
    abstract = True
    bits: int

    def _codes(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        top = (1 << self.bits) - 1               # 15 or 31
        lo, hi = _minmax(x)
        d = (hi - lo) / np.float32(top)
        idv = safe_recip(d)
        v = (x - lo[:, None]) * idv[:, None] + np.float32(0.5)
        # Q4_1: MIN(15, (int8_t)v); Q5_1: (uint8_t)v with no clamp (v < 31.5 for finite input)
        q = _trunc_int8(v)
        if self.bits == 4:
            q = np.minimum(q, np.int8(top))
        return d, lo, q.view(np.uint8)


class Q4_1(_Affine):
    name = "q4_1"
    type_size = 20
    bits = 4

    def _quantize(self, x: np.ndarray, out: np.ndarray) -> None:
        d, m, q = self._codes(x)
        _put_f16(out, 0, d)
        _put_f16(out, 2, m)
        out[:, 4:] = _pack_nibbles(q)

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        d, m = _get_f16(blocks, 0), _get_f16(blocks, 2)
        return _unpack_nibbles(blocks[:, 4:]).astype(F32) * d + m


class Q5_1(_Affine):
    name = "q5_1"
    type_size = 24
    bits = 5

    def _quantize(self, x: np.ndarray, out: np.ndarray) -> None:
        d, m, q = self._codes(x)
        _put_f16(out, 0, d)
        _put_f16(out, 2, m)
        out[:, 4:8] = _pack_qh(q)
        out[:, 8:] = _pack_nibbles(q)

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        d, m = _get_f16(blocks, 0), _get_f16(blocks, 2)
        q = _unpack_nibbles(blocks[:, 8:]) | (_unpack_qh(blocks[:, 4:8]) << 4)
        return q.astype(F32) * d + m
