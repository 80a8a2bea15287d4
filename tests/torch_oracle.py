"""torch as a test-only oracle for the pth format: real checkpoints in every layout people have,
built with torch itself (state_dicts, Meta model-parallel shards, HF permuted q/k), and bit-exact
comparisons of mconv tensors with torch's view of a file."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Optional

import numpy as np
import torch

from mconv.plugins import Tensor, table
from testlib import random_weights, sentencepiece_model

#: Meta shards concatenate these along dim 1 (ParallelEmbedding, RowParallelLinear); other matrices dim 0
AXIS1_SUFFIXES = ("tok_embeddings.weight", "attention.wo.weight", "feed_forward.w2.weight")


def torch_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    return (t.reshape(1) if t.dim() == 0 else t).view(torch.uint8).numpy().tobytes()


def assert_same(ir: Tensor, ref: torch.Tensor, name: str = "") -> None:
    assert ir.shape == tuple(ref.shape), (name, ir.shape, tuple(ref.shape))
    assert ir.tobytes() == torch_bytes(ref), name


def meta_state(hp: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.bfloat16,
               rope_freqs: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """A llama state_dict under Meta names (the canonical q/k layout)."""
    names = table("llama")
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for canonical, values in random_weights(hp, seed).items():
        sd[names.from_canonical(canonical, "meta")] = torch.from_numpy(values).to(dtype)
    if rope_freqs:
        hd = hp["n_embd"] // hp["n_head"]
        sd["rope.freqs"] = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    return sd


def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta -> HF rotate-half rows, as HF's convert_llama_weights_to_hf does."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_state(meta: "OrderedDict[str, torch.Tensor]", hp: dict[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    names = table("llama")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, t in meta.items():
        canonical = names.to_canonical(name, "meta")
        if canonical is None:
            continue
        if canonical.endswith("attn_q.weight"):
            t = hf_permute(t, hp["n_head"])
        elif canonical.endswith("attn_k.weight"):
            t = hf_permute(t, hp["n_head_kv"])
        out[names.from_canonical(canonical, "hf")] = t.clone()
    return out


def split_meta(sd: "OrderedDict[str, torch.Tensor]", n: int) -> list["OrderedDict[str, torch.Tensor]"]:
    """Model-parallel shards as Meta's training code saves them (1-D tensors replicated)."""
    shards: list[OrderedDict[str, torch.Tensor]] = [OrderedDict() for _ in range(n)]
    for name, t in sd.items():
        if t.dim() <= 1:
            pieces = [t.clone() for _ in range(n)]
        else:
            pieces = [p.clone() for p in torch.chunk(t, n, dim=1 if name.endswith(AXIS1_SUFFIXES) else 0)]
        for shard, piece in zip(shards, pieces):
            shard[name] = piece
    return shards


def params_json(hp: dict[str, Any]) -> dict[str, Any]:
    """params.json as Meta ships it (vocab_size -1, no hidden size)."""
    out = {"dim": hp["n_embd"], "multiple_of": 32, "n_heads": hp["n_head"], "n_layers": hp["n_layer"],
           "norm_eps": hp["norm_eps"], "vocab_size": -1}
    if hp["n_head_kv"] != hp["n_head"]:
        out["n_kv_heads"] = hp["n_head_kv"]
    if hp["rope_theta"] != 10000.0:
        out["rope_theta"] = hp["rope_theta"]
    return out


def hf_config(hp: dict[str, Any]) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hp["n_embd"],
            "intermediate_size": hp["n_ff"], "num_hidden_layers": hp["n_layer"],
            "num_attention_heads": hp["n_head"], "num_key_value_heads": hp["n_head_kv"],
            "rms_norm_eps": hp["norm_eps"], "rope_theta": hp["rope_theta"],
            "max_position_embeddings": hp["n_ctx"], "vocab_size": hp["n_vocab"], "torch_dtype": "bfloat16"}


