"""Run by hand (not CI): load mconv's GGUF in llama-cpp-python 0.3.36 and mconv's ggjt v3 in
llama-cpp-python 0.1.78, and compare their logits with a float64 numpy forward pass of the same
weights (dequantized), FORMATS.md G(c) tolerances: ~2e-7 for f32 with an f32 KV cache, ~1.5-2e-2
for quantized weights (llama.cpp quantizes the activations too).  A second reference rounds the
activations of each matmul as llama.cpp's CPU backend does for that weight type (Q8_0 / Q8_K blocks,
f16 / bf16), which should match llama-cpp-python 0.3.36 to float rounding when the file is right.

    python bench/llama_cpp_check.py [--llnew /work/venvs/llnew/bin/python] [--llold /work/venvs/llold/bin/python]

Each loader runs in its own subprocess.  Prints one line per case: format, dtype, max|Δlogit|.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("MCONV_LOAD_PLUGINS", "")

from testlib import random_model, sp_tokenizer  # noqa: E402

from mconv.core.convert import open_model, write_model  # noqa: E402
from mconv.core.registry import get_registry  # noqa: E402

#: rows of 256 so K-quants apply everywhere; n_ff 768 = ceil(682/256)*256 so ggjt can store it
HP = dict(n_vocab=384, n_embd=256, n_layer=2, n_head=8, n_head_kv=2, n_ff=768, n_ctx=64, norm_eps=1e-5,
          rope_theta=10000.0)
TOKENS = [1, 300, 17, 290, 100, 260, 301, 5, 42, 383, 270, 12]

NEW_DRIVER = """
import sys, numpy as np
from llama_cpp import Llama
path, out, toks = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
llm = Llama(path, n_ctx=64, logits_all=True, type_k=0, type_v=0, verbose=False, n_threads=1)
llm.eval(toks)
np.save(out, np.array(llm.scores[:len(toks)], dtype=np.float32))
"""

OLD_DRIVER = """
import sys, numpy as np
from llama_cpp import Llama
path, out, toks = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
n_gqa, eps = int(sys.argv[4]), float(sys.argv[5])
llm = Llama(path, n_ctx=64, logits_all=True, f16_kv=False, n_gqa=n_gqa, rms_norm_eps=eps, verbose=False,
            n_threads=1)
llm.eval(toks)
np.save(out, np.array(llm.scores[:len(toks)], dtype=np.float32))
"""


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.trunc(x + np.copysign(np.float32(0.5), x))


def _q8_0(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_0_ref then dequantize: d = amax/127 stored f16, q = roundf(x/d)."""
    b = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(b).max(1, keepdims=True) / np.float32(127)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    return (_round_half_away(b * inv) * d.astype(np.float16).astype(np.float32)).reshape(x.shape)


