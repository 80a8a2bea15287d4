"""The llama architecture: its naming table and the shape rules its tensors follow.

Registered through the same ``register_architectures`` hook a third-party plugin uses."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from ..errors import ValidationError
from ..hookspecs import hookimpl
from ..ir import Graph, Model, Node
from ..names import table
from . import Architecture


def expected_shapes(hp: dict) -> dict[str, tuple[int, ...]]:
    """Canonical name -> numpy shape for a llama model with these hparams."""
    return dict(iter_expected_shapes(hp))


def iter_expected_shapes(hp: Mapping[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(canonical name, numpy shape) pairs in canonical order, one block at a time (a checker stops
    at the first missing tensor instead of building a table for a hostile n_layer of 2^31)."""
    n_embd, n_head, n_head_kv = hp["n_embd"], hp["n_head"], hp["n_head_kv"]
    head_dim = n_embd // n_head
    yield "token_embd.weight", (hp["n_vocab"], n_embd)
    yield "output_norm.weight", (n_embd,)
    yield "output.weight", (hp["n_vocab"], n_embd)
    for b in range(hp["n_layer"]):
        p = f"blk.{b}."
        yield p + "attn_norm.weight", (n_embd,)
        yield p + "attn_q.weight", (n_head * head_dim, n_embd)
        yield p + "attn_k.weight", (n_head_kv * head_dim, n_embd)
        yield p + "attn_v.weight", (n_head_kv * head_dim, n_embd)
        yield p + "attn_output.weight", (n_embd, n_head * head_dim)
        yield p + "ffn_norm.weight", (n_embd,)
        yield p + "ffn_gate.weight", (hp["n_ff"], n_embd)
        yield p + "ffn_down.weight", (n_embd, hp["n_ff"])
        yield p + "ffn_up.weight", (hp["n_ff"], n_embd)


