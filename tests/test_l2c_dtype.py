"""The llama2.c int8 dtype ``l2c_q8`` (bit-exact with export.py's quantize_q80 under torch) and the
parametric block-size variants of core/dtypes.py."""

from __future__ import annotations

import numpy as np
import pytest

import llama2c_ref as ref

from mconv.plugins import BlockDType, UnsupportedError, cast, get_dtype, tensor_from_array


def blocks_to_q_s(raw: np.ndarray, gs: int) -> tuple[bytes, bytes]:
    b = raw.reshape(-1, gs + 4)
    return np.ascontiguousarray(b[:, :gs]).tobytes(), np.ascontiguousarray(b[:, gs:]).tobytes()


@pytest.mark.parametrize("gs", [64, 32, 4, 3])
def test_quantize_matches_torch_bit_for_bit(gs):
    rng = np.random.default_rng(gs)
    w = (rng.standard_normal((24, gs * 6)) * rng.uniform(1e-3, 10, (24, 1))).astype(np.float32)
    w[0, :gs] = 0.0                                   # all-zero group
    w[1, :] = np.float32(0.5)                         # ties
    w[2, :gs] = np.arange(gs, dtype=np.float32) - gs // 2
    w[3, :gs] = np.float32(1e-44)                     # subnormal max: max/127 underflows to a zero scale
    w[4, :gs] = np.float32(-0.0)                      # torch's abs max is +0.0: the scale is +0.0
    dt = get_dtype("l2c_q8").variant(gs)
    raw = dt.encode(w)
    assert raw.shape == (24, 6 * (gs + 4))
    q, s = blocks_to_q_s(raw, gs)
    want_q, want_s = ref.quantize_q80(w, gs)
    assert s == want_s
    got_q, exp_q = np.frombuffer(q, np.int8).reshape(-1, gs), np.frombuffer(want_q, np.int8).reshape(-1, gs)
    # torch casts 0/0 and x/0 to int8 as the platform does; mconv writes 0 for a zero scale
    zero_scale = np.frombuffer(s, "<f4") == 0
    np.testing.assert_array_equal(got_q[~zero_scale], exp_q[~zero_scale])
    assert np.all(got_q[zero_scale] == 0)
    # dequantize = q * scale in float32 (runq.c)
    deq = dt.decode(raw, gs * 6)
    np.testing.assert_array_equal(deq.reshape(-1, gs), got_q.astype(np.float32) * np.frombuffer(s, "<f4")[:, None])


def test_non_finite_values_are_refused():
    from mconv.plugins import QuantError

    with pytest.raises(QuantError, match="l2c_q8 cannot quantize non-finite values"):
        get_dtype("l2c_q8").encode(np.full((1, 64), np.inf, np.float32))


def test_variants():
    base = get_dtype("l2c_q8")
    assert isinstance(base, BlockDType) and base.parametric
    assert (base.block_size, base.type_size, base.label) == (64, 68, "l2c_q8")
    v = base.variant(32)
    assert (v.name, v.block_size, v.type_size, v.label) == ("l2c_q8", 32, 36, "l2c_q8@32")
    assert v != base and v == get_dtype("L2C_Q8@32") and v is base.variant(32) and hash(v) == hash(get_dtype("l2c_q8@32"))
    assert v.variant(64) is base and get_dtype("l2c_q8@64") is base
    assert repr(v) == "DType(l2c_q8@32)"
    with pytest.raises(UnsupportedError, match=r"^dtype f32 has no block-size variants \('f32@2'\)$"):
        get_dtype("f32@2")
    with pytest.raises(UnsupportedError, match=r"the block size after '@' must be a positive integer"):
        get_dtype("l2c_q8@x")
    with pytest.raises(UnsupportedError, match="block size must be a positive integer, not 0"):
        base.variant(0)


def test_cast_between_variants_and_to_f32():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    t = tensor_from_array("w", w, get_dtype("l2c_q8"))
    t32 = cast(t, get_dtype("l2c_q8@32"))
    assert t32.dtype.label == "l2c_q8@32" and t32.nbytes == 4 * 2 * 36
    f = cast(t, get_dtype("f32"))
    np.testing.assert_array_equal(f.numpy(), t.numpy())
    # re-quantizing the dequantized values with the same group size gives the same values back
    np.testing.assert_allclose(cast(f, get_dtype("l2c_q8")).numpy(), t.numpy(), rtol=0, atol=1e-6)