def write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def meta_dir(directory: str, hp: dict[str, Any], shards: int = 1, seed: int = 0, tokenizer: bool = True,
             sd: Optional["OrderedDict[str, torch.Tensor]"] = None) -> "OrderedDict[str, torch.Tensor]":
    """consolidated.NN.pth + params.json (+ tokenizer.model); returns the unsplit state_dict."""
    os.makedirs(directory, exist_ok=True)
    sd = meta_state(hp, seed, rope_freqs=True) if sd is None else sd
    for i, shard in enumerate(split_meta(sd, shards) if shards > 1 else [sd]):
        torch.save(shard, os.path.join(directory, f"consolidated.{i:02d}.pth"))
    write_json(os.path.join(directory, "params.json"), params_json(hp))
    if tokenizer:
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(sentencepiece_model())
    return sd


def hf_bin_dir(directory: str, hp: dict[str, Any], shards: int = 1, seed: int = 0,
               ) -> tuple["OrderedDict[str, torch.Tensor]", "OrderedDict[str, torch.Tensor]"]:
    """pytorch_model.bin or pytorch_model-0000i-of-0000n.bin + index, config.json, tokenizer.model;
    returns (meta state_dict, hf state_dict)."""
    os.makedirs(directory, exist_ok=True)
    meta = meta_state(hp, seed)
    hf = hf_state(meta, hp)
    if shards == 1:
        torch.save(hf, os.path.join(directory, "pytorch_model.bin"))
    else:
        names = list(hf)
        per = -(-len(names) // shards)
        weight_map = {}
        for i in range(shards):
            fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            part = OrderedDict((n, hf[n]) for n in names[i * per:(i + 1) * per])
            torch.save(part, os.path.join(directory, fname))
            weight_map.update({n: fname for n in part})
        write_json(os.path.join(directory, "pytorch_model.bin.index.json"),
                   {"metadata": {"total_size": 0}, "weight_map": weight_map})
    write_json(os.path.join(directory, "config.json"), hf_config(hp))
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(sentencepiece_model())
    return meta, hf


def train_checkpoint(path: str, hp: dict[str, Any], seed: int = 0, compiled: bool = True
                     ) -> "OrderedDict[str, torch.Tensor]":
    """llama2.c train.py's ckpt.pt: model (with torch.compile's prefix), model_args, AdamW state, ..."""
    sd = meta_state(hp, seed, dtype=torch.float32)
    # torch.optim.AdamW(...).state_dict() after one step (built by hand: the optimizer's first use
    # costs seconds of imports)
    optimizer = {
        "state": {i: {"step": torch.tensor(1.0), "exp_avg": torch.full_like(t, 0.1),
                      "exp_avg_sq": torch.full_like(t, 0.001)} for i, t in enumerate(sd.values())},
        "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01,
                          "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                          "differentiable": False, "fused": None, "decoupled_weight_decay": True,
                          "params": list(range(len(sd)))}]}
    model = OrderedDict((("_orig_mod." if compiled else "") + k, v) for k, v in sd.items())
    model_args = {"dim": hp["n_embd"], "n_layers": hp["n_layer"], "n_heads": hp["n_head"],
                  "n_kv_heads": hp["n_head_kv"], "vocab_size": hp["n_vocab"], "hidden_dim": hp["n_ff"],
                  "multiple_of": 32, "norm_eps": hp["norm_eps"], "max_seq_len": hp["n_ctx"], "dropout": 0.0}
    torch.save({"model": model, "optimizer": optimizer, "model_args": model_args, "iter_num": 2000,
                "best_val_loss": torch.tensor(1.25), "config": {"out_dir": "out", "dtype": "bfloat16",
                                                                 "betas": (0.9, 0.95), "compile": compiled}}, path)
    return sd


def canonical_map(sd: "OrderedDict[str, torch.Tensor]", convention: str = "meta") -> dict[str, torch.Tensor]:
    names = table("llama")
    return {c: t for n, t in sd.items() if (c := names.to_canonical(n, convention)) is not None}


def assert_model_equals(model: Any, sd: "OrderedDict[str, torch.Tensor]", convention: str = "meta") -> None:
    """Every canonical tensor of ``model`` equals torch's tensor (after un-permuting nothing: ``sd``
    must be in the Meta layout)."""
    expected = canonical_map(sd, convention)
    assert sorted(model.tensors) == sorted(expected)
    for name, ref in expected.items():
        assert_same(model.tensors[name], ref, name)


def numpy_of(t: torch.Tensor) -> np.ndarray:
    return np.frombuffer(torch_bytes(t), dtype=np.uint8)
