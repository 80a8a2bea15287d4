"""The llama architecture: its naming table and the shape rules its tensors follow.

Registered through the same ``register_architectures`` hook a third-party plugin uses."""

from __future__ import annotations

from typing import Callable

from ..errors import ValidationError
from ..hookspecs import hookimpl
from ..ir import Model
from ..names import table
from . import Architecture


def expected_shapes(hp: dict) -> dict[str, tuple[int, ...]]:
    """Canonical name -> numpy shape for a llama model with these hparams."""
    n_embd, n_head, n_head_kv = hp["n_embd"], hp["n_head"], hp["n_head_kv"]
    head_dim = n_embd // n_head
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (hp["n_vocab"], n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (hp["n_vocab"], n_embd),
    }
    for b in range(hp["n_layer"]):
        p = f"blk.{b}."
        shapes.update({
            p + "attn_norm.weight": (n_embd,),
            p + "attn_q.weight": (n_head * head_dim, n_embd),
            p + "attn_k.weight": (n_head_kv * head_dim, n_embd),
            p + "attn_v.weight": (n_head_kv * head_dim, n_embd),
            p + "attn_output.weight": (n_embd, n_head * head_dim),
            p + "ffn_norm.weight": (n_embd,),
            p + "ffn_gate.weight": (hp["n_ff"], n_embd),
            p + "ffn_down.weight": (n_embd, hp["n_ff"]),
            p + "ffn_up.weight": (hp["n_ff"], n_embd),
        })
    return shapes


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
    for name, shape in expected_shapes(hp).items():
        t = model.tensors.get(name)
        if t is None:
            if name not in optional:
                raise ValidationError(f"tensor {name} is missing", tensor=name)
            continue
        if tuple(t.shape) != shape:
            raise ValidationError(f"shape {tuple(t.shape)} does not match the hparams, which imply {shape}",
                                  tensor=name)


def _architecture() -> Architecture:
    return Architecture(name="llama", table=table_from_yaml(), check=check_model)


def table_from_yaml():  # type: ignore[no-untyped-def]
    from ..names import _builtin

    return _builtin("llama")


@hookimpl
def register_architectures(register: Callable[[object], None]) -> None:
    register(_architecture())
