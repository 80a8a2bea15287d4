"""K-quants: quantizers against golden bytes from ggml's C reference (tests/golden/kquants.npz, made
by tests/golden/make_kquant_golden.py), dequantizers of all ten block types against gguf-py, and
quantization through the lazy Tensor cast."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from mconv.core.dtypes import get_dtype
from mconv.core.ir import cast, tensor_from_array

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kquants.npz")
KQUANTS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
LEGACY = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


def _golden_keys() -> list[str]:
    with np.load(GOLDEN) as z:
        return sorted(k for k in z.files if k != "meta" and not k.startswith(("in/", "legacy_in/")))


def test_golden_file_names_its_library(golden: dict[str, np.ndarray]) -> None:
    meta = json.loads(str(golden["meta"]))
    assert meta["llama_cpp_python"] == "0.3.36" and "libggml-base" in meta["library"]
    assert {k.split("/")[0] for k in _golden_keys()} == set(KQUANTS + LEGACY)


@pytest.mark.parametrize("key", _golden_keys())
def test_quantize_matches_ggml_c_reference(golden: dict[str, np.ndarray], key: str) -> None:
    name, case = key.split("/", 1)
    x = golden[f"legacy_in/{case[len('legacy_'):]}" if case.startswith("legacy_") else f"in/{case}"]
    expected = golden[key]
    got = get_dtype(name).encode(x)
    assert got.shape == expected.shape
    if not np.array_equal(got, expected):
        dt = get_dtype(name)
        bad = np.nonzero((got.reshape(-1, dt.type_size) != expected.reshape(-1, dt.type_size)).any(axis=1))[0]
        pytest.fail(f"{key}: {bad.size} blocks differ, first {bad[:8].tolist()}")


def _random_blocks(name: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random block bytes whose f16 fields are finite halves (normal, subnormal, zero, negative)."""
    dt = get_dtype(name)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, dt.type_size), dtype=np.uint8)
    f16_fields = {"q8_0": [0], "q4_0": [0], "q5_0": [0], "q4_1": [0, 2], "q5_1": [0, 2], "q2_k": [80, 82],
                  "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208]}[name]
    for off in f16_fields:
        h = (rng.standard_normal(n_blocks) * rng.choice([1e-6, 1e-3, 1.0, 100.0], n_blocks)).astype(np.float16)
        h[::53] = 0
        h[1::61] = np.float16(6e-8)            # subnormal
        raw[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
    return raw


@pytest.mark.parametrize("name", KQUANTS + LEGACY)
def test_dequantize_matches_gguf_py(name: str) -> None:
    dt = get_dtype(name)
    raw = _random_blocks(name, 1024, seed=len(name) * 31 + dt.type_size).reshape(64, -1)
    n_cols = raw.shape[1] // dt.type_size * dt.block_size
    expected = gq.dequantize(raw, GT[name.upper()])
    got = dt.decode(raw, n_cols)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("name", KQUANTS)
def test_dequantize_golden_bytes_matches_gguf_py(golden: dict[str, np.ndarray], name: str) -> None:
    raw = golden[f"{name}/normal_weights"]
    np.testing.assert_array_equal(get_dtype(name).decode(raw, 256).view(np.uint32),
                                  gq.dequantize(raw, GT[name.upper()]).view(np.uint32))


@pytest.mark.parametrize("name", KQUANTS)
def test_quantization_error_is_small(name: str) -> None:
    x = np.random.default_rng(5).standard_normal((16, 512)).astype(np.float32)
    dt = get_dtype(name)
    rel = np.sqrt(np.mean((dt.decode(dt.encode(x), 512) - x) ** 2))
    assert rel < {"q2_k": 0.45, "q3_k": 0.25, "q4_k": 0.12, "q5_k": 0.06, "q6_k": 0.03}[name]


@pytest.mark.parametrize("name", ["q4_k", "q6_k", "q8_0"])
def test_cast_through_tensor_is_chunked_and_exact(name: str) -> None:
    x = np.random.default_rng(9).standard_normal((12, 512)).astype(np.float32)
    t = tensor_from_array("blk.0.ffn_up.weight", x, get_dtype("f32"))
    q = cast(t, get_dtype(name))
    dt = get_dtype(name)
    assert q.dtype == dt and q.shape == (12, 512) and q.row_bytes == 512 // dt.block_size * dt.type_size
    chunks = list(q.iter_chunks(max_bytes=3 * 512 * 4))          # 3 rows of float32 per chunk
    assert [c.shape[0] for c in chunks] == [3, 3, 3, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), dt.encode(x))
    back = cast(q, get_dtype("f32")).numpy()
    np.testing.assert_array_equal(back, dt.decode(dt.encode(x), 512))


def test_row_not_a_multiple_of_the_block_is_refused() -> None:
    from mconv.core.errors import QuantError

    t = tensor_from_array("w", np.zeros((2, 96), np.float32), get_dtype("f32"))
    with pytest.raises(QuantError, match="row of 96 values is not a multiple of the q4_k block size 256"):
        cast(t, get_dtype("q4_k"))


@pytest.mark.parametrize("name", KQUANTS + LEGACY)
def test_zero_rows(name: str) -> None:
    dt = get_dtype(name)
    raw = dt.encode(np.zeros((0, 512), np.float32))
    assert raw.shape == (0, dt.row_bytes(512))
    assert dt.decode(raw, 512).shape == (0, 512)
