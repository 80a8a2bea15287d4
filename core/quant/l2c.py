"""llama2.c's int8 groups (``l2c_q8``): what ``export.py --version 2`` writes and ``runq.c`` reads.

A group of GS consecutive values (row-major) becomes GS int8 values and one float32 scale:
scale = max|w| / 127 in float32, q = round-half-to-even(w / scale) in [-127, 127] (export.py's
``quantize_q80``: torch.round on float32, which numpy float32 reproduces bit for bit).  A group whose
scale is 0 (all zeros, or a max|w| so small that max|w|/127 underflows) gets q = 0: torch would cast
0/0 = NaN to int8, which is 0 on x86 but undefined in C, so the value is written explicitly.
Dequantized value = q * scale in float32 (runq.c's ``dequantize``).

The group size varies per file (the exporter picks 64 and halves it until it divides dim), so the
type is parametric: ``get_dtype("l2c_q8")`` has GS 64 and ``variant(GS)`` / ``"l2c_q8@GS"`` any other.

IR block layout (one block = one group), chosen here because the file keeps each tensor as two
runs ([all int8 | all scales]) that a row-chunked IR cannot hold as one byte range::

    bytes 0 .. GS-1   int8 q[0..GS-1]
    bytes GS .. GS+3  float32 scale, little-endian          (type_size = GS + 4)

The llama2.c writer splits the blocks back into the file's two runs; the reader interleaves them.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import F32, BlockDType
from ..errors import QuantError

DEFAULT_GROUP_SIZE = 64


def quantize_q80(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_groups, GS) float32 -> (int8 q (n_groups, GS), float32 scales (n_groups,)).

    Temporaries are kept to one float32 copy of the chunk: max|w| comes from two reductions
    (+ 0.0 turns a -0.0 maximum into the +0.0 that torch's abs gives)."""
    w = np.asarray(values, dtype=F32)
    amax = np.maximum(w.max(axis=1), -w.min(axis=1)) + np.float32(0)
    if not np.all(np.isfinite(amax)):
        raise QuantError("l2c_q8 cannot quantize non-finite values (inf or NaN)")
    scale = (amax / np.float32(127)).astype(F32)
    zero = scale == 0
    q = w / np.where(zero, np.float32(1), scale)[:, None]
    np.round(q, out=q)
    q[zero] = 0
    return q.astype(np.int8), scale


class L2CQ8(BlockDType):
    name = "l2c_q8"
    block_size = DEFAULT_GROUP_SIZE
    type_size = DEFAULT_GROUP_SIZE + 4
    parametric = True

    def type_size_for(self, block_size: int) -> int:
        return block_size + 4

    def quantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        q, scale = quantize_q80(blocks)
        out = np.empty((blocks.shape[0], self.type_size), dtype=np.uint8)
        out[:, :self.block_size] = q.view(np.uint8)
        out[:, self.block_size:] = scale.astype("<f4").view(np.uint8).reshape(-1, 4)
        return out

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        gs = self.block_size
        q = np.ascontiguousarray(blocks[:, :gs]).view(np.int8)
        scale = np.ascontiguousarray(blocks[:, gs:gs + 4]).view("<f4").reshape(-1, 1)
        with np.errstate(all="ignore"):       # inf/NaN scales of a hostile file give inf/NaN, silently
            return (q.astype(F32) * scale).astype(F32, copy=False)
