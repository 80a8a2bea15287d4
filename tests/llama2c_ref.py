"""An independent reference for llama2.c's exporters, written from FORMATS.md Part 2 (not from mconv's
writer): the bytes ``export.py`` (v0/v1/v2) and ``tokenizer.py`` would write for the same model.

Weights are given by canonical (GGUF) name as float32 arrays, as testlib.random_weights makes them.
"""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np

KINDS_V0 = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_down", "ffn_up")
MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up")


def _f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def is_shared(w: dict[str, np.ndarray]) -> bool:
    out = w.get("output.weight")
    return out is None or bool(np.array_equal(w["token_embd.weight"], out))   # torch.equal on the values


def config(w: dict[str, np.ndarray], hp: dict) -> tuple[int, ...]:
    """dim, hidden_dim (from w1's shape), n_layers, n_heads, n_kv_heads, vocab_size, seq_len."""
    return (hp["n_embd"], w["blk.0.ffn_gate.weight"].shape[0], hp["n_layer"], hp["n_head"], hp["n_head_kv"],
            hp["n_vocab"], hp.get("n_ctx", 2048))


def v0_rope_region(w: dict[str, np.ndarray], hp: dict) -> tuple[int, int]:
    """[start, end) of the freq_cis tables in a v0 file (FORMATS.md L(a): masked in comparisons)."""
    d, h, L, nh, nkv, v, s = config(w, hp)
    kvd = d * nkv // nh
    start = 28 + 4 * (v * d + L * (2 * d + 2 * d * d + 2 * kvd * d + 3 * h * d) + d)
    return start, start + 4 * s * (d // nh)


def torch_rope_tables(head_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """model.py precompute_freqs_cis, in torch (float32 throughout)."""
    import torch

    freqs = 1.0 / (10000.0 ** (torch.arange(0, head_size, 2)[: (head_size // 2)].float() / head_size))
    t = torch.arange(seq_len, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    return torch.cos(freqs).numpy(), torch.sin(freqs).numpy()


def export_v0(w: dict[str, np.ndarray], hp: dict) -> bytes:
    d, h, L, nh, nkv, v, s = config(w, hp)
    shared = is_shared(w)
    out = [struct.pack("iiiiiii", d, h, L, nh, nkv, v if shared else -v, s), _f32(w["token_embd.weight"])]
    for kind in KINDS_V0:
        out.extend(_f32(w[f"blk.{b}.{kind}.weight"]) for b in range(L))
    out.append(_f32(w["output_norm.weight"]))
    cos, sin = torch_rope_tables(d // nh, s)
    out += [_f32(cos[:s]), _f32(sin[:s])]
    if not shared:
        out.append(_f32(w["output.weight"]))
    return b"".join(out)


def _header(version: int, w: dict[str, np.ndarray], hp: dict, group_size: Optional[int] = None) -> bytes:
    head = struct.pack("I", 0x616B3432) + struct.pack("i", version) + struct.pack("iiiiiii", *config(w, hp))
    head += struct.pack("B", int(is_shared(w)))
    if group_size is not None:
        head += struct.pack("i", group_size)
    return head + b"\0" * (256 - len(head))


def _v1_order(w: dict[str, np.ndarray], hp: dict) -> tuple[list[str], list[str]]:
    L = hp["n_layer"]
    norms = [f"blk.{b}.attn_norm.weight" for b in range(L)] + [f"blk.{b}.ffn_norm.weight" for b in range(L)]
    norms.append("output_norm.weight")
    mats = ["token_embd.weight"]
    for kind in MATRICES:
        mats += [f"blk.{b}.{kind}.weight" for b in range(L)]
    if not is_shared(w):
        mats.append("output.weight")
    return norms, mats


def export_v1(w: dict[str, np.ndarray], hp: dict) -> bytes:
    norms, mats = _v1_order(w, hp)
    return _header(1, w, hp) + b"".join(_f32(w[n]) for n in norms + mats)


def quantize_q80(x: np.ndarray, group_size: int) -> tuple[bytes, bytes]:
    """export.py quantize_q80 with torch: int8 bytes and float32 scale bytes."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).float().reshape(-1, group_size)
    wmax = torch.abs(t).max(dim=1).values
    scale = wmax / 127.0
    q = torch.round(t / scale[:, None]).to(torch.int8)
    return q.numpy().tobytes(), scale.numpy().astype("<f4").tobytes()


def exporter_group_size(dim: int) -> int:
    gs = 64
    while dim % gs:
        gs //= 2
    return gs


def export_v2(w: dict[str, np.ndarray], hp: dict, group_size: Optional[int] = None) -> bytes:
    """version2_export; ``group_size`` None = the exporter's backoff on dim (even when it does not
    divide hidden_dim, as upstream)."""
    gs = exporter_group_size(hp["n_embd"]) if group_size is None else group_size
    norms, mats = _v1_order(w, hp)
    out = [_header(2, w, hp, gs)] + [_f32(w[n]) for n in norms]
    for n in mats:
        q, s = quantize_q80(w[n], gs)
        out += [q, s]
    return b"".join(out)


def tokenizer_bin(sp_model: bytes) -> bytes:
    """tokenizer.py Tokenizer.export through sentencepiece's own API."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    tokens, scores = [], []
    for i in range(sp.vocab_size()):
        t = sp.id_to_piece(i)
        s = sp.get_score(i)
        if i == sp.bos_id():
            t = "\n<s>\n"
        elif i == sp.eos_id():
            t = "\n</s>\n"
        t = t.replace("\u2581", " ")
        tokens.append(t.encode("utf-8"))
        scores.append(s)
    out = [struct.pack("I", max(len(t) for t in tokens))]
    for b, s in zip(tokens, scores):
        out.append(struct.pack("fI", s, len(b)))
        out.append(b)
    return b"".join(out)
