"""Which dtype each tensor gets under an explicit ``--dtype``.

Non-quantizing targets (f32, f16, bf16, ...) cast every float tensor.  A quantizing target follows
llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp as of llama.cpp 0c1e57098, the copy inside
llama-cpp-python 0.3.36) for the llama architecture without an imatrix: each ``--dtype`` names a
``llama_ftype`` (table FTYPES), whose default type every 2-D weight gets unless one of the few rules
below bumps it, and a row that is not a whole number of blocks falls back (table FALLBACK).  1-D
tensors stay f32 (DESIGN.md; llama.cpp keeps a 1-D tensor's type, which converters write as f32).
A tensor whose current type equals the chosen one is copied byte for byte by the planner.

tests/golden/llama_quant_types.json records what llama-quantize itself chose for a few models
(tests/golden/make_policy_golden.py); tests/test_quant_policy.py checks this module against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..dtypes import DType, get_dtype
from ..ir import Model, Tensor

# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FType:
    """A llama_ftype: its llama.h value, its name, and the ggml type its tensors default to
    (llama_ftype_get_default_type)."""

    value: int
    name: str
    default: str


#: --dtype name -> llama_ftype.  A plain K type names the "_S" (small) ftype, the one without
#: per-layer bumps beyond the output rule (llama-quantize's own "Q4_K" alias means Q4_K_M instead).
FTYPES: dict[str, FType] = {
    "q4_0": FType(2, "Q4_0", "q4_0"),
    "q4_1": FType(3, "Q4_1", "q4_1"),
    "q8_0": FType(7, "Q8_0", "q8_0"),
    "q5_0": FType(8, "Q5_0", "q5_0"),
    "q5_1": FType(9, "Q5_1", "q5_1"),
    "q2_k": FType(10, "Q2_K", "q2_k"),
    "q3_k_s": FType(11, "Q3_K_S", "q3_k"),
    "q3_k_m": FType(12, "Q3_K_M", "q3_k"),
    "q3_k_l": FType(13, "Q3_K_L", "q3_k"),
    "q4_k_s": FType(14, "Q4_K_S", "q4_k"),
    "q4_k_m": FType(15, "Q4_K_M", "q4_k"),
    "q5_k_s": FType(16, "Q5_K_S", "q5_k"),
    "q5_k_m": FType(17, "Q5_K_M", "q5_k"),
    "q6_k": FType(18, "Q6_K", "q6_k"),
}
FTYPES["q3_k"] = FTYPES["q3_k_s"]
FTYPES["q4_k"] = FTYPES["q4_k_s"]
FTYPES["q5_k"] = FTYPES["q5_k_s"]

#: dtype mixes (--dtype names that are not a dtype): name -> the base type of the mix
MIXES: dict[str, str] = {name: ft.default for name, ft in FTYPES.items() if name != ft.default}

#: general.file_type (llama_ftype) of the non-quantizing targets
PLAIN_FILE_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "bf16": 32}

#: tensor_type_fallback: when a row is not a multiple of the type's block, the type to use instead;
#: if that does not fit either (or the type has no entry), F16 ("must use F16 due to unusual shape")
FALLBACK: dict[str, str] = {
    "q2_k": "q4_0", "q3_k": "q4_0",     # case GGML_TYPE_Q2_K / Q3_K: return_type = GGML_TYPE_Q4_0
    "q4_k": "q5_0",                     # case GGML_TYPE_Q4_K: Q5_0
    "q5_k": "q5_1",                     # case GGML_TYPE_Q5_K: Q5_1
    "q6_k": "q8_0",                     # case GGML_TYPE_Q6_K: Q8_0
}

# --------------------------------------------------------------------------------------------------
# the rules
# --------------------------------------------------------------------------------------------------

_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _category(name: str) -> str:
    """tensor_get_category: exact names first, then substrings, in llama.cpp's order."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),  # category_is_attn_v
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"),
                     ("attn_output.weight", "attn_output"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                     ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _allows_quantization(name: str) -> bool:
    """tensor_allows_quantization for llama (2-D tensors only get here): names ending in 'weight'
    that are not norms (the other exclusions name tensors llama models do not have)."""
    return name.endswith("weight") and "_norm.weight" not in name


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer_of(name: str) -> int:
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else -1


def _position(model: Model, t: Tensor, category: str) -> tuple[int, int]:
    """(index, count) of ``t`` among the model's tensors of this category in llama.cpp's order:
    the loader's weights_map sorts by layer number, then name; the counters i_attention_wv,
    i_ffn_down... count in that order."""
    same = sorted((_layer_of(n), n) for n in model.tensors if _category(n) == category
                  and len(model.tensors[n].shape) >= 2 and _allows_quantization(n))
    return same.index((_layer_of(t.name), t.name)), len(same)


def _n_layer(model: Model) -> int:
    n = model.hparams.get("n_layer")
    if isinstance(n, int) and n > 0:
        return n
    return 1 + max((_layer_of(name) for name in model.tensors), default=-1)


def _llama_type(model: Model, t: Tensor, ft: FType) -> str:
    """llama_tensor_get_type_impl for LLM_ARCH_LLAMA, no imatrix, n_expert <= 1, not pure, with the
    ftypes of FTYPES (the IQ/TQ/MXFP4 branches cannot trigger)."""
    new = ft.default
    cat = _category(t.name)
    n_head = int(model.hparams.get("n_head") or 0)
    n_head_kv = int(model.hparams.get("n_head_kv") or n_head)
    n_gqa = n_head // n_head_kv if n_head_kv else 0                  # hparams.n_gqa()
    n_layer = _n_layer(model)
    tied = "output.weight" not in model.tensors                       # qs.has_tied_embeddings
    f = ft.name

    if cat == "output" or (tied and cat == "token_embd"):
        # nx % qk_k != 0 -> Q8_0; else anything but Q8_0 becomes Q6_K
        if t.n_cols % get_dtype(new).block_size != 0:
            new = "q8_0"
        elif new != "q8_0":
            new = "q6_k"
    elif cat == "token_embd":
        pass                                                          # rules only for IQ/TQ/Q2_0 ftypes
    elif cat == "attn_v":
        i, n = _position(model, t, "attn_v")                          # qs.i_attention_wv, qs.n_attention_wv
        if f == "Q2_K":
            new = "q4_k" if n_gqa >= 4 else "q3_k"
        elif f == "Q3_K_M":
            new = "q5_k" if i < 2 else "q4_k"
        elif f == "Q3_K_L":
            new = "q5_k"
        elif f in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            new = "q6_k"
        elif f == "Q4_K_S" and i < 4:
            new = "q5_k"
        # LLM_TYPE_70B (llama with 80 layers and GQA): 8 heads share attn_v, so give it more bits
        if n_layer == 80 and n_head != n_head_kv and new in ("q3_k", "q4_k"):
            new = "q5_k"
    elif cat == "ffn_down":
        i, _ = _position(model, t, "ffn_down")                        # qs.i_ffn_down; n = n_layer
        if f == "Q2_K":
            new = "q3_k"
        elif f == "Q3_K_M":
            new = "q5_k" if i < n_layer // 16 else "q4_k"             # arch != FALCON
        elif f == "Q3_K_L":
            new = "q5_k"
        elif f == "Q4_K_M":
            if use_more_bits(i, n_layer):
                new = "q6_k"
        elif f == "Q5_K_M" and use_more_bits(i, n_layer):
            new = "q6_k"
        elif f == "Q4_K_S" and i < n_layer // 8:
            new = "q5_k"
    elif cat == "attn_output":                                        # arch != FALCON, n_expert != 8
        if f == "Q2_K":
            new = "q3_k"
        elif f == "Q3_K_M":
            new = "q4_k"
        elif f == "Q3_K_L":
            new = "q5_k"
    # attn_k, attn_q, ffn_gate, ffn_up: rules only for IQ ftypes / MoE models
    return new


def _fallback(name: str, n_cols: int) -> DType:
    """tensor_type_fallback: a row must be a whole number of blocks."""
    dt = get_dtype(name)
    if n_cols % dt.block_size == 0:
        return dt
    nxt = FALLBACK.get(name)
    if nxt is not None and n_cols % get_dtype(nxt).block_size == 0:
        return get_dtype(nxt)
    return get_dtype("f16")


# --------------------------------------------------------------------------------------------------
# API used by the planner and writers
# --------------------------------------------------------------------------------------------------

def is_request_quantizing(request: str) -> bool:
    """Whether ``--dtype request`` quantizes (unknown names raise UnsupportedError)."""
    base = MIXES.get(request.lower(), request.lower())
    return get_dtype(base).is_quantized


def file_type(request: str) -> Optional[int]:
    """general.file_type (llama_ftype) a GGUF written under ``--dtype request`` declares, if known."""
    key = request.lower()
    if key in FTYPES:
        return FTYPES[key].value
    return PLAIN_FILE_TYPES.get(key)


def choose_dtype(model: Model, t: Tensor, request: str) -> Optional[DType]:
    """The dtype ``t`` gets under ``--dtype request``; None keeps it as it is."""
    if not (t.dtype.is_float or t.dtype.is_quantized):
        return None                                    # integer and bool tensors are never cast
    key = request.lower()
    base = get_dtype(MIXES.get(key, key))
    if not base.is_quantized:
        return base
    if len(t.shape) < 2:
        return get_dtype("f32")
    ft = FTYPES.get(key)
    if ft is None:                                     # a block type llama.cpp has no ftype for
        return _fallback(base.name, t.n_cols)
    if not _allows_quantization(t.name):
        return t.dtype                                 # llama.cpp copies it unchanged
    return _fallback(_llama_type(model, t, ft), t.n_cols)
