#!/usr/bin/env bash
# The main job on the model this project ships: examples/pydoc-llama, a 0.9M-parameter llama
# trained on the docstrings of Python's standard library (examples/train_demo.py; TRAINING.md).
# Usage: examples/demo.sh [OUTPUT_DIR]    (needs `mconv` on PATH)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
model="$here/pydoc-llama"
out="${1:-demo-out}"
mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

step "what the example model is (headers only)"
mconv inspect "$model" | sed -n '1,16p'

step "HF safetensors directory -> single safetensors file (lossless)"
mconv translate "$model" "$out/pydoc-llama.safetensors" --force
