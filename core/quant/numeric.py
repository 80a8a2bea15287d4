"""C float semantics in numpy, shared by the quantization kernels.

ggml's reference quantizers (ggml-quants.c) are plain C on float32, compiled for the SSE2 baseline
(no FMA contraction, FLT_EVAL_METHOD 0), so every operation rounds to float32 in source order.  The
helpers here reproduce the few places where C and numpy differ:

* ``roundf`` rounds half AWAY from zero (numpy's ``round``/``rint`` round half to even);
* ``(int8_t)f`` / ``(uint8_t)f`` truncate toward zero; on x86 (cvttss2si) NaN and out-of-range values
  become INT32_MIN, whose low byte is 0;
* ``nearest_int(f)`` reads the mantissa of ``f + 1.5*2^23`` (round half to even for |f| <= 4194303,
  and well defined bit garbage beyond, which we reproduce bit for bit);
* ``GGML_FP32_TO_FP16`` is IEEE round-to-nearest-even like numpy's ``astype(float16)``, except that
  every NaN becomes 0x7E00 with the sign kept (numpy keeps payload bits);
* running sums (``s += a[i]``) are sequential, while numpy's ``sum`` is pairwise.  Kernels keep the
  element index on axis 0 (arrays of shape ``(n, n_groups)``) and add rows one by one.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
#: 1.5 * 2^23: adding it puts the integer part of |f| <= 2^22 into the low mantissa bits
_MAGIC = np.float32(12582912.0)
#: the float just below 0.5; trunc(v + copysign(this, v)) == roundf(v) for every finite float32 v
HALF_DOWN = np.nextafter(np.float32(0.5), np.float32(0.0))


def f32_to_f16_bits(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (ggml_compute_fp32_to_fp16): round to nearest even, overflow to inf,
    subnormals kept, NaN -> 0x7E00 | sign."""
    x = np.asarray(x, dtype=F32)
    h = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
        h = np.where(nan, sign | np.uint16(0x7E00), h)
    return h


def f16_bits_to_f32(h: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32: exact widening."""
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(F32)


def f16_round(x: np.ndarray) -> np.ndarray:
    """The float32 value of GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x))."""
    return f16_bits_to_f32(f32_to_f16_bits(x))


def nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: ``(bits(f + 12582912.f) & 0x7fffff) - 0x400000`` as int32."""
    bits = (np.asarray(f, dtype=F32) + _MAGIC).view(np.int32)
    bits &= np.int32(0x007FFFFF)
    bits -= np.int32(0x00400000)
    return bits


def c_trunc_byte(v: np.ndarray) -> np.ndarray:
    """``(int8_t)v`` / ``(uint8_t)v`` of a float32 on x86: truncate toward zero through int32, keep
    the low byte; NaN and |v| >= 2^31 give INT32_MIN, whose low byte is 0.  Returned as uint8 bits."""
    v = np.asarray(v, dtype=F32)
    ok = np.abs(v) < np.float32(2147483648.0)  # False for NaN too
    if not ok.all():
        v = np.where(ok, v, np.float32(0.0))
    return v.astype(np.int32).astype(np.uint8)


def all_finite(v: np.ndarray) -> bool:
    """True when no element is NaN or inf (one summing pass; callers bound |v| so the sum cannot overflow)."""
    return bool(np.isfinite(np.add.reduce(v, axis=None)))


def roundf(v: np.ndarray) -> np.ndarray:
    """C roundf (half away from zero) of float32 values, as float32.  Exact for every finite input:
    adding the float just below 0.5 never rounds a non-tie up, and still carries every tie over."""
    v = np.asarray(v, dtype=F32)
    return np.trunc(v + np.copysign(HALF_DOWN, v))


def seq_sum(rows: np.ndarray) -> np.ndarray:
    """``float s = 0; for i: s += rows[i]`` for every column: a sequential float32 sum over axis 0."""
    s = rows[0] + np.float32(0.0)
    for i in range(1, rows.shape[0]):
        s += rows[i]
    return s


def first_absmax(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``if (fabsf(v) > amax) { amax = fabsf(v); max = v; }`` from amax = max = 0: the signed value of
    the first element with the largest |v| (NaN never wins), or +0 when every |v| is 0.
    Returns (amax, max)."""
    a = np.abs(x)
    nan = np.isnan(a)
    if nan.any():
        a = np.where(nan, np.float32(0.0), a)
    idx = np.argmax(a, axis=axis)
    amax = np.take_along_axis(a, np.expand_dims(idx, axis), axis).squeeze(axis)
    vmax = np.take_along_axis(x, np.expand_dims(idx, axis), axis).squeeze(axis)
    vmax = np.where(amax > 0, vmax, np.float32(0.0)).astype(F32)
    return amax, vmax


def row_reduce(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """``op``-reduce each row of a (n, 2^k) array by halving (much faster in numpy than
    ``op.reduce(axis=1)`` over short rows).  For max/min the result is exact; NaN propagates."""
    w = a.shape[1]
    while w > 1:
        h = w // 2
        a = op(a[:, :h], a[:, h:w])
        w = h
    return a[:, 0]


def safe_recip(d: np.ndarray) -> np.ndarray:
    """``d ? 1.0f/d : 0.0f``."""
    d = np.asarray(d, dtype=F32)
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1.0) / np.where(d != 0, d, np.float32(1.0)), np.float32(0.0)).astype(F32)


def in_slices(n: int, step: int):
    """(start, stop) pairs covering range(n) in steps (kernels work on cache-sized slices)."""
    for start in range(0, n, step):
        yield start, min(n, start + step)