def check_model(model: Model) -> None:
    """Every llama tensor present with the shape its hparams imply (output.weight optional)."""
    hp = model.hparams
    for key in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff"):
        if key not in hp:
            return  # hparam resolution already refused what it had to; nothing to check against
        if not isinstance(hp[key], int) or hp[key] <= 0:
            raise ValidationError(f"hparam {key} = {hp[key]!r} must be a positive integer")
    if hp["n_embd"] % hp["n_head"] or hp["n_head"] % hp["n_head_kv"]:
        raise ValidationError(f"n_embd {hp['n_embd']}, n_head {hp['n_head']} and n_head_kv {hp['n_head_kv']} "
                              "do not divide evenly")
    if (hp["n_embd"] // hp["n_head"]) % 2:
        raise ValidationError(f"head size {hp['n_embd'] // hp['n_head']} is odd; RoPE rotates pairs")
    if model.tokenizer is not None and len(model.tokenizer) > hp["n_vocab"]:
        raise ValidationError(f"the tokenizer has {len(model.tokenizer)} tokens but the embedding only "
                              f"{hp['n_vocab']} rows")
    optional = table(model.arch).optional
    for name, shape in iter_expected_shapes(hp):
        t = model.tensors.get(name)
        if t is None:
            if name not in optional:
                raise ValidationError(f"tensor {name} is missing", tensor=name)
            continue
        if tuple(t.shape) != shape:
            raise ValidationError(f"shape {tuple(t.shape)} does not match the hparams, which imply {shape}",
                                  tensor=name)


def build_graph(hp: Mapping[str, Any]) -> Graph:
    """One forward step of a llama model over named values (executor ops, see core/executor.py).

    Graph inputs: ``tokens`` (T ids), ``pos`` (position of the first one; the KV cache holds ``pos``
    earlier positions) and ``output_rows`` (which rows get logits: all, or the last for generation).
    Per block: RMSNorm (model eps) -> Q/K/V -> RoPE on Q and K (Meta interleaved pairs, model theta)
    -> KV cache append -> causal attention (query head h reads kv head h // (n_head / n_head_kv))
    -> output projection -> residual; RMSNorm -> down(silu(gate(x)) * up(x)) -> residual.  Then the
    final norm and the classifier: ``output.weight``, or ``token_embd.weight`` when the model has none
    (tied embeddings).  Output: ``logits`` (rows, n_vocab).
    """
    try:
        n_embd, n_head, n_layer = int(hp["n_embd"]), int(hp["n_head"]), int(hp["n_layer"])
        n_head_kv = int(hp.get("n_head_kv", n_head))
    except KeyError as e:
        raise ValidationError(f"hparam {e.args[0]} is needed to build the llama graph")
    if n_head <= 0 or n_head_kv <= 0 or n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise ValidationError(f"n_embd {n_embd}, n_head {n_head} and n_head_kv {n_head_kv} do not make whole, "
                              "even-sized heads shared evenly by the kv heads")
    head_dim = n_embd // n_head
    eps = float(hp.get("norm_eps", 1e-5))
    theta = float(hp.get("rope_theta", 10000.0))
    nodes: list[Node] = [Node("embedding", ("tokens", "token_embd.weight"), ("x.0",), name="token_embd")]
    x = "x.0"
    for b in range(n_layer):
        p = f"blk.{b}."

        def n(op: str, inputs: tuple[str, ...], out: str, **attrs: Any) -> None:
            nodes.append(Node(op, inputs, (p + out,), attrs, name=p + out))

        n("rms_norm", (x, p + "attn_norm.weight"), "attn_norm", eps=eps)
        n("matmul", (p + "attn_norm", p + "attn_q.weight"), "q")
        n("matmul", (p + "attn_norm", p + "attn_k.weight"), "k")
        n("matmul", (p + "attn_norm", p + "attn_v.weight"), "v")
        n("rope", (p + "q", "pos"), "q_rope", n_head=n_head, head_dim=head_dim, theta=theta)
        n("rope", (p + "k", "pos"), "k_rope", n_head=n_head_kv, head_dim=head_dim, theta=theta)
        nodes.append(Node("kv_cache", (p + "k_rope", p + "v"), (p + "k_all", p + "v_all"),
                          {"slot": f"blk.{b}", "n_head_kv": n_head_kv, "head_dim": head_dim}, name=p + "kv_cache"))
        n("attention", (p + "q_rope", p + "k_all", p + "v_all"), "attn", n_head=n_head, n_head_kv=n_head_kv,
          head_dim=head_dim)
        n("matmul", (p + "attn", p + "attn_output.weight"), "attn_out")
        n("add", (x, p + "attn_out"), "x_attn")
        n("rms_norm", (p + "x_attn", p + "ffn_norm.weight"), "ffn_norm", eps=eps)
        n("matmul", (p + "ffn_norm", p + "ffn_gate.weight"), "gate")
        n("matmul", (p + "ffn_norm", p + "ffn_up.weight"), "up")
        n("silu", (p + "gate",), "gate_act")
        n("mul", (p + "gate_act", p + "up"), "ffn_hidden")
        n("matmul", (p + "ffn_hidden", p + "ffn_down.weight"), "ffn_out")
        n("add", (p + "x_attn", p + "ffn_out"), "x_out")
        x = p + "x_out"
    nodes += [
        Node("rows", (x, "output_rows"), ("x.final",), name="output_rows"),
        Node("rms_norm", ("x.final", "output_norm.weight"), ("x.norm",), {"eps": eps}, name="output_norm"),
        Node("weight", (), ("classifier",), {"names": ("output.weight", "token_embd.weight")}, name="classifier"),
        Node("matmul", ("x.norm", "classifier"), ("logits",), name="output"),
    ]
    weights = tuple(expected_shapes({"n_vocab": 0, "n_ff": 0, "n_embd": n_embd, "n_head": n_head,
                                     "n_head_kv": n_head_kv, "n_layer": n_layer}))
    return Graph(tuple(nodes), inputs=("tokens", "pos", "output_rows"), outputs=("logits",), weights=weights)


def _architecture() -> Architecture:
    return Architecture(name="llama", table=table_from_yaml(), build_graph=build_graph, check=check_model)


def table_from_yaml():  # type: ignore[no-untyped-def]
    from ..names import _builtin

    return _builtin("llama")


@hookimpl
def register_architectures(register: Callable[[object], None]) -> None:
    register(_architecture())
