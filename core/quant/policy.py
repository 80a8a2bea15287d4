"""Which dtype each tensor gets under an explicit ``--dtype``.

Plain float targets cast every float tensor.  Quantizing targets keep 1-D tensors in f32 and fall
back to a type the row length allows when a row is not a whole number of blocks.
"""

from __future__ import annotations

from typing import Optional

from ..dtypes import DType, get_dtype
from ..ir import Model, Tensor

#: when a row is not a multiple of the block size, the next type to try (llama.cpp's fallbacks)
FALLBACK: dict[str, str] = {
    "q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0",
    "q4_0": "f16", "q4_1": "f16", "q5_0": "f16", "q5_1": "f16", "q8_0": "f16",
}

#: dtype mixes: name -> base type of the mix
MIXES: dict[str, str] = {}


def is_request_quantizing(request: str) -> bool:
    base = MIXES.get(request.lower(), request.lower())
    return get_dtype(base).is_quantized


def choose_dtype(model: Model, t: Tensor, request: str) -> Optional[DType]:
    """The dtype ``t`` gets under ``--dtype request``; None keeps it as it is."""
    if not (t.dtype.is_float or t.dtype.is_quantized):
        return None                       # integer and bool tensors are never cast
    base = get_dtype(MIXES.get(request.lower(), request.lower()))
    if not base.is_quantized:
        return base
    if len(t.shape) < 2:
        return get_dtype("f32")
    dt = base
    while t.n_cols % dt.block_size:
        nxt = FALLBACK.get(dt.name)
        if nxt is None:
            return get_dtype("f16")
        dt = get_dtype(nxt)
    return dt
