"""Conversions across formats: every lossless pair validates bit-equal, round trips are byte-identical
where they should be, and losses are reported (issues 4, 5 and 6's cross-format "Done when" lines)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from testlib import GQA, MHA, assert_same_tensors, cli, random_model, sp_tokenizer

from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry

torch = pytest.importorskip("torch")
from torch_oracle import hf_bin_dir, meta_dir, train_checkpoint  # noqa: E402

#: norm_eps 1e-5 and theta 10000, as llama2.c requires; GQA; n_vocab fits the test tokenizer
HP = dict(GQA)


def fmt(name):
    return get_registry().format(name)


def validate_ok(a, b, *extra):
    res = cli("validate", a, b, "--brief", *extra)
    assert res.rc == 0, res.out + res.err
    return res.out


# -- issue 4: every pth layout converts, and validates bit-equal -----------------------------------------

def _pth_sources(tmp_path):
    meta_dir(str(tmp_path / "meta1"), HP, shards=1, seed=1)
    meta_dir(str(tmp_path / "meta2"), HP, shards=2, seed=2)
    hf_bin_dir(str(tmp_path / "hfbin"), HP, shards=2, seed=3)
    train_checkpoint(str(tmp_path / "ckpt.pt"), MHA, seed=4)
    return {"meta dir": (tmp_path / "meta1", []), "2-shard meta dir": (tmp_path / "meta2", []),
            "hf sharded bin": (tmp_path / "hfbin", []), "train.py checkpoint": (tmp_path / "ckpt.pt", [])}


@pytest.mark.parametrize("target", ["safetensors", "pth"])
def test_pth_layouts_convert_and_validate(tmp_path, target):
    for label, (src, extra) in _pth_sources(tmp_path).items():
        out = tmp_path / f"out-{target}-{label.replace(' ', '_')}"
        out_arg = str(out) + ("/" if target == "pth" else ".safetensors")
        res = cli("translate", src, out_arg, "--to", target, "--validate", *extra)
        assert res.rc == 0, (label, res.err)
        assert "validate: ok" in res.err + res.out, (label, res.out, res.err)
        out_path = out_arg.rstrip("/")
        out_text = validate_ok(src, out_path)
        assert "bit-equal" in out_text or "max |Δlogit| 0 " in out_text, (label, out_text)
        a, b = open_model(str(src)), open_model(out_path)
        assert_same_tensors(a, b, list(a.tensors))
        a.close(), b.close()


# -- issue 5: pth <-> gguf, gguf -> ggml -> gguf ------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_pth_gguf_pth_is_bit_identical(tmp_path, dtype):
    src = random_model(HP, dtype=dtype, seed=5, tokenizer=sp_tokenizer())
    write_model(src, str(tmp_path / "a") + "/", fmt("pth"), quiet=True)
    res = cli("translate", tmp_path / "a", tmp_path / "b.gguf", "--validate")
    assert res.rc == 0, res.err
    gguf = open_model(str(tmp_path / "b.gguf"))
    assert {t.dtype.name for n, t in gguf.tensors.items() if len(t.shape) == 1} == {"f32"}  # llama.cpp needs f32 norms
    res = cli("translate", tmp_path / "b.gguf", str(tmp_path / "c") + "/", "--to", "pth", "--validate")
    assert res.rc == 0, res.err
    a, c = open_model(str(tmp_path / "a")), open_model(str(tmp_path / "c"))
    assert_same_tensors(a, c)            # names, shapes, dtypes (norms narrowed back) and bytes
    assert {k: v for k, v in a.hparams.items() if k != "n_ctx"} == {k: v for k, v in c.hparams.items() if k != "n_ctx"}
    for f in ("consolidated.00.pth", "params.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes(), f
    # GGUF keeps the vocabulary, not the tokenizer.model file: the one rebuilt from it has the same
    # pieces, scores, types and special ids, and sentencepiece tokenizes with it identically
    import sentencepiece as spm
    from testlib import corpus_text

    assert c.tokenizer.same_as(a.tokenizer)
    sp_a = spm.SentencePieceProcessor(model_proto=(tmp_path / "a" / "tokenizer.model").read_bytes())
    sp_c = spm.SentencePieceProcessor(model_proto=(tmp_path / "c" / "tokenizer.model").read_bytes())
    text = corpus_text()[:20000]
    assert sp_c.encode(text) == sp_a.encode(text) and sp_c.decode(sp_a.encode(text)) == sp_a.decode(sp_a.encode(text))
    validate_ok(tmp_path / "a", tmp_path / "b.gguf")
    loaded = torch.load(tmp_path / "c" / "consolidated.00.pth", weights_only=True)
    assert str(loaded["norm.weight"].dtype) == {"f32": "torch.float32", "f16": "torch.float16",
                                                "bf16": "torch.bfloat16"}[dtype]


def _tensor_data(path):
    from gguf import GGUFReader

    return {t.name: bytes(t.data.tobytes()) for t in GGUFReader(str(path)).tensors}


def test_gguf_q4_0_through_ggml_keeps_tensor_bytes(tmp_path):
    src = random_model(HP, dtype="f32", seed=6, tokenizer=sp_tokenizer())
    write_model(src, str(tmp_path / "a.gguf"), fmt("gguf"), dtype="q4_0", quiet=True)
    assert cli("translate", tmp_path / "a.gguf", tmp_path / "b.bin", "--to", "ggml").rc == 0
    res = cli("translate", tmp_path / "b.bin", tmp_path / "c.gguf", "--hparam", "n_ctx=128")
    assert res.rc == 0, res.err
    a, c = _tensor_data(tmp_path / "a.gguf"), _tensor_data(tmp_path / "c.gguf")
    assert a == c and any(open_model(str(tmp_path / "a.gguf")).tensors[n].dtype.name == "q4_0" for n in a)
    validate_ok(tmp_path / "a.gguf", tmp_path / "c.gguf")


# -- issue 6: llama2.c through pth and gguf ------------------------------------------------------------------

def test_pth_llama2c_gguf_llama2c_is_byte_identical(tmp_path):
    meta_dir(str(tmp_path / "meta"), HP, shards=2, seed=7)
    assert cli("translate", tmp_path / "meta", tmp_path / "v0" / "model.bin", "--to", "llama2c", "--validate").rc == 0
    res = cli("translate", tmp_path / "v0" / "model.bin", tmp_path / "m.gguf", "--validate")
    assert res.rc == 0, res.err
    res = cli("translate", tmp_path / "m.gguf", tmp_path / "v0b" / "model.bin", "--to", "llama2c", "--validate")
    assert res.rc == 0, res.err
    for f in ("model.bin", "tokenizer.bin"):
        assert (tmp_path / "v0" / f).read_bytes() == (tmp_path / "v0b" / f).read_bytes(), f
    validate_ok(tmp_path / "meta", tmp_path / "v0" / "model.bin")
    validate_ok(tmp_path / "v0" / "model.bin", tmp_path / "m.gguf")


def test_llama2c_v2_through_npz_is_byte_identical(tmp_path, npz_plugin):
    src = random_model(HP | {"n_ff": 96}, seed=8, tokenizer=sp_tokenizer())
    write_model(src, str(tmp_path / "v2") + "/", fmt("llama2c"), dtype="l2c_q8", quiet=True)
    assert cli("translate", tmp_path / "v2", tmp_path / "m.npz", "--validate").rc == 0
    res = cli("translate", tmp_path / "m.npz", tmp_path / "v2b" / "model.bin", "--to", "llama2c", "--validate")
    assert res.rc == 0, res.err
    for f in ("model.bin", "tokenizer.bin"):
        assert (tmp_path / "v2" / f).read_bytes() == (tmp_path / "v2b" / f).read_bytes(), f
    validate_ok(tmp_path / "v2", tmp_path / "m.npz")


def test_llama2c_v2_to_gguf_q8_0_is_a_reported_loss(tmp_path):
    src = random_model(HP, seed=9, tokenizer=sp_tokenizer())
    write_model(src, str(tmp_path / "v2") + "/", fmt("llama2c"), dtype="l2c_q8", quiet=True)
    # GGUF has no l2c_q8: without --dtype the int8 groups widen losslessly to f32 ...
    res = cli("translate", tmp_path / "v2", tmp_path / "f32.gguf", "--validate")
    assert res.rc == 0 and "tensor(s) l2c_q8@8 -> f32 (widened losslessly)" in res.out, res.out + res.err
    validate_ok(tmp_path / "v2", tmp_path / "f32.gguf")
    # ... and asking for ggml's q8_0 re-quantizes, which the report says
    res = cli("translate", tmp_path / "v2", tmp_path / "m.gguf", "--dtype", "q8_0")
    assert res.rc == 0, res.err
    assert "(re-quantized: dequantized from l2c_q8@8, quantized to q8_0; values change)" in res.out, res.out
    out = cli("validate", tmp_path / "v2", tmp_path / "m.gguf", "--brief")
    assert "bit-equal" not in out.out


# -- dtypes widened for one format come back ----------------------------------------------------------------

def test_widened_norms_are_restored_by_a_target_that_holds_them(tmp_path):
    src = random_model(HP, dtype="bf16", seed=10, tokenizer=sp_tokenizer())
    write_model(src, str(tmp_path / "a.safetensors"), fmt("safetensors"), quiet=True)
    res = cli("translate", tmp_path / "a.safetensors", tmp_path / "b.gguf")
    assert "dtype: 5 tensor(s) bf16 -> f32 (widened losslessly)" in res.out
    inspect = cli("inspect", tmp_path / "b.gguf").out
    assert "  output_norm.weight        f32 " in inspect and "mconv.widened" in inspect
    res = cli("translate", tmp_path / "b.gguf", tmp_path / "c.safetensors")
    assert "dtype: 5 tensor(s) f32 -> bf16 (restored: widened by an earlier write)" in res.out
    assert_same_tensors(src, open_model(str(tmp_path / "c.safetensors")))


def test_demo_model_goes_everywhere_and_back(tmp_path):
    """The shipped model through every writable format and back to safetensors, bit-identical."""
    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "pydoc-llama")
    base = open_model(demo)
    for target, out in (("gguf", "m.gguf"), ("pth", "pth/"), ("llama2c", "l2c/"), ("ggml", "m.bin")):
        res = cli("translate", demo, str(tmp_path / out) + ("/" if out.endswith("/") else ""), "--to", target,
                  "--validate")
        assert res.rc == 0, (target, res.err)
        back = tmp_path / f"back-{target}.safetensors"
        extra = ["--hparam", "n_ctx=256"] if target == "ggml" else []
        res = cli("translate", tmp_path / out.rstrip("/"), back, *extra)
        assert res.rc == 0, (target, res.err)
        m = open_model(str(back))
        for name, t in base.tensors.items():
            assert np.array_equal(t.f32(), m.tensors[name].f32()), (target, name)
        m.close()
