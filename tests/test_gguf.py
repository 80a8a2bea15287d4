"""GGUF reader/writer, with gguf-py (the `gguf` package) as an independent oracle in both directions."""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from hostile_gguf import ARCH, STRING, U32, I32, gguf_file, gkv
from testlib import GQA, MHA, assert_same_tensors, cli, random_model, sp_tokenizer

from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry
from mconv.plugins import LossyConversionError, UnsupportedError, tensor_from_array

GT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType


def fmt(name="gguf"):
    return get_registry().format(name)


def _field(reader, key):
    f = reader.fields[key]
    return f.types, f.contents()


def _write(tmp_path, model, name="m.gguf", **kw):
    path = tmp_path / name
    write_model(model, str(path), fmt(), quiet=True, **kw)
    return path


# -- gguf-py reads what mconv writes ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_gguf_py_reads_mconv_output(tmp_path, dtype):
    tok = sp_tokenizer()
    src = random_model(GQA, dtype=dtype, seed=2, tokenizer=tok)
    src.metadata = {"general.author": "mconv tests", "custom.u16": np.uint16(7), "custom.f64": 0.1,
                    "custom.i16s": np.array([-3, 4], np.int16), "custom.strs": ["a", "bc"], "custom.flag": False}
    path = _write(tmp_path, src)
    r = gguf.GGUFReader(path)
    expect = {
        "general.architecture": ([VT.STRING], "llama"),
        "general.name": ([VT.STRING], "m"),
        "general.file_type": ([VT.UINT32], {"f32": 0, "f16": 1, "bf16": 32}[dtype]),
        "general.quantization_version": ([VT.UINT32], 2),
        "llama.context_length": ([VT.UINT32], 128),
        "llama.embedding_length": ([VT.UINT32], 32),
        "llama.block_count": ([VT.UINT32], 2),
        "llama.feed_forward_length": ([VT.UINT32], 88),
        "llama.attention.head_count": ([VT.UINT32], 8),
        "llama.attention.head_count_kv": ([VT.UINT32], 2),
        "llama.attention.layer_norm_rms_epsilon": ([VT.FLOAT32], float(np.float32(1e-5))),
        "llama.rope.freq_base": ([VT.FLOAT32], 10000.0),
        "llama.rope.dimension_count": ([VT.UINT32], 4),
        "llama.vocab_size": ([VT.UINT32], 384),
        "tokenizer.ggml.model": ([VT.STRING], "llama"),
        "tokenizer.ggml.bos_token_id": ([VT.UINT32], 1),
        "tokenizer.ggml.eos_token_id": ([VT.UINT32], 2),
        "tokenizer.ggml.unknown_token_id": ([VT.UINT32], 0),
        "tokenizer.ggml.add_bos_token": ([VT.BOOL], True),
        "tokenizer.ggml.add_eos_token": ([VT.BOOL], False),
        "general.author": ([VT.STRING], "mconv tests"),
        "custom.u16": ([VT.UINT16], 7),
        "custom.f64": ([VT.FLOAT64], 0.1),
        "custom.i16s": ([VT.ARRAY, VT.INT16], [-3, 4]),
        "custom.strs": ([VT.ARRAY, VT.STRING], ["a", "bc"]),
        "custom.flag": ([VT.BOOL], False),
    }
    for key, value in expect.items():
        assert _field(r, key) == value, key
    assert r.fields["tokenizer.ggml.tokens"].types == [VT.ARRAY, VT.STRING]
    assert [t.encode() for t in r.fields["tokenizer.ggml.tokens"].contents()] == list(tok.tokens)
    assert r.fields["tokenizer.ggml.scores"].types == [VT.ARRAY, VT.FLOAT32]
    assert np.array_equal(np.array(r.fields["tokenizer.ggml.scores"].contents(), np.float32), tok.scores)
    assert r.fields["tokenizer.ggml.token_type"].types == [VT.ARRAY, VT.INT32]
    assert r.fields["tokenizer.ggml.token_type"].contents() == tok.token_types.tolist()
    assert r.alignment == 32
    assert [t.name for t in r.tensors] == list(src.tensors)
    for rt in r.tensors:
        t = src.tensors[rt.name]
        assert rt.shape.tolist() == list(reversed(t.shape))
        assert rt.data_offset % 32 == 0
        if len(t.shape) == 1:
            # llama.cpp multiplies by norms only in f32: 1-D tensors are widened (exactly)
            assert rt.tensor_type == GT.F32 and np.asarray(rt.data).tobytes() == t.f32().tobytes(), rt.name
        else:
            assert rt.tensor_type == {"f32": GT.F32, "f16": GT.F16, "bf16": GT.BF16}[dtype]
            assert np.asarray(rt.data).tobytes() == t.tobytes(), rt.name
    # every tensor at the running padded offset, and the file padded after the last one
    offsets = [rt.data_offset - r.data_offset for rt in r.tensors]
    sizes = [-(-rt.n_bytes // 32) * 32 for rt in r.tensors]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
    assert path.stat().st_size == r.data_offset + sum(sizes)


def test_writer_is_deterministic_and_round_trips_itself(tmp_path):
    src = random_model(MHA | {"n_vocab": 384}, dtype="f16", seed=5, tokenizer=sp_tokenizer())
    a = _write(tmp_path, src, "a.gguf")
    m = open_model(str(a))
    assert m.hparams == src.hparams and set(m.hparam_origin.values()) == {"gguf metadata"}
    assert m.tokenizer.same_as(src.tokenizer) and m.tokenizer.add_bos is True and m.tokenizer.add_eos is False
    for name, t in src.tensors.items():
        assert m.tensors[name].dtype.name == ("f32" if len(t.shape) == 1 else "f16")
        assert np.array_equal(m.tensors[name].numpy(), t.numpy().astype(m.tensors[name].numpy().dtype))
    b = tmp_path / "b" / "a.gguf"   # same name: general.name is the same
    write_model(m, str(b), fmt(), quiet=True)
    assert a.read_bytes() == b.read_bytes()


def test_alignment_option(tmp_path):
    src = random_model(GQA, seed=1, tokenizer=sp_tokenizer())
    path = tmp_path / "m.gguf"
    write_model(src, str(path), fmt(), options={"alignment": "64"}, quiet=True)
    r = gguf.GGUFReader(path)
    assert r.alignment == 64 and _field(r, "general.alignment") == ([VT.UINT32], 64)
    assert all(t.data_offset % 64 == 0 for t in r.tensors)
    m = open_model(str(path))
    assert_same_tensors(src, m)
    assert "general.alignment" not in m.metadata
    res = cli("translate", path, tmp_path / "x.gguf", "-O", "alignment=48")
    assert res.err == "mconv: error: -O alignment=48: alignment must be a nonzero power of two\n"


# -- mconv reads what gguf-py writes ----------------------------------------------------------------

def _gguf_py_model(path, version_kvs=True):
    """A complete llama model written by gguf-py, with every metadata value type and extra tensors
    of every plain type."""
    src = random_model(GQA, seed=4, tokenizer=sp_tokenizer())
    tok = src.tokenizer
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_name("from gguf-py")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(88)
    w.add_head_count(8)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(4)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([t.decode() for t in tok.tokens])
    w.add_token_scores(tok.scores.tolist())
    w.add_token_types(tok.token_types.tolist())
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1 / 3)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_f32", [0.5, 1.5])
    w.add_array("t.arr_str", ["x", "yz"])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_array("t.nested", [[1, 2], [3]])
    for name, t in src.tensors.items():
        w.add_tensor(name, t.numpy())
    extras = {"x.f16": np.arange(6, dtype=np.float16).reshape(2, 3), "x.f64": np.linspace(0, 1, 4),
              "x.i8": np.arange(-4, 4, dtype=np.int8), "x.i16": np.arange(5, dtype=np.int16),
              "x.i32": np.arange(3, dtype=np.int32).reshape(3, 1), "x.i64": np.arange(2, dtype=np.int64)}
    for name, arr in extras.items():
        w.add_tensor(name, arr)
    bf16 = (np.arange(8, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("x.bf16", bf16.reshape(2, 4), raw_dtype=GT.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return src, extras, bf16


def test_mconv_reads_gguf_py_output(tmp_path):
    path = tmp_path / "py.gguf"
    src, extras, bf16 = _gguf_py_model(path)
    m = open_model(str(path))
    assert {k: m.hparams[k] for k in GQA} == GQA
    assert m.hparam_origin["n_head_kv"] == "gguf metadata"
    # lazy: every tensor is a slice of the mapped file at its 64-aligned offset, nothing read yet
    r = gguf.GGUFReader(path)
    for rt in r.tensors:
        src_slice = m.tensors[rt.name].source
        assert src_slice.kind == "file" and src_slice.offset == rt.data_offset and src_slice.offset % 64 == 0
    assert_same_tensors(src, m, list(src.tensors))
    for name, arr in extras.items():
        t = m.tensors[name]
        assert t.shape == arr.shape and np.array_equal(t.numpy(), arr) and t.dtype.name == name[2:]
    assert m.tensors["x.bf16"].dtype.name == "bf16" and m.tensors["x.bf16"].tobytes() == bf16.tobytes()
    tok = m.tokenizer
    assert tok.tokens == src.tokenizer.tokens and np.array_equal(tok.scores, src.tokenizer.scores)
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.add_bos, tok.add_eos) == (1, 2, 0, 0, True, True)
    md = m.metadata
    typed = {"t.u8": np.uint8, "t.i8": np.int8, "t.u16": np.uint16, "t.i16": np.int16, "t.u32": np.uint32,
             "t.i32": np.int32, "t.f32": np.float32, "t.u64": np.uint64, "t.i64": np.int64, "t.f64": np.float64}
    for key, kind in typed.items():
        assert type(md[key]) is kind, key
    assert (md["t.u64"], md["t.i64"], md["t.f64"]) == (2**63 + 5, -(2**62), 1 / 3)
    assert md["t.bool"] is True and md["t.str"] == "héllo" and md["general.name"] == "from gguf-py"
    assert md["t.arr_i32"].dtype == np.int32 and md["t.arr_i32"].tolist() == [1, -2, 3]
    assert md["t.arr_str"] == ["x", "yz"] and md["t.arr_bool"].tolist() == [True, False, True]
    assert [a.tolist() for a in md["t.nested"]] == [[1, 2], [3]]
    assert md["tokenizer.ggml.pre"] == "default"
    for own in ("general.architecture", "general.alignment", "llama.context_length", "tokenizer.ggml.tokens"):
        assert own not in md
    res = cli("inspect", path)
    assert "note:      t.nested is an array of arrays, which llama.cpp's GGUF reader rejects\n" in res.out

    # and back: mconv's rewrite keeps every value and type gguf-py wrote
    out = tmp_path / "again.gguf"
    write_model(m, str(out), fmt(), quiet=True)
    a, b = gguf.GGUFReader(path), gguf.GGUFReader(out)
    for key in a.fields:
        if key.startswith("GGUF.") or key == "general.alignment":
            continue
        assert _field(a, key) == _field(b, key), key
    assert sorted(b.fields) == sorted(set(a.fields) - {"general.alignment"} | {"general.file_type",
                                                                               "general.quantization_version",
                                                                               "llama.vocab_size"})
    for ta, tb in zip(a.tensors, b.tensors):
        assert (ta.name, ta.tensor_type, ta.shape.tolist()) == (tb.name, tb.tensor_type, tb.shape.tolist())
        assert np.asarray(ta.data).tobytes() == np.asarray(tb.data).tobytes()


def test_reads_version_2(tmp_path):
    path = _write(tmp_path, random_model(GQA, seed=1, tokenizer=sp_tokenizer()))
    blob = bytearray(path.read_bytes())
    blob[4:8] = struct.pack("<I", 2)
    (tmp_path / "v2.gguf").write_bytes(bytes(blob))
    m2 = open_model(str(tmp_path / "v2.gguf"))
    assert_same_tensors(open_model(str(path)), m2)
    assert any(s.detail.startswith("GGUF v2") for s in m2.history)


# -- round trips through other formats ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_round_trip_through_safetensors_and_npz(tmp_path, dtype, npz_plugin):
    src = random_model(GQA, dtype=dtype, seed=7, tokenizer=sp_tokenizer())
    a = _write(tmp_path, src, "a.gguf")
    res = cli("translate", a, tmp_path / "b.safetensors")
    assert res.rc == 0, res.err
    res = cli("translate", tmp_path / "b.safetensors", tmp_path / "c.npz")
    assert res.rc == 0, res.err
    res = cli("translate", tmp_path / "c.npz", tmp_path / "d" / "a.gguf")
    assert res.rc == 0, res.err
    ra, rd = gguf.GGUFReader(a), gguf.GGUFReader(tmp_path / "d" / "a.gguf")
    assert [t.name for t in ra.tensors] == [t.name for t in rd.tensors]
    for ta, td in zip(ra.tensors, rd.tensors):
        assert ta.tensor_type == td.tensor_type and np.asarray(ta.data).tobytes() == np.asarray(td.data).tobytes()
    d = open_model(str(tmp_path / "d" / "a.gguf"))
    assert d.hparams == src.hparams and d.tokenizer.same_as(src.tokenizer)


# -- semantics ----------------------------------------------------------------------------------------

def test_model_without_tokenizer_needs_allow_lossy(tmp_path):
    src = random_model(GQA, seed=1)
    with pytest.raises(LossyConversionError) as e:
        write_model(src, str(tmp_path / "m.gguf"), fmt(), quiet=True)
    assert str(e.value) == ("converting to gguf would lose information: tokenizer (none): GGUF needs a vocabulary; "
                            "tokenizer.ggml.model will be 'no_vocab' and llama.cpp cannot tokenize text with it; "
                            "pass --allow-lossy to accept")
    assert not (tmp_path / "m.gguf").exists()
    write_model(src, str(tmp_path / "m.gguf"), fmt(), allow_lossy=True, quiet=True)
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(r, "tokenizer.ggml.model") == ([VT.STRING], "no_vocab")
    assert "tokenizer.ggml.tokens" not in r.fields
    m = open_model(str(tmp_path / "m.gguf"))
    assert m.tokenizer is None
    assert_same_tensors(src, m)


def test_duplicate_tokens_refused(tmp_path):
    tok = sp_tokenizer()
    tokens = list(tok.tokens)
    tokens[300] = tokens[299]
    from dataclasses import replace

    src = random_model(GQA, seed=1, tokenizer=replace(tok, tokens=tuple(tokens)))
    with pytest.raises(UnsupportedError) as e:
        write_model(src, str(tmp_path / "m.gguf"), fmt(), quiet=True)
    assert str(e.value) == (f"the vocabulary has 1 duplicate token(s), e.g. {tokens[299]!r}; "
                            "llama.cpp aborts on duplicate tokens")
    assert list(tmp_path.iterdir()) == []


def test_vocab_size_must_match_embedding(tmp_path):
    src = random_model(GQA | {"n_vocab": 400}, seed=1, tokenizer=sp_tokenizer())
    res = cli("translate", "--from", "safetensors", _st(tmp_path, src), tmp_path / "m.gguf")
    assert res.err.endswith("the vocabulary has 384 tokens but token_embd.weight has 400 rows; llama.cpp requires "
                            "them to be equal\n")


def _st(tmp_path, model):
    path = tmp_path / "src.safetensors"
    write_model(model, str(path), get_registry().format("safetensors"), quiet=True)
    return path


def test_wrong_key_types_are_noted(tmp_path):
    """llama.cpp enforces key types exactly; mconv reads such a file but says what will fail."""
    src = random_model(GQA, seed=1, tokenizer=sp_tokenizer())
    path = _write(tmp_path, src)
    m = open_model(str(path))
    r = gguf.GGUFReader(path)
    kv = [gkv("general.architecture", STRING, "llama"), gkv("llama.context_length", I32, 128)]
    for key in ("llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv"):
        kv.append(gkv(key, U32, int(r.fields[key].contents())))
    infos, data, offset = [], b"", 0
    from hostile_gguf import ginfo

    for t in m.tensors.values():
        infos.append(ginfo(t.name, list(reversed(t.shape)), 0, offset))
        raw = t.tobytes() + b"\0" * (-t.nbytes % 32)
        data += raw
        offset += len(raw)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(gguf_file(kv, infos, data))
    res = cli("inspect", bad)
    assert res.rc == 0, res.err
    assert ("note:      llama.context_length is i32; llama.cpp requires u32 and will refuse to load this file\n"
            in res.out)
    assert "norm_eps     1e-05          (default (gguf))" in res.out


def test_rope_dimension_must_be_head_size(tmp_path):
    src = random_model(GQA, seed=1, tokenizer=sp_tokenizer())
    path = _write(tmp_path, src)
    r = gguf.GGUFReader(path)
    f = r.fields["llama.rope.dimension_count"]
    blob = bytearray(path.read_bytes())
    struct.pack_into("<I", blob, f.offset + len(f.parts[0].tobytes()) + len(f.parts[1].tobytes()) + 4, 2)
    (tmp_path / "bad.gguf").write_bytes(bytes(blob))
    res = cli("inspect", tmp_path / "bad.gguf")
    assert res.err == (f"mconv: error: {tmp_path / 'bad.gguf'}: llama.rope.dimension_count is 2 but the head size "
                       "is 4; partial rotary embeddings are not supported\n")


def test_unknown_architecture(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(gguf_file([gkv("general.architecture", STRING, "gpt2")], []))
    res = cli("inspect", path)
    assert res.err == f"mconv: error: {path}: architecture 'gpt2' is not supported\n"
    path.write_bytes(gguf_file([ARCH.replace(b"general.architecture", b"general.architectur_")], []))
    res = cli("inspect", path)
    assert res.err == f"mconv: error: {path}: general.architecture is missing\n"


def test_1d_f16_file_type_and_extra_tensors(tmp_path):
    src = random_model(GQA, dtype="f16", seed=1, tokenizer=sp_tokenizer())
    src.tensors["rope_freqs.weight"] = tensor_from_array("rope_freqs.weight", np.ones(2, np.float32),
                                                         src.tensors["output_norm.weight"].dtype)
    path = _write(tmp_path, src)
    r = gguf.GGUFReader(path)
    assert _field(r, "general.file_type") == ([VT.UINT32], 1)
    m = open_model(str(path))
    assert "rope_freqs.weight" not in m.tensors   # the naming table ignores it for llama


def test_1d_tensors_are_written_f32(tmp_path):
    """llama.cpp aborts on f16/bf16 norm weights ("binary_op: unsupported types"): 1-D tensors are
    widened to f32 (exactly), also under an explicit --dtype f16."""
    src = _st(tmp_path, random_model(GQA, dtype="bf16", seed=1, tokenizer=sp_tokenizer()))
    res = cli("translate", src, tmp_path / "a.gguf")
    assert res.rc == 0, res.err
    assert "  dtype: 5 tensor(s) bf16 -> f32 (widened losslessly)\n" in res.out
    res = cli("translate", tmp_path / "a.gguf", tmp_path / "b.gguf", "--dtype", "f16")
    assert res.rc == 0, res.err
    assert "  dtype: 16 tensor(s) bf16 -> f16 (converted)\n" in res.out
    m = open_model(str(tmp_path / "b.gguf"))
    assert {n: t.dtype.name for n, t in m.tensors.items() if len(t.shape) == 1} == {
        n: "f32" for n, t in m.tensors.items() if len(t.shape) == 1}
    assert {t.dtype.name for t in m.tensors.values() if len(t.shape) == 2} == {"f16"}


# -- quantized tensors ----------------------------------------------------------------------------------

#: rows of 256 so every K-quant applies; n_ff 768 also suits ggjt (n_mult 256)
KHP = dict(n_vocab=384, n_embd=256, n_layer=1, n_head=8, n_head_kv=2, n_ff=768, n_ctx=64, norm_eps=1e-5,
           rope_theta=10000.0)


@pytest.mark.parametrize("request_,ftype", [("q8_0", 7), ("q4_0", 2), ("q4_1", 3), ("q5_0", 8), ("q5_1", 9),
                                            ("q4_k_m", 15), ("q4_k_s", 14), ("q6_k", 18), ("q2_k", 10)])
def test_gguf_py_reads_quantized_output(tmp_path, request_, ftype):
    src = random_model(KHP, seed=3, tokenizer=sp_tokenizer())
    path = tmp_path / "m.gguf"
    write_model(src, str(path), fmt(), dtype=request_, quiet=True)
    m = open_model(str(path))
    r = gguf.GGUFReader(path)
    assert _field(r, "general.file_type") == ([VT.UINT32], ftype)
    assert _field(r, "general.quantization_version") == ([VT.UINT32], 2)
    quantized = 0
    for rt in r.tensors:
        t = m.tensors[rt.name]
        assert rt.tensor_type == GT[t.dtype.name.upper()]
        assert np.asarray(rt.data).tobytes() == t.tobytes()
        values = gguf.quants.dequantize(np.asarray(rt.data), rt.tensor_type)
        assert np.array_equal(values.reshape(t.shape), t.f32(), equal_nan=True), rt.name
        quantized += t.dtype.is_quantized
    assert quantized == 9   # every 2-D tensor; 1-D ones stay f32


def test_quantized_tensors_are_copied_byte_for_byte(tmp_path):
    """gguf-py's own quantizers write the source; mconv keeps those bytes through GGUF -> GGUF and
    GGUF -> ggjt -> GGUF (no re-quantization)."""
    src = random_model(KHP, seed=8, tokenizer=sp_tokenizer())
    path = tmp_path / "py.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in (("context_length", 64), ("embedding_length", 256), ("block_count", 1),
                       ("feed_forward_length", 768), ("head_count", 8), ("head_count_kv", 2)):
        getattr(w, f"add_{key}")(value)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([t.decode() for t in src.tokenizer.tokens])
    w.add_token_scores(src.tokenizer.scores.tolist())
    w.add_token_types(src.tokenizer.token_types.tolist())
    kinds = [GT.Q8_0, GT.Q4_0, GT.Q4_1, GT.Q5_0, GT.Q5_1, GT.Q8_0, GT.Q4_0, GT.Q5_1, GT.Q8_0]
    raw = {}
    for name, t in src.tensors.items():
        values = t.numpy()
        if values.ndim == 2:
            kind = kinds[len(raw) % len(kinds)]
            raw[name] = gguf.quants.quantize(values, kind)
            w.add_tensor(name, raw[name], raw_dtype=kind)
        else:
            w.add_tensor(name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = open_model(str(path))
    for name, data in raw.items():
        assert m.tensors[name].tobytes() == data.tobytes(), name
    assert cli("translate", path, tmp_path / "a.gguf").rc == 0
    assert cli("translate", path, tmp_path / "b.bin", "--to", "ggml").rc == 0
    assert cli("translate", tmp_path / "b.bin", tmp_path / "c.gguf", "--hparam", "n_ctx=64").rc == 0
    for out in ("a.gguf", "b.bin", "c.gguf"):
        back = open_model(str(tmp_path / out))
        for name, data in raw.items():
            assert back.tensors[name].tobytes() == data.tobytes(), (out, name)
    # the ggjt file type is Q8_0 (the dominant type), carried back into GGUF
    assert _field(gguf.GGUFReader(tmp_path / "c.gguf"), "general.file_type") == ([VT.UINT32], 7)


def test_q4_0_gguf_ggml_gguf_is_byte_identical(tmp_path):
    src = _st(tmp_path, random_model(KHP, seed=2, tokenizer=sp_tokenizer()))
    a = tmp_path / "a.gguf"
    assert cli("translate", src, a, "--dtype", "q4_0").rc == 0
    res = cli("translate", a, tmp_path / "b.bin", "--to", "ggml")
    assert res.rc == 0 and "dtype" not in res.out      # nothing cast: copied as stored
    res = cli("translate", tmp_path / "b.bin", tmp_path / "c" / "a.gguf", "--hparam", "n_ctx=64")
    assert res.rc == 0, res.err
    assert (tmp_path / "c" / "a.gguf").read_bytes() == a.read_bytes()
    ra = gguf.GGUFReader(a)
    assert {t.tensor_type for t in ra.tensors} == {GT.Q4_0, GT.Q6_K, GT.F32}   # output.weight: Q6_K (llama.cpp)


def test_file_type_survives_a_rewrite(tmp_path):
    src = _st(tmp_path, random_model(KHP, seed=2, tokenizer=sp_tokenizer()))
    assert cli("translate", src, tmp_path / "s.gguf", "--dtype", "q4_k_s").rc == 0
    assert cli("translate", tmp_path / "s.gguf", tmp_path / "t.gguf").rc == 0
    assert _field(gguf.GGUFReader(tmp_path / "t.gguf"), "general.file_type") == ([VT.UINT32], 14)
    assert cli("translate", tmp_path / "s.gguf", tmp_path / "u.gguf", "--dtype", "f16").rc == 0
    assert _field(gguf.GGUFReader(tmp_path / "u.gguf"), "general.file_type") == ([VT.UINT32], 1)
