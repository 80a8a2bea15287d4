"""The numpy executor against an independent torch implementation of the llama forward pass (float64,
complex-number RoPE, repeat_interleave GQA, torch's causal SDPA), and the executor's extension points."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from testlib import GQA, MHA, random_model, random_weights

from mconv.core import registry
from mconv.core.arch import Architecture
from mconv.core.errors import ValidationError
from mconv.core.executor import OPS, Session, run
from mconv.core.hookspecs import hookimpl
from mconv.core.ir import Graph, Model, Node, tensor_from_array
from mconv.core.names import NameTable
from mconv.plugins import get_dtype

torch = pytest.importorskip("torch")

#: GQA with 4 query heads per kv head, head size 8, theta 1e6, eps 1e-6
GQA4 = dict(n_vocab=112, n_embd=64, n_layer=3, n_head=8, n_head_kv=2, n_ff=96, n_ctx=160, norm_eps=1e-6,
            rope_theta=1_000_000.0)


def torch_llama(w: dict[str, np.ndarray], hp: dict, tokens: np.ndarray) -> np.ndarray:
    """Meta's llama forward pass in float64: RoPE as complex rotation of (2i, 2i+1) pairs."""
    W = {k: torch.from_numpy(v.astype(np.float64)) for k, v in w.items()}
    T = len(tokens)
    n_embd, n_head, n_kv = hp["n_embd"], hp["n_head"], hp["n_head_kv"]
    hd = n_embd // n_head
    eps, theta = hp["norm_eps"], hp["rope_theta"]
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angles = torch.outer(torch.arange(T, dtype=torch.float64), freqs)
    rot = torch.polar(torch.ones_like(angles), angles)                   # (T, hd/2) complex128

    def rope(x: torch.Tensor, heads: int) -> torch.Tensor:
        c = torch.view_as_complex(x.reshape(T, heads, hd // 2, 2).contiguous())
        return torch.view_as_real(c * rot[:, None, :]).reshape(T, heads, hd)

    def norm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    x = W["token_embd.weight"][torch.from_numpy(np.asarray(tokens))]
    for b in range(hp["n_layer"]):
        p = f"blk.{b}."
        h = norm(x, W[p + "attn_norm.weight"])
        q = rope(h @ W[p + "attn_q.weight"].T, n_head).transpose(0, 1)
        k = rope(h @ W[p + "attn_k.weight"].T, n_kv).transpose(0, 1)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, n_kv, hd).transpose(0, 1)
        k = k.repeat_interleave(n_head // n_kv, dim=0)
        v = v.repeat_interleave(n_head // n_kv, dim=0)
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + att.transpose(0, 1).reshape(T, n_embd) @ W[p + "attn_output.weight"].T
        h = norm(x, W[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(h @ W[p + "ffn_gate.weight"].T)
        x = x + (gate * (h @ W[p + "ffn_up.weight"].T)) @ W[p + "ffn_down.weight"].T
    x = norm(x, W["output_norm.weight"])
    cls = W.get("output.weight", W["token_embd.weight"])
    return (x @ cls.T).numpy()


CASES = [
    pytest.param(GQA, False, id="gqa-untied"),
    pytest.param(GQA4, True, id="gqa4-tied-theta1e6-eps1e-6"),
    pytest.param(MHA, False, id="mha-untied-theta5e5-eps1e-6"),
    pytest.param(dict(MHA, rope_theta=10000.0, norm_eps=1e-5), True, id="mha-tied"),
]


@pytest.mark.parametrize("hp,tied", CASES)
def test_logits_match_torch(hp: dict, tied: bool) -> None:
    seed = 7
    model = random_model(hp, seed=seed, tied=tied)
    assert ("output.weight" in model.tensors) is not tied
    tokens = np.random.default_rng(1).integers(0, hp["n_vocab"], 72)
    tokens[0] = 1
    want = torch_llama(random_weights(hp, seed, tied), hp, tokens)
    assert np.abs(want).max() > 0.5                      # logits that say something

    s = Session(model)
    batched = s.logits(tokens)
    assert batched.dtype == np.float32 and batched.shape == (72, hp["n_vocab"])
    assert np.abs(batched - want).max() <= 1e-4

    s.reset()
    stepwise = np.concatenate([s.forward([t]) for t in tokens])
    assert s.pos == 72
    assert np.abs(stepwise - want).max() <= 1e-4

    s.reset()
    chunks = [tokens[:40], tokens[40:41], tokens[41:65], tokens[65:]]
    mixed = np.concatenate([s.forward(c) for c in chunks])
    assert np.abs(mixed - want).max() <= 1e-4
    s.reset()
    s.forward(tokens[:71])
    last = s.forward(tokens[71:], last_only=True)
    assert last.shape == (1, hp["n_vocab"]) and np.abs(last[0] - want[-1]).max() <= 1e-4


def test_quantized_and_half_weights_are_decoded_through_their_dtype() -> None:
    hp = GQA
    f16 = random_model(hp, dtype="f16", seed=2)
    w = {n: t.f32() for n, t in f16.tensors.items()}              # the f16 values, widened
    tokens = np.arange(64) % hp["n_vocab"]
    want = torch_llama(w, hp, tokens)
    assert np.abs(Session(f16).logits(tokens) - want).max() <= 1e-4


def test_out_of_vocabulary_token_is_refused() -> None:
    s = Session(random_model(GQA))
    v = GQA["n_vocab"]
    with pytest.raises(ValidationError, match=f"token id {v} is outside the vocabulary of {v} tokens"):
        s.forward([1, v])
    assert s.pos == 0


def test_unknown_op_names_the_node() -> None:
    model = random_model(GQA)
    g = model_graph = Session(model).graph
    nodes = list(g.nodes)
    nodes[5] = Node("frobnicate", nodes[5].inputs, nodes[5].outputs, name="blk.0.frob")
    with pytest.raises(ValidationError) as e:
        Session(model, graph=Graph(tuple(nodes), g.inputs, g.outputs, g.weights))
    assert str(e.value).startswith("node 'blk.0.frob' uses the unknown op 'frobnicate' (known ops: add, attention")
    unnamed = Graph((Node("nope", ("tokens",), ("y",)),), ("tokens",), ("y",))
    with pytest.raises(ValidationError, match=r"node #0 \(nope -> y\) uses the unknown op 'nope'"):
        run(unnamed, model, {"tokens": np.array([1])})
    assert model_graph.nodes[5].op != "frobnicate"


def test_missing_weight_and_missing_input_are_named() -> None:
    model = random_model(GQA)
    del model.tensors["blk.1.ffn_up.weight"]
    with pytest.raises(ValidationError, match=r"node 'blk.1.up': input 'blk.1.ffn_up.weight' is neither"):
        Session(model).logits([1, 2])


# -- a plugin architecture with its own op ---------------------------------------------------------------

def _toy_graph(hp: dict) -> Graph:
    return Graph(
        nodes=(
            Node("embedding", ("tokens", "emb.weight"), ("x",), name="emb"),
            Node("cube_plus", ("x",), ("y",), {"plus": hp["plus"]}, name="cube"),
            Node("matmul", ("y", "emb.weight"), ("logits",), name="out"),
        ),
        inputs=("tokens", "pos", "output_rows"), outputs=("logits",), weights=("emb.weight",))


def _cube_plus(ctx, x, *, plus):  # noqa: ANN001, ANN202 - a kernel as a plugin writes it
    return x * x * x + np.float32(plus)


TOY_TABLE = {"arch": "toy", "conventions": ["gguf"], "tensors": [{"gguf": "emb.weight"}]}


def _install(monkeypatch: pytest.MonkeyPatch, name: str, **hooks: object) -> None:
    mod = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(mod, k, hookimpl(v))
    monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(registry, "DEFAULT_PLUGINS", (*registry.DEFAULT_PLUGINS, name))
    registry.reset_registry()


def test_plugin_architecture_with_custom_op_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def register_architectures(register):  # noqa: ANN001, ANN202
        register(Architecture(name="toy", table=NameTable(TOY_TABLE), build_graph=_toy_graph,
                              ops={"cube_plus": _cube_plus}))

    _install(monkeypatch, "mconv_test_toy_arch", register_architectures=register_architectures)
    assert "cube_plus" not in OPS
    emb = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    model = Model("toy", {"plus": 0.5, "n_vocab": 10}, {"emb.weight": tensor_from_array("emb.weight", emb,
                                                                                         get_dtype("f32"))})
    got = Session(model).logits([3, 1, 4])
    x = emb[[3, 1, 4]]
    np.testing.assert_allclose(got, (x ** 3 + 0.5) @ emb.T, rtol=1e-5, atol=1e-5)


def test_model_of_unregistered_architecture_is_refused() -> None:
    with pytest.raises(ValidationError, match="no registered architecture 'mamba' can execute this model"):
        Session(Model("mamba", {}, {}))


def test_weights_beyond_the_cache_budget_are_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    from mconv.core import executor

    monkeypatch.setattr(executor, "CHUNK_BYTES", 1000)        # chunks of 3 rows of 64 or 96 floats
    model = random_model(GQA4, dtype="f16", seed=4)
    tokens = np.arange(1, 70) % GQA4["n_vocab"]
    cached = Session(model)
    streamed = Session(model, cache_bytes=0)
    want = cached.logits(tokens)
    got = streamed.logits(tokens)
    assert not cached.ctx.streaming and streamed.ctx.streaming
    w = streamed.ctx.weight("blk.0.attn_q.weight")
    assert isinstance(w, executor.StreamedWeight) and w.step == 3
    assert isinstance(streamed.ctx.weight("blk.0.attn_norm.weight"), np.ndarray)   # 1-D: always decoded
    assert np.abs(got - want).max() <= 1e-5
    streamed.reset()
    steps = np.concatenate([streamed.forward([t]) for t in tokens[:5]])
    assert np.abs(steps - want[:5]).max() <= 1e-5
