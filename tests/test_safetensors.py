"""safetensors reader/writer: oracles (the safetensors package, torch), HF directories, sharding,
and the HF q/k permutation proven by computing attention both ways."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from testlib import GQA, assert_same_tensors, cli, random_model, sentencepiece_model, sp_tokenizer

from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry
from mconv.plugins import get_dtype, tensor_from_array


def st():
    return get_registry().format("safetensors")


def test_bf16_gqa_untied_roundtrip_through_npz_is_lossless(tmp_path, npz_plugin):
    src = random_model(GQA, dtype="bf16", seed=1, tied=False, tokenizer=sp_tokenizer())
    write_model(src, str(tmp_path / "a.safetensors"), st())
    a = open_model(str(tmp_path / "a.safetensors"))
    r1 = write_model(a, str(tmp_path / "b.npz"), npz_plugin)
    b = open_model(str(tmp_path / "b.npz"))
    r2 = write_model(b, str(tmp_path / "c.safetensors"), st())
    c = open_model(str(tmp_path / "c.safetensors"))
    assert r1.plan.lossless and r2.plan.lossless
    for m in (a, b, c):
        assert_same_tensors(src, m)
        assert all(t.dtype.name == "bf16" for t in m.tensors.values())
        assert {k: m.hparams[k] for k in GQA} == GQA
        assert m.tokenizer is not None and m.tokenizer.same_as(src.tokenizer)
        assert m.tokenizer.sp_model == sentencepiece_model()
    # the file is byte-identical after the round trip, too
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "c.safetensors").read_bytes()


def test_safetensors_package_reads_what_mconv_wrote(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors import safe_open

    src = random_model(GQA, dtype="bf16", seed=2)
    extra = {"ints": tensor_from_array("ints", np.arange(-6, 6, dtype=np.int64).reshape(3, 4), get_dtype("i64")),
             "flags": tensor_from_array("flags", np.array([True, False, True]), get_dtype("bool")),
             "f16": tensor_from_array("f16", np.linspace(-2, 2, 10, dtype=np.float32), get_dtype("f16")),
             "scalar": tensor_from_array("scalar", np.array(3.5, dtype=np.float32), get_dtype("f32"))}
    src.tensors.update(extra)
    write_model(src, str(tmp_path / "m.safetensors"), st())
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        names = list(f.keys())
        got = {n: f.get_tensor(n) for n in names}
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    emb = got["model.embed_tokens.weight"]
    assert emb.dtype == torch.bfloat16
    ours = src.tensors["token_embd.weight"].raw().view(np.uint16).reshape(emb.shape)
    assert np.array_equal(emb.view(torch.int16).numpy().view(np.uint16), ours)
    assert got["ints"].tolist() == np.arange(-6, 6).reshape(3, 4).tolist()
    assert got["flags"].tolist() == [True, False, True]
    assert got["scalar"].shape == () and float(got["scalar"]) == 3.5
    np.testing.assert_array_equal(got["f16"].numpy(), np.linspace(-2, 2, 10, dtype=np.float32).astype(np.float16))


def test_reads_files_written_by_the_safetensors_package(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.uint16),
              "c": np.zeros((0, 4), dtype=np.float64), "d": np.array([1, -2], dtype=np.int8)}
    save_file(arrays, str(tmp_path / "x.safetensors"), metadata={"k": "v"})
    m = open_model(str(tmp_path / "x.safetensors"), check=False, hparams={"n_head": 1})
    for k, v in arrays.items():
        np.testing.assert_array_equal(m.tensors[k].numpy(), v)
        assert m.tensors[k].numpy().dtype == v.dtype
    assert m.metadata == {"k": "v"}


def _rope_interleaved(x, pos, theta):
    """Meta/llama2.c RoPE: rotate adjacent pairs (2i, 2i+1) of each head."""
    hd = x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * freqs[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def test_hf_permutation_is_proven_by_attention(tmp_path):
    """rotate_half attention (torch, as transformers computes it) on mconv's HF output equals
    interleaved-pair attention on the Meta-layout source (GQA, 8 heads, 2 kv heads)."""
    torch = pytest.importorskip("torch")
    hp = dict(GQA, n_head=8, n_head_kv=2, n_embd=64)
    src = random_model(hp, dtype="f32", seed=3)
    write_model(src, str(tmp_path / "hf") + "/", st())
    from safetensors.torch import load_file

    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    n_head, n_kv, theta = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rope_theta"]
    hd = hp["n_embd"] // n_head
    T = 12
    x = np.random.default_rng(0).standard_normal((T, hp["n_embd"])).astype(np.float32)
    pos = np.arange(T, dtype=np.float64)

    # Meta layout, interleaved pairs, numpy
    wq = src.tensors["blk.0.attn_q.weight"].numpy()
    wk = src.tensors["blk.0.attn_k.weight"].numpy()
    x64 = x.astype(np.float64)
    q = _rope_interleaved((x64 @ wq.T.astype(np.float64)).reshape(T, n_head, hd), pos, theta)
    k = _rope_interleaved((x64 @ wk.T.astype(np.float64)).reshape(T, n_kv, hd), pos, theta)
    k = np.repeat(k, n_head // n_kv, axis=1)
    scores_meta = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)

    # HF layout, rotate_half, torch
    xt = torch.from_numpy(x).double()
    qh = (xt @ hf["model.layers.0.self_attn.q_proj.weight"].double().T).view(T, n_head, hd)
    kh = (xt @ hf["model.layers.0.self_attn.k_proj.weight"].double().T).view(T, n_kv, hd)
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    emb = torch.cat([torch.outer(torch.from_numpy(pos), inv)] * 2, dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rotate_half(t):
        return torch.cat([-t[..., hd // 2:], t[..., :hd // 2]], dim=-1)

    qh = qh * cos + rotate_half(qh) * sin
    kh = (kh * cos + rotate_half(kh) * sin).repeat_interleave(n_head // n_kv, dim=1)
    scores_hf = torch.einsum("thd,shd->hts", qh, kh).numpy() / np.sqrt(hd)
    np.testing.assert_allclose(scores_hf, scores_meta, rtol=1e-9, atol=1e-9)
    # and the permutation is not the identity: without it the scores differ
    raw_q = (xt @ torch.from_numpy(wq).double().T).view(T, n_head, hd)
    raw_q = raw_q * cos + rotate_half(raw_q) * sin
    assert not np.allclose(torch.einsum("thd,shd->hts", raw_q, kh).numpy() / np.sqrt(hd), scores_meta, atol=1e-3)
    # mconv reads its HF directory back into the Meta layout
    back = open_model(str(tmp_path / "hf"))
    assert_same_tensors(src, back)


def test_hf_directory_is_complete(tmp_path):
    tok = sp_tokenizer()
    src = random_model(GQA, dtype="bf16", seed=4, tied=True, tokenizer=tok)
    write_model(src, str(tmp_path / "hf") + "/", st())
    files = sorted(os.listdir(tmp_path / "hf"))
    assert files == ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                     "tokenizer.model", "tokenizer_config.json"]
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (32, 88, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (8, 2)
    assert (cfg["rms_norm_eps"], cfg["rope_theta"], cfg["max_position_embeddings"]) == (1e-5, 10000.0, 128)
    assert (cfg["vocab_size"], cfg["tie_word_embeddings"], cfg["torch_dtype"]) == (384, True, "bfloat16")
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == sentencepiece_model()
    tc = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert (tc["bos_token"], tc["eos_token"], tc["unk_token"], tc["add_bos_token"]) == ("<s>", "</s>", "<unk>", True)
    assert json.loads((tmp_path / "hf" / "special_tokens_map.json").read_text()) == {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    # tied: no lm_head; read back ties again
    back = open_model(str(tmp_path / "hf"))
    assert "output.weight" not in back.tensors
    assert back.hparam_origin["n_head"] == "safetensors metadata"


def test_sharded_directory_with_index(tmp_path):
    src = random_model(GQA, dtype="f32", seed=5)
    res = cli("translate", "--to", "safetensors", "-O", "shard_size=20KB", *_write_src(tmp_path, src),
              str(tmp_path / "sharded") + "/")
    assert res.rc == 0, res.err
    files = sorted(os.listdir(tmp_path / "sharded"))
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == src.nbytes()
    assert set(index["weight_map"].values()) == set(shards)
    from safetensors import safe_open

    for shard in shards:
        with safe_open(str(tmp_path / "sharded" / shard), framework="np") as f:
            count = len(list(f.keys()))
        # a shard stays under the limit unless it holds a single tensor larger than the limit
        assert count == 1 or os.path.getsize(tmp_path / "sharded" / shard) < 20_000 + 4096
    back = open_model(str(tmp_path / "sharded"))
    assert_same_tensors(src, back)
    # an HF directory without mconv metadata: hparams come from config.json, q/k un-permuted
    for shard in shards:
        _strip_mconv_metadata(tmp_path / "sharded" / shard)
    bare = open_model(str(tmp_path / "sharded"))
    assert bare.hparam_origin["n_head"] == "config.json"
    assert_same_tensors(src, bare)


def _write_src(tmp_path, model):
    path = str(tmp_path / "src.safetensors")
    write_model(model, path, st())
    return [path]


def _strip_mconv_metadata(path):
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = {"format": "pt"}
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + blob[8 + n:])


def test_hf_directory_without_config_needs_n_head(tmp_path):
    src = random_model(GQA, dtype="f32", seed=6)
    write_model(src, str(tmp_path / "hf") + "/", st())
    os.remove(tmp_path / "hf" / "config.json")
    _strip_mconv_metadata(tmp_path / "hf" / "model.safetensors")
    res = cli("inspect", str(tmp_path / "hf"))
    assert res.rc == 2
    assert res.err == (f"mconv: error: {tmp_path / 'hf'}: hparam n_head is not stored in the file or a sidecar and "
                       "cannot be inferred from tensor shapes; give it with --hparam n_head=N\n")
    res = cli("translate", str(tmp_path / "hf"), str(tmp_path / "out.safetensors"), "--hparam", "n_head=8")
    assert res.rc == 0, res.err
    back = open_model(str(tmp_path / "out.safetensors"))
    assert back.hparams["n_head_kv"] == 2 and back.hparam_origin["n_head_kv"] == "safetensors metadata"
    assert_same_tensors(src, back, [n for n in src.tensors])


def test_meta_named_safetensors_with_params_json(tmp_path):
    """A generic container with Meta names + params.json (what the demo training script writes)."""
    from safetensors.numpy import save_file
    from testlib import random_weights

    from mconv.plugins import table

    w = random_weights(GQA, seed=7)
    names = table("llama")
    save_file({names.from_canonical(k, "meta"): v for k, v in w.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2,
                                                      "vocab_size": -1, "norm_eps": 1e-6, "multiple_of": 8}))
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model())
    m = open_model(str(tmp_path))
    assert m.hparams["norm_eps"] == 1e-6 and m.hparam_origin["norm_eps"] == "params.json"
    assert m.hparams["n_vocab"] == 384 and m.hparam_origin["n_vocab"] == "tensor shapes"
    assert m.hparam_origin["n_ctx"].startswith("default")
    assert any(s.kind == "default" and s.detail.startswith("n_ctx=2048") for s in m.history)
    for k, v in w.items():
        np.testing.assert_array_equal(m.tensors[k].numpy(), v)
    assert len(m.tokenizer) == 384


# -- malformed inputs ------------------------------------------------------------------------------------

def _file(tmp_path, header, data=b"", raw_header=None):
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return p


MALFORMED = [
    ("short", None, "file of 3 bytes is too short for the 8-byte header size"),
    ("huge_header", None, "offset 0: header size 100000001 exceeds the 100000000-byte limit"),
    ("past_eof", None, "offset 0: header size 50 runs past the end of the file (12 bytes)"),
    ("not_json", None, "offset 9: header is not valid JSON (Expecting property name enclosed in double quotes at byte 1)"),
    ("array", None, "offset 8: header is not a JSON object"),
    ("dup", None, "offset 8: header names 'a' twice"),
    ("dtype", {"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
     "tensor 'a': unsupported dtype 'C64' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, "
     "BOOL, F8_E4M3, F8_E5M2)"),
    ("span", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
     "tensor 'a': shape [3] of F32 needs 12 bytes but data_offsets span 8"),
    ("negative", {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}},
     "tensor 'a': shape [-1] is not a list of non-negative integers"),
    ("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
     "tensor 'b', offset {D+4}: data_offsets [4, 12] overlaps the previous tensor"),
    ("gap", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
     "tensor 'a', offset {D+4}: data_offsets [4, 8] leaves a gap after offset 0"),
    ("short_data", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
     "offset {D+16}: tensors cover 16 bytes of data but the file holds 8"),
    ("metadata", {"__metadata__": {"a": 1}}, "offset 8: __metadata__ must map strings to strings"),
    ("bool_shape", {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
     "tensor 'a': shape [True] is not a list of non-negative integers"),
    ("extra_field", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}},
     "tensor 'a': unknown field(s) ['x']"),
]


@pytest.mark.parametrize("case,header,message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_safetensors_refused(tmp_path, case, header, message):
    if case == "short":
        p = tmp_path / "bad.safetensors"
        p.write_bytes(b"abc")
    elif case == "huge_header":
        p = tmp_path / "bad.safetensors"
        p.write_bytes(struct.pack("<Q", 100_000_001) + b"{}")
    elif case == "past_eof":
        p = tmp_path / "bad.safetensors"
        p.write_bytes(struct.pack("<Q", 50) + b"{}  ")
    elif case == "not_json":
        p = _file(tmp_path, None, raw_header=b"{x")
    elif case == "array":
        p = _file(tmp_path, None, raw_header=b"[1, 2]")
    elif case == "dup":
        p = _file(tmp_path, None, raw_header=b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                             b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', data=b"\0" * 4)
    else:
        p = _file(tmp_path, header, data=b"\0" * 8)
    res = cli("translate", "--from", "safetensors", str(p), str(tmp_path / "out.safetensors"))
    assert res.rc == 2
    if header is not None:
        data_start = 8 + len(json.dumps(header))
        for k in (4, 16):
            message = message.replace(f"{{D+{k}}}", str(data_start + k))
    assert res.err == f"mconv: error: {p}: {message}\n"
    assert res.out == ""
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]


def test_malformed_index_refused(tmp_path):
    src = random_model(GQA, dtype="f32", seed=8)
    write_model(src, str(tmp_path / "d") + "/", st(), options={"shard_size": "20KB"})
    index_path = tmp_path / "d" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    res = cli("inspect", str(tmp_path / "d"))
    assert res.rc == 2
    assert res.err == (f"mconv: error: {index_path}: shard '../../etc/passwd' of tensor {first!r} is not a file name "
                       "in the same directory\n")
