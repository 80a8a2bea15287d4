"""K-quants: 256-element super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (GGUF = ggjt v3 layout).

Dequantizers follow ggml-quants.c ``dequantize_row_*`` (float32, same operation order).  Quantizers
port the reference path llama-quantize takes without an imatrix (``quantize_row_*_ref`` with
``make_qkx2_quants`` / ``make_qx_quants`` / ``make_q3_quants``) line by line in float32: the iterative
searches run their fixed number of steps for every (sub-)block at once, running sums are sequential
(``s += a[i]``, see numeric.seq_sum), ``nearest_int`` is the 1.5*2^23 mantissa trick, every block
stores ``GGML_FP32_TO_FP16`` scales and the final pass requantizes with the f16-rounded values.
Kernel arrays keep the element index of a sub-block on axis 0 — shape (n, n_groups) — so a sequential
sum is a row-by-row add over contiguous rows.

Block layouts (bytes, struct order; e = element index inside the super-block):
  Q2_K  84 B: u8 scales[16] (lo nibble scale, hi nibble min); u8 qs[64]; f16 d; f16 dmin
              qs[32h+l] bits 2k..2k+1 = q[128h + 32k + l];  x = d*(sc&15)*q - dmin*(sc>>4)
  Q3_K 110 B: u8 hmask[32]; u8 qs[64] (2 low bits as Q2_K); u8 scales[12] (16 x 6 bits); f16 d
              hmask[e%32] bit e/32 = high bit;  x = d*(sc-32)*(q_low - (hbit ? 0 : 4))
  Q4_K 144 B: f16 d; f16 dmin; u8 scales[12] (8 x 6-bit scale + 8 x 6-bit min); u8 qs[128]
              qs[32c+l] = q[64c+l] | q[64c+32+l] << 4;  x = d*sc*q - dmin*m
  Q5_K 176 B: f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
              qh[l] bit 2c = bit 4 of q[64c+l], bit 2c+1 = bit 4 of q[64c+32+l]
  Q6_K 210 B: u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d;  x = d*sc*(q-32)
"""

from __future__ import annotations


import numpy as np

from ..dtypes import BlockDType
from .numeric import (F32, f16_bits_to_f32, f16_round, f32_to_f16_bits, first_absmax, in_slices, nearest_int,
                      seq_sum)

QK_K = 256
#: super-blocks per kernel slice (1024 blocks = 1 MiB of float32 input: measured best)
SLICE = 1024
#: GROUP_MAX_EPS in ggml-quants.c: below this a group counts as all zero
GROUP_MAX_EPS = np.float32(1e-15)


def _seq_sum_nozero(rows: np.ndarray) -> np.ndarray:
    """``float s = a[0]; for i >= 1: s += a[i]`` (a running sum that does not start from 0)."""
    s = rows[0].copy()
    for i in range(1, rows.shape[0]):
        s += rows[i]
    return s


