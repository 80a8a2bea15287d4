#!/usr/bin/env bash
# The main job on the model this project ships: examples/pydoc-llama, a 0.9M-parameter llama
# (HF safetensors directory, bf16) trained on the docstrings of Python's standard library
# (examples/train_demo.py, examples/TRAINING.md).  Every conversion below is checked by running the
# model before and after in mconv's numpy executor (--validate) before the output is committed.
# Usage: examples/demo.sh [OUTPUT_DIR]    (needs `mconv` on PATH)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="$here/pydoc-llama"
out="${1:-demo-out}"
mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

step "the example model (headers only)"
mconv inspect "$model" | sed -n '1,16p'

step "HF safetensors directory -> GGUF (llama.cpp, ollama, LM Studio)"
mconv translate "$model" "$out/pydoc-llama.gguf" --force --validate

step "HF safetensors directory -> GGUF quantized to q8_0"
mconv translate "$model" "$out/pydoc-llama-q8_0.gguf" --dtype q8_0 --force --validate

step "HF safetensors directory -> Meta PyTorch checkpoint (consolidated.00.pth + params.json + tokenizer.model)"
mconv translate "$model" "$out/pth/" --to pth --force --validate

step "Meta checkpoint (read without torch) -> llama2.c model.bin + tokenizer.bin (what run.c reads); n_ctx given again"
mconv translate "$out/pth" "$out/llama2c/" --to llama2c --force --validate --hparam n_ctx=256  # params.json has no slot for it

step "llama2.c -> legacy GGML (ggjt v3, llama.cpp of mid-2023)"
mconv translate "$out/llama2c" "$out/pydoc-llama.ggjt.bin" --to ggml --force --validate
mconv inspect "$out/pydoc-llama.ggjt.bin" | grep '^note:' || true

step "the quantized GGUF against the source: logits agree within the q8_0 tolerance"
mconv validate "$model" "$out/pydoc-llama-q8_0.gguf" --brief

step "generate from the llama2.c file with its tokenizer.bin (greedy)"
mconv run "$out/llama2c" --prompt "Return the" -n 24 --temperature 0
