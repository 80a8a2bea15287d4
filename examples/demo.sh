#!/usr/bin/env bash
# The main job on the model this project ships: examples/pydoc-llama, a 0.9M-parameter llama
# trained on the docstrings of Python's standard library (examples/train_demo.py, TRAINING.md).
# Usage: examples/demo.sh [OUTPUT_DIR]    (needs `mconv` on PATH)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="$here/pydoc-llama"
out="${1:-demo-out}"
mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

step "the example model (headers only)"
mconv inspect "$model" | sed -n '1,16p'

step "HF safetensors directory -> single safetensors file, validated against the source"
mconv translate "$model" "$out/pydoc-llama.safetensors" --force --validate

step "generate with the converted file (greedy)"
mconv run "$out/pydoc-llama.safetensors" --prompt "Return the" -n 24 --temperature 0