def _c_min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min = max = x[0]; for i >= 1: if (x[i] < min) min = x[i]; if (x[i] > max) max = x[i];`` over
    axis 0: a NaN in x[0] sticks, later NaNs are skipped (numpy's min/max propagate every NaN)."""
    lo = x.min(axis=0)
    hi = x.max(axis=0)
    nan = np.isnan(lo)
    if nan.any():
        rest = x[1:, nan]
        first = x[0, nan]
        big = np.float32(np.inf)
        lo[nan] = np.where(np.isnan(first), first, np.minimum(first, np.where(np.isnan(rest), big, rest).min(axis=0)))
        hi[nan] = np.where(np.isnan(first), first, np.maximum(first, np.where(np.isnan(rest), -big, rest).max(axis=0)))
    return lo, hi


def _levels(t: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """MAX(lo, MIN(hi, nearest_int(t))) as float32 (the level is then used as a float operand)."""
    return np.clip(nearest_int(t), lo, hi).astype(F32)


def _sub_blocks(x: np.ndarray, n: int) -> np.ndarray:
    """(B, 256) -> (n, B*256/n): column s = b*(256/n) + j holds sub-block j of super-block b."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _from_sub_blocks(a: np.ndarray, n_blocks: int) -> np.ndarray:
    """Inverse of _sub_blocks: (n, S) -> (B, 256)."""
    return np.ascontiguousarray(a.T).reshape(n_blocks, QK_K)


def _f16(values: np.ndarray) -> np.ndarray:
    return f32_to_f16_bits(values).reshape(-1, 1).view(np.uint8)


def _get_f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    return f16_bits_to_f32(np.ascontiguousarray(blocks[:, offset:offset + 2]).view(np.uint16))  # (B, 1)


# --------------------------------------------------------------------------------------------------
# the reference searches (ggml-quants.c), vectorized over groups
# --------------------------------------------------------------------------------------------------

def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine fit x ~ scale*L - the_min with L in 0..nmax, for every column of x (n, S).
    Returns (scale (S,), the_min (S,), L (n, S) float32)."""
    n_max = np.float32(nmax)
    lo, hi = _c_min_max(x)
    sum_w = _seq_sum_nozero(w)
    sum_x = _seq_sum_nozero(w * x)
    lo = np.minimum(lo, np.float32(0.0))            # if (min > 0) min = 0
    flat = hi == lo                                  # L = 0, the_min = -min, scale 0
    span = np.where(flat, np.float32(1.0), hi - lo)

    def error(scale: np.ndarray, mn: np.ndarray, L: np.ndarray) -> np.ndarray:
        diff = scale * L + mn - x                    # scale*L[i] + min - x[i]
        diff = np.abs(diff) if use_mad else diff * diff
        return seq_sum(w * diff)

    iscale = n_max / span
    scale = np.float32(1.0) / iscale
    L = _levels(iscale * (x - lo), 0, nmax)
    best = error(scale, lo, L)
    mn = lo
    for step in range(nstep + 1):
        factor = np.float32(rmin) + np.float32(rdelta) * np.float32(step) + n_max
        iscale = factor / np.where(flat, np.float32(1.0), hi - mn)
        laux = _levels(iscale * (x - mn), 0, nmax)
        wl = w * laux
        sum_l = seq_sum(wl)
        sum_l2 = seq_sum(wl * laux)
        sum_xl = seq_sum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = np.where(pos, np.float32(0.0), this_min)
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, this_min, laux)
        better = ok & (cur < best) & ~flat
        np.copyto(L, laux, where=better)            # (np.where would allocate: much slower)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, np.float32(0.0), scale).astype(F32)
    L = np.where(flat, np.float32(0.0), L)
    return scale, (-mn).astype(F32), L


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL): symmetric fit x ~ scale*(L - nmax) with
    weights x^2 and a 19-point search of the inverse scale.  Returns (scale (S,), L (n, S) float32
    in 0..2*nmax-1; all 0 for a group with max|x| < 1e-15)."""
    amax, vmax = first_absmax(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    vmax = np.where(zero, np.float32(1.0), vmax)
    wx = x * x * x                                   # (w*x[i]) with w = x[i]*x[i]
    w = x * x

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = _levels(iscale * x, -nmax, nmax - 1)
        return lv, seq_sum(wx * lv), seq_sum(w * lv * lv)

    lv, sumlx, suml2 = fit(np.float32(-nmax) / vmax)
    L = lv + np.float32(nmax)
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, np.float32(1.0)), np.float32(0.0)).astype(F32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        factor = -(np.float32(nmax) + np.float32(0.1) * np.float32(step))
        lv, sumlx, suml2 = fit(factor / vmax)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        np.copyto(L, lv + np.float32(nmax), where=better)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, np.float32(0.0), scale).astype(F32)
    L = np.where(zero, np.float32(0.0), L)
    return scale, L


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true): symmetric fit with weights x^2, then up to 5
    passes of one-level-at-a-time improvement.  Returns (scale (S,), L (n, S) float32 in 0..2*nmax-1;
    all 0 for a group with max|x| < 1e-15)."""
    n = x.shape[0]
    amax, vmax = first_absmax(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    vmax = np.where(zero, np.float32(1.0), vmax)
    iscale = np.float32(-nmax) / vmax
    L = _levels(iscale * x, -nmax, nmax - 1)         # L[i] = l (without the +nmax yet)
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(w * L * L)
    # A pass that changes nothing leaves the state as it was, so running all 5 passes for every group
    # equals C's early ``break``.
    for _ in range(5):
        for i in range(n):
            wi, xi, wxi, li = w[i], x[i], wx[i], L[i]
            slx = sumlx - wxi * li
            pos = slx > 0
            sl2 = suml2 - wi * li * li
            with np.errstate(divide="ignore", invalid="ignore"):
                new_l = _levels(xi * sl2 / slx, -nmax, nmax - 1)
            changed = pos & (new_l != li)
            slx = slx + wxi * new_l
            sl2 = sl2 + wi * new_l * new_l
            take = changed & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = np.where(take, new_l, li)
            sumlx = np.where(take, slx, sumlx)
            suml2 = np.where(take, sl2, suml2)
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, np.float32(1.0)), np.float32(0.0))
    scale = np.where(zero, np.float32(0.0), scale).astype(F32)
    L = np.where(zero, np.float32(0.0), L + np.float32(nmax))
    return scale, L


