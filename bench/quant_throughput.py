"""Quantizer/dequantizer throughput, in MiB/s of float32 input (or output), on 64 MiB of N(0, 0.02).

    python bench/quant_throughput.py [TYPE ...] [--threads N]

Reports wall and CPU time for one thread, and wall time with N threads each quantizing a slice
(the kernels are plain numpy, which releases the GIL, so a writer's thread pool can use every core).
The allocator is set up as the mconv command sets it (core/memory.py) unless --malloc-default.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mconv.core.dtypes import get_dtype

TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f16", "bf16"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("types", nargs="*", default=TYPES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--malloc-default", action="store_true", help="leave glibc's allocator settings alone")
    args = ap.parse_args()
    if not args.malloc_default:
        from mconv.core.memory import tune_allocator

        tune_allocator()
    rows = args.mib * 2**20 // (4 * 4096)
    x = (np.random.default_rng(0).standard_normal((rows, 4096)) * 0.02).astype(np.float32)
    mib = x.nbytes / 2**20
    parts = np.array_split(x, args.threads * 4)
    for name in args.types:
        dt = get_dtype(name)
        dt.encode(x[:8])
        w0, c0 = time.perf_counter(), time.process_time()
        raw = dt.encode(x)
        w1, c1 = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(dt.encode, parts))
        w2 = time.perf_counter()
        dt.decode(raw, x.shape[1])
        w3 = time.perf_counter()
        print(f"{name:5s} quantize {mib / (w1 - w0):8.1f} MiB/s wall, {mib / (c1 - c0):8.1f} MiB/s cpu, "
              f"{args.threads} threads {mib / (w2 - w1):8.1f} MiB/s wall | dequantize {mib / (w3 - w2):8.1f} MiB/s",
              flush=True)


if __name__ == "__main__":
    main()
