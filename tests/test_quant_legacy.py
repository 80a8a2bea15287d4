"""Legacy block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), F16 and BF16 against gguf-py's numpy quantizers,
which are bit-exact with ggml's C reference for finite and infinite inputs.  Where gguf-py and C
part ways (NaN, a block of zeros that starts with -0.0) the expected bytes come from ggml's C
reference through tests/golden/kquants.npz (see tests/golden/make_kquant_golden.py)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from mconv.core.dtypes import get_dtype

LEGACY = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    n = (256, 64)
    zeros = rng.standard_normal(n).astype(np.float32)
    zeros[::2] = 0.0                                          # whole rows (two blocks) of +0
    zeros[1::4, 5:9] = 0.0
    sparse = rng.standard_normal(n).astype(np.float32)
    sparse[rng.random(n) < 0.5] = 0.0
    inf = rng.standard_normal(n).astype(np.float32)
    inf[rng.random(n) < 0.03] = np.inf
    inf[rng.random(n) < 0.03] = -np.inf
    return {
        "normal": rng.standard_normal(n).astype(np.float32),
        # exact .5 ties after scaling: k/2 on a grid, and quarter steps
        "ties_half": (rng.integers(-16, 17, n) * 0.5).astype(np.float32),
        "ties_quarter": (rng.integers(-300, 301, n) / 4).astype(np.float32),
        "ties_int": rng.integers(-127, 128, n).astype(np.float32),
        "zeros": zeros,
        "sparse": sparse,
        "subnormal": (rng.standard_normal(n) * 1e-40).astype(np.float32),
        "tiny": (rng.standard_normal(n) * 1e-37).astype(np.float32),
        "large": (rng.standard_normal(n) * 1e30).astype(np.float32),
        "huge": rng.uniform(-3.4e38, 3.4e38, n).astype(np.float32),
        "constant": np.repeat(rng.standard_normal((n[0], 1)), n[1], axis=1).astype(np.float32),
        "inf": inf,
        "f16_edges": np.array([65504, 65520, -65536, 6e-8, 3e-8, 2.9e-8, 1e-5, 5.96e-8] * 8 * 32,
                              np.float32).reshape(-1, 64),
    }


CASES = _cases()


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("case", sorted(CASES))
def test_quantize_matches_gguf_py(name: str, case: str) -> None:
    x = CASES[case]
    with np.errstate(all="ignore"):
        expected = gq.quantize(x, GT[name.upper()])
    got = get_dtype(name).encode(x)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", LEGACY)
def test_dequantize_matches_gguf_py(name: str) -> None:
    dt = get_dtype(name)
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, (512, dt.type_size * 4), dtype=np.uint8)
    # scales: random finite f16 including subnormals and negatives, plus a few inf/NaN
    halves = rng.standard_normal(raw.shape[0] * 4 * 2).astype(np.float16).view(np.uint16)
    halves[::97] = 0x0001
    halves[::89] = 0x7C00
    halves[::101] = 0x7E00
    blocks = raw.reshape(-1, dt.type_size)
    scales = halves.reshape(-1, 2).view(np.uint8).reshape(-1, 4)
    n_scale_bytes = 4 if name in ("q4_1", "q5_1") else 2
    blocks[:, :n_scale_bytes] = scales[:, :n_scale_bytes]
    with np.errstate(all="ignore"):
        expected = gq.dequantize(raw, GT[name.upper()])
        got = dt.decode(raw, 128)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("name", LEGACY)
def test_round_trip_error_is_bounded(name: str) -> None:
    dt = get_dtype(name)
    x = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    err = np.abs(dt.decode(dt.encode(x), 256) - x).max()
    bound = {"q8_0": 0.02, "q4_0": 0.4, "q4_1": 0.3, "q5_0": 0.2, "q5_1": 0.15}[name]
    assert 0 < err < bound


def test_zero_block_scale_is_negative_zero() -> None:
    """C starts from max = +0.0f, so an all-zero block has d = 0.0f / -8 = -0.0 (f16 0x8000) whatever
    the sign of its zeros; gguf-py takes the first element's sign instead."""
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = -0.0
    for name in ("q4_0", "q5_0"):
        raw = get_dtype(name).encode(x)
        assert raw[0, :2].view(np.uint16)[0] == 0x8000


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_plain_float_casts_match_gguf_py(name: str) -> None:
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
                         0xFF800001, 0x7FBFFFFF, 0x00000001, 0x807FFFFF, 0x3F808000, 0x3F818000, 0x477FF000,
                         0x477FF001, 0x33800000, 0x33800001, 0x387FC000, 0x7F7FFFFF], np.uint32)
    x = np.concatenate([bits, specials]).view(np.float32).reshape(1, -1)
    with np.errstate(all="ignore"):
        expected = gq.quantize(x, GT[name.upper()]).view(np.uint8).reshape(1, -1)
        got = get_dtype(name).encode(x)
    np.testing.assert_array_equal(got, expected)
    back = get_dtype(name).decode(got, x.shape[1])
    ref = gq.dequantize(expected if name == "bf16" else expected.view(np.float16), GT[name.upper()])
    np.testing.assert_array_equal(np.asarray(back, np.float32).view(np.uint32), ref.reshape(1, -1).view(np.uint32))
