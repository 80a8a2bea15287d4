"""Make tests/golden/kquants.npz: expected quantized bytes from ggml's own C reference.

Run by hand, OUTSIDE CI (it needs the native library), from the repository root:

    /work/venvs/quant/bin/python tests/golden/make_kquant_golden.py [--lib PATH] [--check]

It loads ``libggml-base.so`` through ctypes and calls

    size_t ggml_quantize_chunk(enum ggml_type type, const float * src, void * dst,
                               int64_t start, int64_t nrows, int64_t n_per_row, const float * imatrix)

with ``imatrix = NULL`` — the path llama-quantize takes without an importance matrix, which ends in
``quantize_row_*_ref`` — for Q2_K, Q3_K, Q4_K, Q5_K, Q6_K on deterministic, NaN-free inputs (random
normal, heavy tails, ties, zeros, tiny/subnormal/large values, constant blocks and sub-blocks,
outliers), and for the legacy Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 on some of them plus inputs with NaN,
inf and signed zeros (where gguf-py's numpy quantizers and C part ways).  One extra case with NaN and
inf ("legacy_nonfinite") is also recorded for the K-quants: mconv follows C there too.

Library used for the committed file:
    /work/venvs/llnew/lib/python3.11/site-packages/llama_cpp/lib/libggml-base.so -> libggml-base.so.0.25.3
    built by ``pip install llama-cpp-python==0.3.36`` (vendored llama.cpp 0c1e57098, b11312; default
    CMake flags: ggml-base compiled for the x86-64 baseline, no FMA)
    sha256 790d360a78f8801b731fbc11f52312024913c75467f5acc32ae4b3c9c8ce781b

File layout (np.savez_compressed): ``in/<case>`` float32 (rows, 256); ``<type>/<case>`` uint8
(rows, row_bytes) for every type; ``legacy_in/<case>`` and ``<type>/legacy_<case>`` for the
legacy-only inputs; ``meta`` a JSON string naming the library.  ``--check`` compares mconv's quantizers
(and its dequantizers, against ``dequantize_row_*``) with the library instead of writing.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys

import numpy as np

DEFAULT_LIB = "/work/venvs/llnew/lib/python3.11/site-packages/llama_cpp/lib/libggml-base.so"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kquants.npz")

#: ggml_type ids (ggml.h)
GGML_TYPE = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
             "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14}
KQUANTS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
LEGACY = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
COLS = 256
#: shared cases the legacy types are also checked on (gguf-py covers them on random data in CI)
LEGACY_CASES = ("ties_half", "ties_quarter", "zero_subblocks", "tiny", "subnormal", "large", "constant_blocks")


def inputs() -> dict[str, np.ndarray]:
    """NaN-free inputs, every case a (rows, 256) float32 array (one super-block per row)."""
    rng = np.random.default_rng(20240611)
    f = np.float32

    def normal(rows: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, COLS)) * scale).astype(f)

    cases: dict[str, np.ndarray] = {}
    cases["normal_weights"] = normal(32, 0.02)           # the scale of real weight matrices
    cases["normal_unit"] = normal(16)
    cases["heavy_tails"] = rng.standard_t(2, (16, COLS)).astype(f)
    cases["uniform"] = rng.uniform(-1, 1, (8, COLS)).astype(f)
    cases["positive"] = np.abs(normal(8))
    cases["negative"] = -np.abs(normal(8))
    cases["ties_half"] = (rng.integers(-8, 9, (8, COLS)) * 0.5).astype(f)
    cases["ties_quarter"] = (rng.integers(-40, 41, (8, COLS)) * 0.25).astype(f)
    cases["small_ints"] = rng.integers(-3, 4, (8, COLS)).astype(f)
    sparse = normal(8)
    sparse[rng.random(sparse.shape) < 0.7] = 0.0
    cases["sparse"] = sparse
    zsub = normal(8)
    for r in range(8):                                   # some 16- and 32-element sub-blocks all zero
        for s in rng.choice(16, size=r + 1, replace=False):
            zsub[r, 16 * s:16 * s + 16] = 0.0
    zsub[7] = 0.0
    zsub[6, :128] = -0.0
    cases["zero_subblocks"] = zsub
    cases["tiny"] = np.concatenate([normal(4, 1e-12), normal(4, 1e-16), normal(4, 1e-20)])
    cases["subnormal"] = normal(4, 1e-40)
    cases["large"] = np.concatenate([normal(4, 1e20), normal(4, 1e30)])
    cases["constant_blocks"] = np.repeat(rng.standard_normal((8, 1)), COLS, axis=1).astype(f)
    cases["constant_subblocks"] = np.repeat(rng.standard_normal((8, 16)), 16, axis=1).astype(f)
    outlier = normal(8, 0.01)
    outlier[np.arange(8), rng.integers(0, COLS, 8)] = rng.choice([-1.0, 1.0], 8) * 5.0
    cases["outliers"] = outlier
    return cases


def legacy_inputs() -> dict[str, np.ndarray]:
    """Inputs for the 32-element types only: NaN (with payloads and signs), inf, signed zeros."""
    rng = np.random.default_rng(99)
    x = rng.standard_normal((16, COLS)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    x[0, 31] = np.nan                                   # NaN as the last element of a block
    x[1, :32] = np.nan                                  # a block of NaN
    x[2, :] = -np.float32(np.nan)
    x[3, :64] = np.array(0x7F800123, np.uint32).view(np.float32)
    inf = rng.standard_normal((8, COLS)).astype(np.float32)
    inf[rng.random(inf.shape) < 0.03] = np.inf
    inf[rng.random(inf.shape) < 0.03] = -np.inf
    zeros = np.zeros((4, COLS), np.float32)
    zeros[0] = -0.0
    zeros[1, ::2] = -0.0
    zeros[2, 0] = -0.0
    mixed = rng.standard_normal((4, COLS)).astype(np.float32)
    mixed[:, 32:64] = 0.0
    mixed[:, 64:96] = -0.0
    # NaN and inf mixed, for the K-quants too (C's comparisons skip NaN; nearest_int reads NaN's bits)
    nonfinite = (rng.standard_normal((16, COLS)) * rng.choice([1e-3, 1.0, 1e30], (16, 1))).astype(np.float32)
    nonfinite[rng.random(nonfinite.shape) < 0.02] = np.nan
    nonfinite[rng.random(nonfinite.shape) < 0.01] = np.inf
    nonfinite[rng.random(nonfinite.shape) < 0.01] = -np.inf
    nonfinite[0] = np.nan
    nonfinite[1, ::16] = np.nan
    nonfinite[2, ::32] = np.inf
    nonfinite[3] = np.inf
    nonfinite[4, :128] = -np.inf
    return {"nan": x, "inf": inf, "signed_zeros": zeros, "zero_blocks": mixed, "nonfinite": nonfinite}


class GGML:
    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)
        self.lib = ctypes.CDLL(path)
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.lib.ggml_row_size.restype = ctypes.c_size_t
        self.lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

    def dequantize(self, name: str, raw: np.ndarray, n: int) -> np.ndarray:
        sym = "dequantize_row_" + (name[:-1] + "K" if name.endswith("_k") else name)
        fn = getattr(self.lib, sym)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        out = np.zeros(n, np.float32)
        fn(raw.ctypes.data, out.ctypes.data, n)
        return out

    def quantize(self, name: str, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, cols = x.shape
        row_size = self.lib.ggml_row_size(GGML_TYPE[name], cols)
        out = np.zeros((rows, row_size), np.uint8)
        n = self.lib.ggml_quantize_chunk(GGML_TYPE[name], x.ctypes.data, out.ctypes.data, 0, rows, cols, None)
        if n != out.size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {n} bytes, expected {out.size}")
        return out


def build(ggml: GGML) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for case, x in inputs().items():
        arrays[f"in/{case}"] = x
        for name in KQUANTS + (LEGACY if case in LEGACY_CASES else []):
            arrays[f"{name}/{case}"] = ggml.quantize(name, x)
    for case, x in legacy_inputs().items():
        arrays[f"legacy_in/{case}"] = x
        for name in LEGACY + (KQUANTS if case == "nonfinite" else []):
            arrays[f"{name}/legacy_{case}"] = ggml.quantize(name, x)
    with open(ggml.path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    meta = {"library": ggml.path, "sha256": digest, "llama_cpp_python": "0.3.36", "llama_cpp": "0c1e57098"}
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def check_dequantize(ggml: GGML) -> int:
    """dequantize_row_* of random blocks (finite f16 scales) against mconv's dequantizers."""
    from mconv.core.dtypes import get_dtype

    bad = 0
    rng = np.random.default_rng(5)
    for name in KQUANTS + LEGACY:
        dt = get_dtype(name)
        raw = rng.integers(0, 256, (4096, dt.type_size), dtype=np.uint8)
        for off in {"q2_k": [80, 82], "q3_k": [108], "q6_k": [208], "q4_1": [0, 2], "q5_1": [0, 2],
                    "q4_k": [0, 2], "q5_k": [0, 2]}.get(name, [0]):
            halves = (rng.standard_normal(4096) * rng.choice([1e-6, 1e-2, 1.0, 1e3], 4096)).astype(np.float16)
            raw[:, off:off + 2] = halves.view(np.uint8).reshape(-1, 2)
        expected = ggml.dequantize(name, raw, 4096 * dt.block_size)
        same = np.array_equal(dt.dequantize_blocks(raw).ravel().view(np.uint32), expected.view(np.uint32))
        bad += int(not same)
        print(f"dequantize {name:25s} {'ok' if same else 'DIFFERS'}")
    return bad


def check(arrays: dict[str, np.ndarray]) -> int:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from mconv.core.dtypes import get_dtype

    bad = 0
    for key, expected in arrays.items():
        if key == "meta" or key.startswith(("in/", "legacy_in/")):
            continue
        name, case = key.split("/", 1)
        x = arrays[f"legacy_in/{case[7:]}" if case.startswith("legacy_") else f"in/{case}"]
        got = get_dtype(name).encode(x)
        blocks = (got.reshape(-1, get_dtype(name).type_size) != expected.reshape(got.shape).reshape(
            -1, get_dtype(name).type_size)).any(axis=1)
        status = "ok" if not blocks.any() else f"{int(blocks.sum())} of {blocks.size} blocks differ"
        bad += int(blocks.any())
        print(f"{key:32s} {status}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default=DEFAULT_LIB, help="path of libggml-base.so")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--check", action="store_true", help="compare mconv with the library, write nothing")
    args = ap.parse_args()
    arrays = build(GGML(args.lib))
    if args.check:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
        return 1 if check(arrays) + check_dequantize(GGML(args.lib)) else 0
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes, {len(arrays)} arrays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
