"""Speed of the reference executor on a ~110M-parameter f32 llama (random weights, fixed seed).

    python bench/bench_executor.py [--prompt 128] [--context 256] [--decode 32] [--repeat 3]

Model: dim 768, hidden 2048, 12 layers, 12 heads (MHA), vocab 32000, classifier tied to the
embedding (llama2.c's stories110M shape): 110M parameters, 441 MB of f32 weights, built in memory
(no file).  Reports:

* prompt tokens/s: a fresh batch of --prompt tokens (logits of the last position only, as ``run``
  does), best of --repeat;
* decode tokens/s at --context tokens of context: the cache is filled with --context tokens in one
  batch, then --decode tokens run one at a time; tokens/s over those single-token steps, best of
  --repeat.

Targets on the 2-core development machine: prompt >= 200 tok/s, decode >= 20 tok/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from mconv.core import blas
from mconv.core.executor import Session
from mconv.core.ir import InMemory, Model, Tensor
from mconv.core.arch.llama import expected_shapes
from mconv.core.dtypes import get_dtype

HPARAMS = dict(n_vocab=32000, n_embd=768, n_layer=12, n_head=12, n_head_kv=12, n_ff=2048, n_ctx=1024,
               norm_eps=1e-5, rope_theta=10000.0)


def build_model(seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    f32 = get_dtype("f32")
    tensors = {}
    for name, shape in expected_shapes(HPARAMS).items():
        if name == "output.weight":
            continue                      # tied: the classifier is token_embd.weight
        if len(shape) == 1:
            values = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32))
        else:
            values = rng.standard_normal(shape, dtype=np.float32)
            values *= np.float32(1.0 / np.sqrt(shape[1]))
        values = values.reshape(-1, shape[-1])
        tensors[name] = Tensor(name, shape, f32, InMemory(values.view(np.uint8)))
    return Model("llama", dict(HPARAMS), tensors, format="memory")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, help="BLAS threads (default: as mconv's commands choose: "
                    "MCONV_THREADS, else the cores the load average leaves idle)")
    args = ap.parse_args()
    threads = blas.default_threads() if args.threads is None else args.threads
    blas.set_threads(threads)

    t0 = time.perf_counter()
    model = build_model()
    n_params = sum(t.numel for t in model.tensors.values())
    session = Session(model)
    session.preload()
    print(f"model: {n_params / 1e6:.1f}M parameters, f32, built and decoded in {time.perf_counter() - t0:.1f} s; "
          f"{os.cpu_count()} CPUs, {blas.get_threads()} BLAS thread(s), load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(1)

    best = float("inf")
    for _ in range(args.repeat):
        ids = rng.integers(0, HPARAMS["n_vocab"], args.prompt)
        session.reset()
        t = time.perf_counter()
        session.forward(ids, last_only=True)
        best = min(best, time.perf_counter() - t)
    prompt_rate = args.prompt / best
    print(f"prompt: {args.prompt} tokens in {best:.3f} s = {prompt_rate:.1f} tok/s")

    best = float("inf")
    for _ in range(args.repeat):
        session.reset()
        session.forward(rng.integers(0, HPARAMS["n_vocab"], args.context), last_only=True)
        nxt = int(rng.integers(0, HPARAMS["n_vocab"]))
        t = time.perf_counter()
        for _ in range(args.decode):
            logits = session.forward([nxt], last_only=True)
            nxt = int(np.argmax(logits[-1]))
        best = min(best, time.perf_counter() - t)
    decode_rate = args.decode / best
    print(f"decode: {args.decode} tokens after {args.context} of context in {best:.3f} s = {decode_rate:.1f} tok/s")
    ok = prompt_rate >= 200 and decode_rate >= 20
    print(f"targets (prompt >= 200 tok/s, decode >= 20 tok/s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
