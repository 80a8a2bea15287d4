"""IR: dtype table and conversions, lazy sources, derived transforms, naming tables."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mconv.core import dtypes, names
from mconv.core.ir import CHUNK_BYTES, FileCache, FileSlice, StridedView, Tensor, cast, concat, permute_rows
from mconv.plugins import BlockDType, PluginError, get_dtype, tensor_from_array


# -- dtypes ---------------------------------------------------------------------------------------------

def test_bf16_rounding_matches_torch_for_every_non_nan_and_ggml_for_nan():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                           np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF, 0x3F808000,
                                     0x3F818000, 0x7F7FFFFF, 0x7FC00000, 0xFFC00001, 0x7F800001], dtype=np.uint32)])
    x = bits.view(np.float32)
    ours = dtypes.f32_to_bf16_bits(x)
    ref = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(ours[finite], ref[finite])
    # ggml's NaN rule: (u >> 16) | 0x40, sign and payload kept
    nan_bits = bits[~finite]
    np.testing.assert_array_equal(ours[~finite], ((nan_bits >> 16) | 0x40).astype(np.uint16))
    np.testing.assert_array_equal(dtypes.bf16_bits_to_f32(ref[finite]),
                                  torch.from_numpy(ref[finite].view(np.int16)).view(torch.bfloat16).float().numpy())


@pytest.mark.parametrize("name,torch_name", [("f8_e4m3", "float8_e4m3fn"), ("f8_e5m2", "float8_e5m2")])
def test_float8_decode_and_encode_match_torch(name, torch_name):
    torch = pytest.importorskip("torch")
    tdt = getattr(torch, torch_name)
    dt = get_dtype(name)
    codes = np.arange(256, dtype=np.uint8)
    ref = torch.from_numpy(codes.copy()).view(tdt).float().numpy()
    np.testing.assert_array_equal(dt.decode(codes.reshape(1, -1), 256)[0], ref)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(50_000).astype(np.float32) * s for s in (1e-3, 1, 30, 400)])
    x = np.concatenate([x, ref[np.isfinite(ref)], (ref[np.isfinite(ref)][:-1] + ref[np.isfinite(ref)][1:]) / 2,
                        np.array([0.0, -0.0, 1e-12, -1e-12], np.float32)]).astype(np.float32)
    x = x[np.abs(x) <= float(torch.finfo(tdt).max)]  # torch saturation rules differ by version above the max
    ours = dt.encode(x.reshape(1, -1))[0]
    theirs = torch.from_numpy(x).to(tdt).view(torch.uint8).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_exact_widenings_are_exact():
    rng = np.random.default_rng(2)
    for src, targets in dtypes.EXACT_WIDENINGS.items():
        s = get_dtype(src)
        if s.name == "bool":
            vals = np.array([[True, False]])
        elif s.is_float:
            raw = rng.integers(0, 256, (1, 4096 * s.type_size), dtype=np.uint8)
            vals = s.decode(raw, 4096)
            vals = vals[np.isfinite(vals)].reshape(1, -1)
        else:
            info = np.iinfo(s.storage)
            vals = np.array([[info.min, info.max, 0, 1, -1 if info.min < 0 else 2]], dtype=s.storage)
        for tname in targets:
            t = get_dtype(tname)
            back = t.decode(t.encode(vals), vals.shape[1])
            assert np.array_equal(back.astype(np.float64), vals.astype(np.float64)), (src, tname)


class _TestQ(BlockDType):
    """A toy block type, registered by subclassing: 4 int8 values and an f32 scale per block."""

    name = "test_q4x8"
    block_size = 4
    type_size = 8

    def quantize_blocks(self, blocks):
        scale = np.abs(blocks).max(axis=1, keepdims=True) / 127
        q = np.round(np.divide(blocks, scale, out=np.zeros_like(blocks), where=scale > 0)).astype(np.int8)
        return np.concatenate([scale.astype(np.float32).view(np.uint8), q.view(np.uint8)], axis=1)

    def dequantize_blocks(self, blocks):
        scale = blocks[:, :4].copy().view(np.float32)
        return blocks[:, 4:].view(np.int8).astype(np.float32) * scale


def test_block_dtype_registered_by_subclassing_and_used_in_casts():
    dt = get_dtype("TEST_Q4X8")
    assert isinstance(dt, _TestQ) and dt.is_quantized and dt.nbytes((3, 8)) == 48
    t = tensor_from_array("w", np.arange(24, dtype=np.float32).reshape(3, 8) - 12, get_dtype("f32"))
    q = cast(t, dt)
    assert q.nbytes == 48 and q.dtype == dt
    np.testing.assert_allclose(q.numpy(), t.numpy(), atol=0.1)
    with pytest.raises(Exception, match="row of 6 values is not a multiple of the test_q4x8 block size 4"):
        cast(tensor_from_array("v", np.zeros((2, 6), np.float32), get_dtype("f32")), dt)


# -- sources --------------------------------------------------------------------------------------------

def test_file_slice_is_lazy_and_bounded(tmp_path):
    data = np.arange(64, dtype=np.float32)
    p = tmp_path / "blob"
    p.write_bytes(b"HEAD" + data.tobytes())
    cache = FileCache()
    f = cache.get(str(p))
    t = Tensor("x", (8, 8), get_dtype("f32"), FileSlice(f, 4, 8, 32))
    assert f._map is None  # nothing mapped, nothing read
    np.testing.assert_array_equal(t.numpy(), data.reshape(8, 8))
    chunks = list(t.iter_chunks(max_bytes=64))
    assert [c.shape for c in chunks] == [(2, 32)] * 4
    with pytest.raises(Exception, match=r"data \(260 bytes at offset 4\) runs past the end of the file \(260 bytes\)"):
        FileSlice(f, 4, 65, 4)
    cache.close()


def test_strided_view_reads_transposed_and_offset_views():
    base = np.arange(30, dtype=np.float32)
    blob = base.view(np.uint8)
    v = StridedView(lambda: blob, 4, 2, (4, 3), (1, 4), 30)  # a transposed 3x4 at offset 2
    t = Tensor("v", (4, 3), get_dtype("f32"), v)
    expected = np.lib.stride_tricks.as_strided(base[2:], (4, 3), (4, 16))
    np.testing.assert_array_equal(t.numpy(), expected)
    for bad, msg in [((5, 3), "view reaches element 38 of a storage of 30 elements"),
                     ((-1, 3), r"negative size in \(-1, 3\)")]:
        with pytest.raises(ValueError, match=msg):
            StridedView(lambda: blob, 4, 2, bad, (7, 4) if bad[0] == 5 else (1, 4), 30)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat_matches_numpy(axis):
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal(s).astype(np.float32) for s in
             ([(2, 3, 4), (5, 3, 4)], [(2, 3, 4), (2, 1, 4)], [(2, 3, 4), (2, 3, 2)])[axis]]
    ts = [tensor_from_array(f"p{i}", p, get_dtype("f32")) for i, p in enumerate(parts)]
    c = concat("c", ts, axis)
    np.testing.assert_array_equal(c.numpy(), np.concatenate(parts, axis))
    rows = c.read_rows(1, c.n_rows - 1)
    np.testing.assert_array_equal(rows.view(np.float32), np.concatenate(parts, axis).reshape(c.n_rows, -1)[1:-1])


def test_cast_streams_in_chunks(monkeypatch):
    t = tensor_from_array("w", np.ones((1000, 16), np.float32), get_dtype("f32"))
    calls = []
    orig = t.source.read_rows

    def spy(a, b):
        calls.append((a, b))
        return orig(a, b)

    monkeypatch.setattr(t.source, "read_rows", spy)
    h = cast(t, get_dtype("f16"))
    chunks = list(h.iter_chunks(max_bytes=3200))
    assert len(chunks) == 10 and all(c.shape == (100, 32) for c in chunks)
    assert sorted(calls) == [(i, i + 100) for i in range(0, 1000, 100)]  # computed on worker threads
    assert CHUNK_BYTES == 64 << 20


# -- naming tables --------------------------------------------------------------------------------------

def test_every_yaml_column_is_a_bijection():
    t = names.table("llama")
    for conv in t.conventions:
        seen = {}
        for canonical in t.expected_tensors(3):
            own = t.from_canonical(canonical, conv)
            assert own is not None, (conv, canonical)
            assert own not in seen, (conv, own, seen.get(own), canonical)
            seen[own] = canonical
            assert t.to_canonical(own, conv) == canonical
    hp_keys = {}
    for spec in t.hparams:
        for conv, own in spec.names.items():
            assert (conv, own) not in hp_keys
            hp_keys[(conv, own)] = spec.key


def test_a_non_bijective_table_is_refused(tmp_path):
    import os

    with open(os.path.join(os.path.dirname(names.__file__), "arch", "llama.yaml")) as f:
        data = yaml.safe_load(f)
    data["tensors"][1]["hf"] = data["tensors"][0]["hf"]
    with pytest.raises(PluginError, match=r"column 'hf' is not a bijection: hf name\(s\) model.embed_tokens.weight "
                                          "appear twice"):
        names.NameTable(data, "broken.yaml")
    data = yaml.safe_load(open(os.path.join(os.path.dirname(names.__file__), "arch", "llama.yaml")))
    data["tensors"][3]["meta"] = "layers.1.attention_norm.weight"
    with pytest.raises(PluginError, match="must both have {bid} or neither"):
        names.NameTable(data, "broken.yaml")


def test_convention_detection():
    t = names.table("llama")
    assert t.detect_convention(["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight",
                                "model.layers.0.self_attn.rotary_emb.inv_freq"])[0] == "hf"
    assert t.detect_convention(["tok_embeddings.weight", "layers.3.attention.wq.weight", "rope.freqs"])[0] == "meta"
    assert t.detect_convention(["token_embd.weight", "blk.0.attn_q.weight"])[0] == "gguf"


@pytest.mark.parametrize("heads,hd,cols", [(8, 4, 3), (2, 16, 5), (1, 2, 1)])
def test_rope_permutation_index_form(heads, hd, cols):
    """W_meta[h*hd + 2j + s] = W_hf[h*hd + s*hd/2 + j] (FORMATS.md L(f)), and the two orders invert."""
    n = heads * hd
    w_hf = np.arange(n * cols, dtype=np.float32).reshape(n, cols)
    t = tensor_from_array("blk.0.attn_q.weight", w_hf, get_dtype("f32"))
    meta = permute_rows(t, names.rope_unpermute_order(n, heads, n), "rope_unpermute").numpy()
    for h in range(heads):
        for j in range(hd // 2):
            for s in (0, 1):
                np.testing.assert_array_equal(meta[h * hd + 2 * j + s], w_hf[h * hd + s * hd // 2 + j])
    fwd = names.rope_permute_order(n, heads, n)
    inv = names.rope_unpermute_order(n, heads, n)
    np.testing.assert_array_equal(fwd[inv], np.arange(n))