def _q8_k(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K_ref then dequantize: iscale = -127/max (max = the signed value of largest
    |x|), q = min(127, nearest_int(iscale*x)), d = 1/iscale in f32."""
    b = x.astype(np.float32).reshape(-1, 256)
    idx = np.abs(b).argmax(1)
    mx = b[np.arange(len(b)), idx][:, None]
    safe = np.where(mx != 0, mx, 1).astype(np.float32)
    iscale = np.where(mx != 0, np.float32(-127) / safe, 0).astype(np.float32)
    q = np.minimum(127, np.rint(iscale * b))
    d = np.where(mx != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return (q * d).reshape(x.shape)


#: what llama.cpp's CPU matmul turns the activations into for each weight type (vec_dot_type)
ACTIVATION = {
    "f16": lambda x: x.astype(np.float16).astype(np.float32),
    "bf16": lambda x: ((x.astype(np.float32).view(np.uint32) + 0x7FFF + ((x.astype(np.float32).view(np.uint32)
                                                                          >> 16) & 1)) >> 16 << 16
                       ).astype(np.uint32).view(np.float32),
    "q8_0": _q8_0, "q4_0": _q8_0, "q4_1": _q8_0, "q5_0": _q8_0, "q5_1": _q8_0,
    "q2_k": _q8_k, "q3_k": _q8_k, "q4_k": _q8_k, "q5_k": _q8_k, "q6_k": _q8_k,
}


def reference_logits(model, tokens, emulate: bool = False) -> np.ndarray:
    """float64 llama forward pass (RMSNorm, interleaved-pair RoPE, causal GQA attention, SwiGLU) of
    the dequantized weights.  ``emulate``: round the activations of each matmul the way llama.cpp's
    CPU backend does for that weight type (f16/bf16 activations, Q8_0 or Q8_K blocks)."""
    hp = model.hparams
    w = {n: t.f32().astype(np.float64) for n, t in model.tensors.items()}
    kind = {n: t.dtype.name for n, t in model.tensors.items()}
    n_head, n_kv = hp["n_head"], hp["n_head_kv"]
    hd = hp["n_embd"] // n_head
    eps = hp["norm_eps"]
    T = len(tokens)
    x = w["token_embd.weight"][tokens]

    def mm(v, name):
        if emulate and kind[name] in ACTIVATION:
            v = ACTIVATION[kind[name]](v).astype(np.float64)
        return v @ w[name].T

    def norm(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    pos = np.arange(T)[:, None]
    inv = hp["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
    ang = pos * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(v):  # (T, heads, hd), rotate pairs (2i, 2i+1)
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for b in range(hp["n_layer"]):
        p = f"blk.{b}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope(mm(h, p + "attn_q.weight").reshape(T, n_head, hd))
        k = rope(mm(h, p + "attn_k.weight").reshape(T, n_kv, hd))
        v = mm(h, p + "attn_v.weight").reshape(T, n_kv, hd)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, -1)
        x = x + mm(o, p + "attn_output.weight")
        h = norm(x, w[p + "ffn_norm.weight"])
        g = mm(h, p + "ffn_gate.weight")
        u = mm(h, p + "ffn_up.weight")
        x = x + mm((g / (1 + np.exp(-g))) * u, p + "ffn_down.weight")
    x = norm(x, w["output_norm.weight"])
    return mm(x, "output.weight" if "output.weight" in w else "token_embd.weight")


def run(python: str, driver: str, path: str, extra: list[str]) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.npy")
        script = os.path.join(d, "drive.py")
        with open(script, "w") as f:
            f.write(driver)
        # GGML_NO_BACKTRACE: an abort must not hang in ggml's gdb backtrace
        p = subprocess.run([python, script, path, out, ",".join(map(str, TOKENS)), *extra], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
        if p.returncode != 0:
            raise RuntimeError(f"{python} failed on {path} (rc {p.returncode}): {p.stderr[-2000:]}")
        return np.load(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llnew", default="/work/venvs/llnew/bin/python")
    ap.add_argument("--llold", default="/work/venvs/llold/bin/python")
    ap.add_argument("--gguf", default="f32,bf16,f16,q8_0,q4_k_m")
    ap.add_argument("--ggjt", default="f32,f16,q8_0,q4_0")
    args = ap.parse_args()
    reg = get_registry()
    src = random_model(HP, seed=11, tokenizer=sp_tokenizer())
    results = []
    with tempfile.TemporaryDirectory() as d:
        st = os.path.join(d, "src.safetensors")
        write_model(src, st, reg.format("safetensors"), quiet=True)
        base = open_model(st)
        for fmt, dtypes, python in (("gguf", args.gguf, args.llnew), ("ggml", args.ggjt, args.llold)):
            for dtype in filter(None, dtypes.split(",")):
                path = os.path.join(d, f"m-{dtype}.{'gguf' if fmt == 'gguf' else 'bin'}")
                try:
                    write_model(base, path, reg.format(fmt), dtype=None if dtype == "f32" else dtype, quiet=True)
                except Exception as e:  # a dtype not available on this branch yet
                    results.append({"format": fmt, "dtype": dtype, "error": f"{type(e).__name__}: {e}"})
                    continue
                written = open_model(path, hparams={k: HP[k] for k in ("norm_eps", "rope_theta", "n_ctx")})
                ref = reference_logits(written, TOKENS)
                extra = [] if fmt == "gguf" else [str(HP["n_head"] // HP["n_head_kv"]), repr(HP["norm_eps"])]
                try:
                    got = run(python, NEW_DRIVER if fmt == "gguf" else OLD_DRIVER, path, extra)
                except Exception as e:
                    results.append({"format": fmt, "dtype": dtype, "error": str(e)})
                    continue
                emu = reference_logits(written, TOKENS, emulate=True)
                results.append({"format": fmt, "dtype": dtype, "max_abs_diff": float(np.abs(got - ref).max()),
                                "max_abs_diff_emulated": float(np.abs(got - emu).max()),
                                "logit_scale": float(np.abs(ref).max()),
                                "top1_agree": float(np.mean(got.argmax(-1) == ref.argmax(-1)))})
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