def _max_positive(v: np.ndarray) -> np.ndarray:
    """``float m = 0; if (v > m) m = v;`` over the last axis (a NaN never wins)."""
    return np.fmax(np.fmax.reduce(v, axis=-1), np.float32(0.0)).astype(F32)


# --------------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------------

class _KQuant(BlockDType):
    abstract = True
    block_size = QK_K

    def quantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        blocks = np.asarray(blocks, dtype=F32)
        out = np.empty((blocks.shape[0], self.type_size), dtype=np.uint8)
        with np.errstate(all="ignore"):       # degenerate groups are masked out after the fact
            for a, b in in_slices(blocks.shape[0], SLICE):
                out[a:b] = self._quantize(np.ascontiguousarray(blocks[a:b]))
        return out

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        blocks = np.asarray(blocks, dtype=np.uint8)
        out = np.empty((blocks.shape[0], QK_K), dtype=F32)
        with np.errstate(all="ignore"):
            for a, b in in_slices(blocks.shape[0], 4096):
                out[a:b] = self._dequantize(blocks[a:b])
        return out

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(B, 256) levels 0..3 -> (B, 64): qs[32h+l] = L[128h+l] | L[128h+32+l]<<2 | ..<<4 | ..<<6."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """(B, 64) -> (B, 256) levels 0..3."""
    q = qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return (q & 3).reshape(-1, QK_K)


# --------------------------------------------------------------------------------------------------
# Q2_K
# --------------------------------------------------------------------------------------------------

class Q2_K(_KQuant):
    name = "q2_k"
    type_size = 84

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        nb = x.shape[0]
        xs = _sub_blocks(x, 16)                          # (16, nb*16)
        scales, mins, L = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        q4scale = np.float32(15.0)
        max_scale, max_min = _max_positive(scales), _max_positive(mins)
        has_s, has_m = max_scale > 0, max_min > 0
        iscale = q4scale / np.where(has_s, max_scale, np.float32(1.0))
        sc = np.where(has_s[:, None], nearest_int(iscale[:, None] * scales), 0).astype(np.uint8)
        d = np.where(has_s, max_scale / q4scale, np.float32(0.0))
        imin = q4scale / np.where(has_m, max_min, np.float32(1.0))
        mq = np.where(has_m[:, None], nearest_int(imin[:, None] * mins) << 4, 0).astype(np.uint8)
        sc = sc | mq                                      # y.scales[j] |= (l << 4)
        dmin = np.where(has_m, max_min / q4scale, np.float32(0.0))
        # requantize with the stored (f16) scales; groups whose scale is 0 keep the search's levels
        dd = f16_round(d)[:, None] * (sc & 0xF).astype(F32)
        dm = f16_round(dmin)[:, None] * (sc >> 4).astype(F32)
        xg = x.reshape(nb, 16, 16)
        lq = _levels((xg + dm[:, :, None]) / dd[:, :, None], 0, 3)
        L = np.where((dd != 0)[:, :, None], lq, _from_sub_blocks(L, nb).reshape(nb, 16, 16)).reshape(nb, QK_K)
        out = np.empty((nb, self.type_size), np.uint8)
        out[:, 0:16] = sc
        out[:, 16:80] = _pack_2bit(L)
        out[:, 80:82] = _f16(d)
        out[:, 82:84] = _f16(dmin)
        return out

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]
        sc = blocks[:, 0:16]
        d, dmin = _get_f16(blocks, 80), _get_f16(blocks, 82)
        dl = (d * (sc & 0xF).astype(F32))[:, :, None]
        ml = (dmin * (sc >> 4).astype(F32))[:, :, None]
        q = _unpack_2bit(blocks[:, 16:80]).astype(F32).reshape(nb, 16, 16)
        return (dl * q - ml).reshape(nb, QK_K)


# --------------------------------------------------------------------------------------------------
# Q3_K
# --------------------------------------------------------------------------------------------------

def _q3_pack_scales(l: np.ndarray) -> np.ndarray:
    """16 six-bit values (B, 16) -> 12 bytes: low nibbles in bytes 0..7 (j<8 low, j>=8 high nibble of
    j-8), the high 2 bits in bytes 8 + j%4 at bit 2*(j/4)."""
    l = l.astype(np.uint8)
    out = np.zeros((l.shape[0], 12), np.uint8)
    out[:, :8] = (l[:, :8] & 0xF) | ((l[:, 8:] & 0xF) << 4)
    hi = (l >> 4).reshape(-1, 4, 4)                  # [j/4, j%4]
    out[:, 8:] = hi[:, 0] | (hi[:, 1] << 2) | (hi[:, 2] << 4) | (hi[:, 3] << 6)
    return out


def _q3_unpack_scales(s: np.ndarray) -> np.ndarray:
    """12 bytes -> (B, 16) signed scales (six-bit value - 32)."""
    low = np.concatenate([s[:, :8] & 0xF, s[:, :8] >> 4], axis=1)
    hi = (s[:, 8:12].reshape(-1, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3
    return (low | (hi.reshape(-1, 16) << 4)).astype(np.int8) - np.int8(32)


class Q3_K(_KQuant):
    name = "q3_k"
    type_size = 110

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        nb = x.shape[0]
        xs = _sub_blocks(x, 16)
        scales, L = make_q3_quants(xs, 4)
        scales = scales.reshape(nb, 16)
        _, max_scale = first_absmax(scales, axis=1)      # signed scale with the largest |.| (first)
        has = max_scale != 0
        iscale = np.float32(-32.0) / np.where(has, max_scale, np.float32(1.0))
        # int8_t l = nearest_int(iscale*s); l = MAX(-32, MIN(31, l)) + 32
        l8 = nearest_int(iscale[:, None] * scales).astype(np.int8).astype(np.int32)
        ls = np.where(has[:, None], np.clip(l8, -32, 31) + 32, 0)
        d = np.where(has, np.float32(1.0) / iscale, np.float32(0.0))
        packed = _q3_pack_scales(ls)
        sc = _q3_unpack_scales(packed).astype(F32)
        dd = f16_round(d)[:, None] * sc
        xg = x.reshape(nb, 16, 16)
        lq = _levels(xg / dd[:, :, None], -4, 3) + np.float32(4)
        L = np.where((dd != 0)[:, :, None], lq, _from_sub_blocks(L, nb).reshape(nb, 16, 16)).reshape(nb, QK_K)
        Li = L.astype(np.uint8)
        high = (Li > 3).reshape(nb, 8, 32)               # hmask[e%32] bit e/32
        hmask = np.zeros((nb, 32), np.uint8)
        for k in range(8):
            hmask |= high[:, k].astype(np.uint8) << k
        out = np.empty((nb, self.type_size), np.uint8)
        out[:, 0:32] = hmask
        out[:, 32:96] = _pack_2bit(Li & 3)
        out[:, 96:108] = packed
        out[:, 108:110] = _f16(d)
        return out

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]
        d = _get_f16(blocks, 108)
        dl = (d * _q3_unpack_scales(blocks[:, 96:108]).astype(F32))[:, :, None]
        low = _unpack_2bit(blocks[:, 32:96]).astype(np.int8)
        hbit = (blocks[:, 0:32].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
        q = low - ((1 - hbit.reshape(nb, QK_K)).astype(np.int8) << 2)
        return (dl * q.astype(F32).reshape(nb, 16, 16)).reshape(nb, QK_K)


# --------------------------------------------------------------------------------------------------
# Q4_K / Q5_K
# --------------------------------------------------------------------------------------------------

def _k4_pack_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins (B, 8) -> 12 bytes (get_scale_min_k4 is the inverse)."""
    out = np.empty((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _k4_unpack_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: (sc (B, 8), m (B, 8)) uint8."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


class _Q45K(_KQuant):
    abstract = True
    nmax: int
    rmin: float
    nstep: int

    def _levels_and_scales(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """quantize_row_q{4,5}_K_ref up to the packing: (L (B,256) levels, packed scales (B,12), d, dmin)."""
        nb = x.shape[0]
        xs = _sub_blocks(x, 32)                          # (32, nb*8)
        av_x = np.sqrt(seq_sum(xs * xs) / np.float32(32))
        w = av_x + np.abs(xs)
        scales, mins, L = make_qkx2_quants(xs, w, self.nmax, self.rmin, 0.1, self.nstep, False)
        scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
        max_scale, max_min = _max_positive(scales), _max_positive(mins)
        inv_scale = np.where(max_scale > 0, np.float32(63.0) / max_scale, np.float32(0.0))
        inv_min = np.where(max_min > 0, np.float32(63.0) / max_min, np.float32(0.0))
        # uint8_t ls = nearest_int(...); ls = MIN(63, ls)
        ls = np.minimum(nearest_int(inv_scale[:, None] * scales).astype(np.uint8), 63)
        lm = np.minimum(nearest_int(inv_min[:, None] * mins).astype(np.uint8), 63)
        d = max_scale / np.float32(63.0)
        dmin = max_min / np.float32(63.0)
        dd = f16_round(d)[:, None] * ls.astype(F32)
        dm = f16_round(dmin)[:, None] * lm.astype(F32)
        xg = x.reshape(nb, 8, 32)
        lq = _levels((xg + dm[:, :, None]) / dd[:, :, None], 0, self.nmax)
        L = np.where((dd != 0)[:, :, None], lq, _from_sub_blocks(L, nb).reshape(nb, 8, 32))
        return L.reshape(nb, QK_K).astype(np.uint8), _k4_pack_scales(ls, lm), d, dmin

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]
        d, dmin = _get_f16(blocks, 0), _get_f16(blocks, 2)
        sc, m = _k4_unpack_scales(blocks[:, 4:16])
        d1 = (d * sc.astype(F32))[:, :, None]
        m1 = (dmin * m.astype(F32))[:, :, None]
        q = self._codes(blocks).astype(F32).reshape(nb, 8, 32)
        return (d1 * q - m1).reshape(nb, QK_K)

    def _codes(self, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _nibbles_k(L: np.ndarray) -> np.ndarray:
    """(B, 256) -> (B, 128): qs[32c+l] = low4(L[64c+l]) | low4(L[64c+32+l]) << 4."""
    q = L.reshape(-1, 4, 2, 32) & 0xF
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _unnibble_k(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0xF).reshape(-1, QK_K)


class Q4_K(_Q45K):
    name = "q4_k"
    type_size = 144
    nmax, rmin, nstep = 15, -1.0, 20

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        L, scales, d, dmin = self._levels_and_scales(x)
        out = np.empty((x.shape[0], self.type_size), np.uint8)
        out[:, 0:2] = _f16(d)
        out[:, 2:4] = _f16(dmin)
        out[:, 4:16] = scales
        out[:, 16:] = _nibbles_k(L)
        return out

    def _codes(self, blocks: np.ndarray) -> np.ndarray:
        return _unnibble_k(blocks[:, 16:144])


class Q5_K(_Q45K):
    name = "q5_k"
    type_size = 176
    nmax, rmin, nstep = 31, -0.5, 15

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        L, scales, d, dmin = self._levels_and_scales(x)
        out = np.empty((x.shape[0], self.type_size), np.uint8)
        out[:, 0:2] = _f16(d)
        out[:, 2:4] = _f16(dmin)
        out[:, 4:16] = scales
        hb = (L >> 4).reshape(-1, 4, 2, 32)              # [c, half, l]
        qh = np.zeros((x.shape[0], 32), np.uint8)
        for c in range(4):
            qh |= (hb[:, c, 0] << (2 * c)) | (hb[:, c, 1] << (2 * c + 1))
        out[:, 16:48] = qh
        out[:, 48:] = _nibbles_k(L)
        return out

    def _codes(self, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]
        low = _unnibble_k(blocks[:, 48:176])
        hbit = (blocks[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
        return low | (hbit.reshape(nb, QK_K) << 4)


# --------------------------------------------------------------------------------------------------
# Q6_K
# --------------------------------------------------------------------------------------------------

class Q6_K(_KQuant):
    name = "q6_k"
    type_size = 210

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        nb = x.shape[0]
        xs = _sub_blocks(x, 16)
        scales, L = make_qx_quants(xs, 32)
        scales = scales.reshape(nb, 16)
        max_abs, max_scale = first_absmax(scales, axis=1)
        zero = max_abs < GROUP_MAX_EPS                   # the whole block is stored as zeros
        iscale = np.float32(-128.0) / np.where(zero, np.float32(1.0), max_scale)
        d = np.where(zero, np.float32(0.0), np.float32(1.0) / iscale)
        sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        sc = np.where(zero[:, None], np.int8(0), sc)
        dd = f16_round(d)[:, None] * sc.astype(F32)
        xg = x.reshape(nb, 16, 16)
        lq = _levels(xg / dd[:, :, None], -32, 31) + np.float32(32)
        L = np.where((dd != 0)[:, :, None], lq, _from_sub_blocks(L, nb).reshape(nb, 16, 16))
        L = np.where(zero[:, None, None], np.float32(0.0), L)
        q = L.astype(np.uint8).reshape(nb, 2, 4, 32)     # [half, quarter, l]
        out = np.empty((nb, self.type_size), np.uint8)
        ql = np.empty((nb, 2, 2, 32), np.uint8)
        ql[:, :, 0] = (q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4)
        ql[:, :, 1] = (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)
        qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
        out[:, 0:128] = ql.reshape(nb, 128)
        out[:, 128:192] = qh.reshape(nb, 64)
        out[:, 192:208] = sc.view(np.uint8)
        out[:, 208:210] = _f16(d)
        return out

    def _dequantize(self, blocks: np.ndarray) -> np.ndarray:
        nb = blocks.shape[0]
        d = _get_f16(blocks, 208)
        sc = blocks[:, 192:208].view(np.int8).astype(F32)
        ql = blocks[:, 0:128].reshape(nb, 2, 2, 32)
        qh = blocks[:, 128:192].reshape(nb, 2, 32)
        q = np.empty((nb, 2, 4, 32), np.uint8)
        q[:, :, 0] = (ql[:, :, 0] & 0xF) | ((qh & 3) << 4)
        q[:, :, 1] = (ql[:, :, 1] & 0xF) | (((qh >> 2) & 3) << 4)
        q[:, :, 2] = (ql[:, :, 0] >> 4) | (((qh >> 4) & 3) << 4)
        q[:, :, 3] = (ql[:, :, 1] >> 4) | (((qh >> 6) & 3) << 4)
        qv = (q.astype(np.int8) - np.int8(32)).astype(F32).reshape(nb, 16, 16)
        return ((d * sc)[:, :, None] * qv).reshape(nb, QK_K)
