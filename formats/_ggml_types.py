"""Tables shared by the GGUF and legacy GGML formats: ggml_type ids and llama_ftype.

A tensor's type in GGUF and in ggml/ggmf/ggjt is a ``ggml_type`` id (FORMATS.md G(a)).  Block and
type sizes are not repeated here: they come from mconv's dtype table (``get_dtype(name)``), which
uses the same ``(block_size, type_size)`` pairs as ggml.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from mconv.plugins import DType, FormatError, UnsupportedError, all_dtypes, llama_file_type

#: ggml_type id -> mconv dtype name, for the types mconv stores
GGML_TYPE_TO_DTYPE: dict[int, str] = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0",
    10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k",
    24: "i8", 25: "i16", 26: "i32", 27: "i64", 28: "f64", 30: "bf16",
}
DTYPE_TO_GGML_TYPE: dict[str, int] = {v: k for k, v in GGML_TYPE_TO_DTYPE.items()}

#: ggml's names of every id below GGML_TYPE_COUNT (for messages)
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_2", 5: "Q4_3", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
    18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16",
    26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8",
    34: "TQ1_0", 35: "TQ2_0", 36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8", 39: "MXFP4", 40: "NVFP4",
    41: "Q1_0", 42: "Q2_0",
}
#: ids ggml removed (block size 0 in ggml's type traits: the C reader rejects them)
GGML_REMOVED: frozenset[int] = frozenset({4, 5, 31, 32, 33, 36, 37, 38})
GGML_TYPE_COUNT = 43

#: llama_ftype (general.file_type, and the legacy hparam ``ftype``): id -> llama.cpp's name
LLAMA_FTYPE_NAMES: dict[int, str] = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 4: "MOSTLY_Q4_1_SOME_F16",
    7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S",
    22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS", 24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S",
    27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S", 29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M",
    32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0", 37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4",
    40: "MOSTLY_Q1_0", 41: "MOSTLY_Q2_0",
}

#: the llama_ftype written for a model whose dominant tensor type is this dtype.  For K-quants the
#: "_M" mixes are what llama-quantize is normally asked for (q4_k_m...); q2_k has a single ftype.
DTYPE_TO_LLAMA_FTYPE: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
    "q2_k": 10, "q3_k": 12, "q4_k": 15, "q5_k": 17, "q6_k": 18, "bf16": 32,
}


#: the type most tensors of a llama_ftype have (llama.cpp's llama_ftype_get_default_type)
LLAMA_FTYPE_DTYPE: dict[int, str] = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k", 12: "q3_k",
    13: "q3_k", 14: "q4_k", 15: "q4_k", 16: "q5_k", 17: "q5_k", 18: "q6_k", 32: "bf16",
}


def dtype_for_ggml_type(type_id: int, tensor: str) -> DType:
    """The mconv dtype of a ggml type id, or a clear refusal (FormatError for ids that are not
    ggml types, UnsupportedError for real ggml types mconv has no kernels for)."""
    if not 0 <= type_id < GGML_TYPE_COUNT:
        raise FormatError(f"tensor {tensor!r} has unknown ggml type {type_id}")
    name = GGML_TYPE_NAMES[type_id]
    if type_id in GGML_REMOVED:
        raise FormatError(f"tensor {tensor!r} has ggml type {type_id} ({name}), which was removed from ggml")
    dtype_name = GGML_TYPE_TO_DTYPE.get(type_id)
    table = all_dtypes()
    if dtype_name is None or dtype_name not in table:
        raise UnsupportedError(f"tensor {tensor!r} has ggml type {type_id} ({name}), which mconv cannot read")
    return table[dtype_name]


def ggml_type_for_dtype(dtype: DType) -> int:
    try:
        return DTYPE_TO_GGML_TYPE[dtype.name]
    except KeyError:
        raise UnsupportedError(f"{dtype.name} has no ggml type") from None


def ggml_type_label(type_id: int) -> str:
    return GGML_TYPE_NAMES.get(type_id, str(type_id))


def dominant_dtype(tensors: Iterable[tuple[DType, int]]) -> Optional[str]:
    """The dtype holding the most elements among (dtype, numel) pairs (1-D norms hardly count);
    ties go to the first seen."""
    totals: dict[str, int] = {}
    for dt, n in tensors:
        totals[dt.name] = totals.get(dt.name, 0) + n
    if not totals:
        return None
    return max(totals, key=lambda k: totals[k])


def llama_ftype_for(tensors: Iterable[tuple[DType, int, int]], request: Optional[str] = None,
                    stored: Any = None) -> int:
    """general.file_type / legacy ``ftype``, given (dtype, numel, ndim) of every tensor: the
    ``--dtype`` request's llama_ftype when there is one; else the source's own file type when it
    still describes the tensors (it tells Q4_K_S from Q4_K_M); else the one of the dominant type of
    the 2-D tensors (1-D tensors stay f32 in quantized models, so they do not vote)."""
    if request is not None:
        ft = llama_file_type(request)
        if ft is not None:
            return ft
    items = list(tensors)
    matrices = [(dt, n) for dt, n, ndim in items if ndim >= 2] or [(dt, n) for dt, n, _ in items]
    dom = dominant_dtype(matrices) or "f32"
    if isinstance(stored, (int, np.integer)) and not isinstance(stored, bool) and \
            LLAMA_FTYPE_DTYPE.get(int(stored)) == dom:
        return int(stored)
    return DTYPE_TO_LLAMA_FTYPE.get(dom, 0)


def ftype_label(ftype: int) -> str:
    return LLAMA_FTYPE_NAMES.get(ftype, f"unknown ({ftype})")
