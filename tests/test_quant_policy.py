"""The per-tensor type policy under a quantizing --dtype (core/quant/policy.py): llama.cpp's
llama_tensor_get_type for llama without an imatrix.  The golden table tests/golden/llama_quant_types.json
is what llama-quantize (llama-cpp-python 0.3.36) itself chose for the same models
(tests/golden/make_policy_golden.py)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest

from mconv.core.dtypes import get_dtype
from mconv.core.format import Format, WriteContext
from mconv.core.ir import Model, tensor_from_array, tensor_from_raw
from mconv.core.plan import make_plan
from mconv.core.quant import policy

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "llama_quant_types.json")
with open(GOLDEN) as _fh:
    TABLE = json.load(_fh)

#: llama_ftype name -> the --dtype names that follow it
REQUESTS = {"Q4_0": ["q4_0"], "Q4_1": ["q4_1"], "Q8_0": ["q8_0"], "Q5_0": ["q5_0"], "Q5_1": ["q5_1"],
            "Q2_K": ["q2_k"], "Q3_K_S": ["q3_k", "q3_k_s"], "Q3_K_M": ["q3_k_m"], "Q3_K_L": ["q3_k_l"],
            "Q4_K_S": ["q4_k", "Q4_K_S"], "Q4_K_M": ["q4_k_m", "Q4_K_M"], "Q5_K_S": ["q5_k", "q5_k_s"],
            "Q5_K_M": ["q5_k_m"], "Q6_K": ["q6_k"]}


def shape_model(hp: dict[str, Any], dtype: str = "f32") -> Model:
    """A llama model with these hparams whose tensors are zeros (only names and shapes matter)."""
    from mconv.core.arch.llama import expected_shapes

    dt = get_dtype(dtype)
    tensors = {}
    for name, shape in expected_shapes(hp).items():
        if hp.get("tied") and name == "output.weight":
            continue
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        tensors[name] = tensor_from_raw(name, shape, dt, np.zeros(rows * dt.row_bytes(shape[-1]), np.uint8))
    hparams = {k: v for k, v in hp.items() if k != "tied"}
    return Model("llama", hparams, tensors, hparam_origin={k: "test" for k in hparams}, format="memory")


def chosen(model: Model, request: str) -> dict[str, str]:
    out = {}
    for name, t in model.tensors.items():
        dt = policy.choose_dtype(model, t, request)
        out[name] = (dt or t.dtype).name
    return out


@pytest.mark.parametrize("model_name", sorted(TABLE["models"]))
def test_policy_matches_llama_quantize(model_name: str) -> None:
    entry = TABLE["models"][model_name]
    model = shape_model(entry["hparams"])
    assert sorted(model.tensors) == entry["tensors"]
    for ftype, types in entry["types"].items():
        assert not types.startswith("error"), types
        expected = dict(zip(entry["tensors"], types.split()))
        for request in REQUESTS[ftype]:
            got = chosen(model, request)
            diff = {n: (got[n], expected[n]) for n in expected if got[n] != expected[n]}
            assert not diff, f"{model_name} --dtype {request} ({ftype}): mconv vs llama.cpp {diff}"
            assert policy.file_type(request) == TABLE["ftypes"][ftype]


GQA4 = TABLE["models"]["gqa4"]["hparams"]        # 4 layers, n_embd 256, 8 heads / 2 kv heads, n_ff 512
ODD = TABLE["models"]["odd_rows"]["hparams"]      # n_embd 160 (not a multiple of 256), n_ff 200


def _layer_table(types: dict[str, str], n_layer: int) -> list[tuple[str, ...]]:
    cols = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm")
    return [tuple(types[f"blk.{b}.{c}.weight"] for c in cols) for b in range(n_layer)]


def test_q4_k_m_on_a_4_layer_gqa_model() -> None:
    types = chosen(shape_model(GQA4), "q4_k_m")
    assert (types["token_embd.weight"], types["output.weight"], types["output_norm.weight"]) == \
        ("q4_k", "q6_k", "f32")
    # use_more_bits(i, 4) holds for layers 2 and 3: attn_v and ffn_down get Q6_K there
    #            attn_q   attn_k  attn_v  attn_out ffn_gate ffn_up  ffn_down attn_norm
    assert _layer_table(types, 4) == [
        ("q4_k", "q4_k", "q4_k", "q4_k", "q4_k", "q4_k", "q4_k", "f32"),
        ("q4_k", "q4_k", "q4_k", "q4_k", "q4_k", "q4_k", "q4_k", "f32"),
        ("q4_k", "q4_k", "q6_k", "q4_k", "q4_k", "q4_k", "q6_k", "f32"),
        ("q4_k", "q4_k", "q6_k", "q4_k", "q4_k", "q4_k", "q6_k", "f32"),
    ]


def test_q5_k_m_and_q2_k_on_a_4_layer_gqa_model() -> None:
    model = shape_model(GQA4)
    q5 = chosen(model, "q5_k_m")
    assert [q5[f"blk.{b}.attn_v.weight"] for b in range(4)] == ["q5_k", "q5_k", "q6_k", "q6_k"]
    assert [q5[f"blk.{b}.ffn_down.weight"] for b in range(4)] == ["q5_k", "q5_k", "q6_k", "q6_k"]
    assert q5["output.weight"] == "q6_k" and q5["token_embd.weight"] == "q5_k"
    q2 = chosen(model, "q2_k")
    # n_gqa = 8/2 = 4 >= 4: attn_v gets Q4_K (Q3_K for an MHA model); ffn_down and attn_output Q3_K
    assert {q2[f"blk.{b}.attn_v.weight"] for b in range(4)} == {"q4_k"}
    assert {q2[f"blk.{b}.ffn_down.weight"] for b in range(4)} == {"q3_k"}
    assert {q2[f"blk.{b}.attn_output.weight"] for b in range(4)} == {"q3_k"}
    mha = chosen(shape_model(TABLE["models"]["mha"]["hparams"]), "q2_k")
    assert {mha[f"blk.{b}.attn_v.weight"] for b in range(4)} == {"q3_k"}


def test_tied_embeddings_take_the_output_rule() -> None:
    types = chosen(shape_model(dict(GQA4, tied=True)), "q4_0")
    assert types["token_embd.weight"] == "q6_k" and "output.weight" not in types
    assert chosen(shape_model(GQA4), "q4_0")["token_embd.weight"] == "q4_0"
    assert chosen(shape_model(GQA4), "q8_0")["output.weight"] == "q8_0"


def test_fallbacks_when_rows_are_not_whole_blocks() -> None:
    """Rows of 160 values (a multiple of 32, not of 256): q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0,
    output -> q8_0; ffn_down rows of 200 values (not a multiple of 32) -> f16."""
    model = shape_model(ODD)
    q4 = chosen(model, "q4_k_m")
    assert q4["blk.0.attn_q.weight"] == "q5_0" and q4["blk.0.attn_v.weight"] == "q5_0"
    assert q4["blk.3.attn_v.weight"] == "q8_0"             # q6_k (use_more_bits) -> q8_0
    assert q4["output.weight"] == "q8_0" and q4["token_embd.weight"] == "q5_0"
    assert {q4[f"blk.{b}.ffn_down.weight"] for b in range(4)} == {"f16"}
    assert chosen(model, "q5_k")["blk.1.ffn_up.weight"] == "q5_1"
    assert chosen(model, "q6_k")["blk.1.ffn_up.weight"] == "q8_0"
    assert chosen(model, "q2_k")["blk.1.ffn_up.weight"] == "q4_0"
    assert chosen(model, "q4_0")["blk.1.ffn_down.weight"] == "f16"
    assert chosen(model, "q4_0")["blk.1.ffn_up.weight"] == "q4_0"


def test_non_quantizing_requests_cast_every_float_tensor() -> None:
    model = shape_model(GQA4)
    assert set(chosen(model, "f16").values()) == {"f16"}
    assert set(chosen(model, "BF16").values()) == {"bf16"}
    assert policy.is_request_quantizing("q4_k_m") and not policy.is_request_quantizing("f16")
    assert policy.file_type("f16") == 1 and policy.file_type("bf16") == 32 and policy.file_type("f64") is None


def test_unknown_request_is_refused() -> None:
    from mconv.core.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="unknown dtype 'q4_k_x'"):
        policy.is_request_quantizing("q4_k_x")


class _AnyDtypeFormat(Format):
    name = "anydtype"
    dtypes = frozenset(["f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"])


def test_already_quantized_tensors_are_kept_byte_for_byte() -> None:
    """A q4_0 model under --dtype q4_0: every q4_0 tensor keeps its source (no re-quantization);
    only output.weight (q4_0 here, q6_k by llama.cpp's rule) is converted."""
    hp = dict(GQA4)
    rng = np.random.default_rng(0)
    from mconv.core.arch.llama import expected_shapes

    tensors = {}
    for name, shape in expected_shapes(hp).items():
        values = rng.standard_normal(shape).astype(np.float32)
        tensors[name] = tensor_from_array(name, values, get_dtype("q4_0" if len(shape) == 2 else "f32"))
    model = Model("llama", hp, tensors, hparam_origin={k: "test" for k in hp}, format="memory")
    plan = make_plan(model, _AnyDtypeFormat(), WriteContext(), dtype="q4_0")
    for name, t in plan.model.tensors.items():
        src = model.tensors[name]
        if name == "output.weight":
            assert t.dtype.name == "q6_k"
            continue
        assert t.dtype == src.dtype and t.source is src.source, name
    assert plan.casts == {("q4_0", "q6_k"): ["output.weight"]}
