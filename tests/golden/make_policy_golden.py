"""Make tests/golden/llama_quant_types.json: the per-tensor types llama.cpp's llama-quantize picks.

Run by hand, OUTSIDE CI, from the repository root:

    /work/venvs/quant/bin/python tests/golden/make_policy_golden.py [--llama-python PYTHON]

For a few small llama models (written as f32 GGUF with gguf-py) and every llama_ftype mconv offers as
a ``--dtype``, it runs ``llama_model_quantize`` (no imatrix, default params: not pure, quantize the
output tensor) in a subprocess of the Python that has llama-cpp-python 0.3.36 (vendored llama.cpp
0c1e57098; default /work/venvs/llnew/bin/python), reads the result back with gguf-py and records each
tensor's ggml type (a space-separated list in the order of the model's sorted "tensors"), or
llama.cpp's error when it refuses.  tests/test_quant_policy.py checks
mconv's policy (core/quant/policy.py) against this table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_quant_types.json")
DEFAULT_LLAMA_PYTHON = "/work/venvs/llnew/bin/python"

#: llama_ftype values (llama.h)
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}

#: the models: name -> hparams (+ tied: no output.weight)
MODELS = {
    "gqa4": dict(n_vocab=256, n_embd=256, n_layer=4, n_head=8, n_head_kv=2, n_ff=512),
    "gqa4_tied": dict(n_vocab=256, n_embd=256, n_layer=4, n_head=8, n_head_kv=2, n_ff=512, tied=True),
    "mha": dict(n_vocab=256, n_embd=256, n_layer=4, n_head=4, n_head_kv=4, n_ff=512),
    "gqa2_16layers": dict(n_vocab=256, n_embd=256, n_layer=16, n_head=4, n_head_kv=2, n_ff=768),
    # rows of 160 (a multiple of 32, not of 256) and an n_ff of 200 (not even a multiple of 32)
    "odd_rows": dict(n_vocab=96, n_embd=160, n_layer=4, n_head=8, n_head_kv=2, n_ff=200),
    # 80 layers with GQA: llama.cpp calls it LLM_TYPE_70B and gives attn_v more bits
    "gqa_80layers": dict(n_vocab=64, n_embd=256, n_layer=80, n_head=4, n_head_kv=1, n_ff=256),
}
#: models that only run some ftypes (to keep the run short)
ONLY = {"gqa_80layers": ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M")}

QUANTIZE = r"""
import json, sys, llama_cpp
jobs = json.loads(sys.argv[1])
out = {}
for key, (src, dst, ftype) in jobs.items():
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
    out[key] = rc
print(json.dumps(out))
"""


def shapes(hp: dict) -> dict[str, tuple[int, ...]]:
    """numpy shapes, as core/arch/llama.py expected_shapes."""
    e, hd = hp["n_embd"], hp["n_embd"] // hp["n_head"]
    s: dict[str, tuple[int, ...]] = {"token_embd.weight": (hp["n_vocab"], e), "output_norm.weight": (e,)}
    if not hp.get("tied"):
        s["output.weight"] = (hp["n_vocab"], e)
    for b in range(hp["n_layer"]):
        p = f"blk.{b}."
        s.update({p + "attn_norm.weight": (e,), p + "attn_q.weight": (hp["n_head"] * hd, e),
                  p + "attn_k.weight": (hp["n_head_kv"] * hd, e), p + "attn_v.weight": (hp["n_head_kv"] * hd, e),
                  p + "attn_output.weight": (e, hp["n_head"] * hd), p + "ffn_norm.weight": (e,),
                  p + "ffn_gate.weight": (hp["n_ff"], e), p + "ffn_down.weight": (e, hp["n_ff"]),
                  p + "ffn_up.weight": (hp["n_ff"], e)})
    return s


def write_gguf(path: str, hp: dict) -> None:
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("policy-probe")
    w.add_context_length(128)
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hp["n_embd"] // hp["n_head"])
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, hp["n_vocab"])]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [1] * (len(tokens) - 3))
    rng = np.random.default_rng(0)
    for name, shape in shapes(hp).items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> int:
    import gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", default=DEFAULT_LLAMA_PYTHON)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    result: dict = {"llama_cpp_python": "0.3.36", "llama_cpp": "0c1e57098", "ftypes": FTYPES, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {}
        for model, hp in MODELS.items():
            src = os.path.join(tmp, f"{model}.gguf")
            write_gguf(src, hp)
            for ftype, value in FTYPES.items():
                if ftype not in ONLY.get(model, FTYPES):
                    continue
                jobs[f"{model}/{ftype}"] = (src, os.path.join(tmp, f"{model}-{ftype}.gguf"), value)
        run = subprocess.run([args.llama_python, "-c", QUANTIZE, json.dumps(jobs)], capture_output=True, text=True)
        if run.returncode != 0:
            sys.stderr.write(run.stderr)
            return 1
        rcs = json.loads(run.stdout.strip().splitlines()[-1])
        for model, hp in MODELS.items():
            names = sorted(shapes(hp))
            entry = {"hparams": hp, "tensors": names, "types": {}}
            for ftype in FTYPES:
                key = f"{model}/{ftype}"
                if key not in jobs:
                    continue
                if rcs[key] != 0:
                    entry["types"][ftype] = f"error: llama_model_quantize returned {rcs[key]}"
                    continue
                reader = gguf.GGUFReader(jobs[key][1])
                got = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
                assert sorted(got) == names
                entry["types"][ftype] = " ".join(got[n] for n in names)
            result["models"][model] = entry
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
