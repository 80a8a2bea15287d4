"""Legacy GGML: a golden-byte ggjt v3 file assembled from the FORMATS.md G(b) spec, hand-built
ggml/ggmf/ggjt v1/v2 inputs, the legacy vocabulary conventions, n_mult, and the loss report."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
from hostile_gguf import ggml_file
from testlib import GQA, MHA, assert_same_tensors, cli, random_model, sp_tokenizer

from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry
from mconv.formats.ggml import find_n_mult, legacy_n_ff
from mconv.plugins import LossyConversionError, UnsupportedError, cast, get_dtype

ORDER = ["tok_embeddings.weight", "norm.weight", "output.weight"]
LAYER = ["attention.wq", "attention.wk", "attention.wv", "attention.wo", "attention_norm", "feed_forward.w1",
         "feed_forward.w2", "feed_forward.w3", "ffn_norm"]
META_TO_CANON = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                 "output.weight": "output.weight", "attention.wq": "attn_q", "attention.wk": "attn_k",
                 "attention.wv": "attn_v", "attention.wo": "attn_output", "attention_norm": "attn_norm",
                 "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
                 "ffn_norm": "ffn_norm"}


def ggml():
    return get_registry().format("ggml")


def _spec_ggjt_v3(model) -> bytes:
    """The ggjt v3 bytes FORMATS.md G(b) prescribes, assembled here independently of mconv."""
    hp = model.hparams
    tok = model.tokenizer
    # n_ff = ceil(floor(8*32/3) / n_mult) * n_mult = ceil(85 / n_mult) * n_mult = 88: every n_mult >= 85
    # gives n_mult itself, so the largest (and only such) n_mult is 88
    assert (hp["n_embd"], hp["n_ff"]) == (32, 88)
    out = b"tjgg" + struct.pack("<I", 3)
    out += struct.pack("<7I", 384, 32, 88, 8, 2, 32 // 8, 0)
    for piece, kind, score in zip(tok.tokens, tok.token_types.tolist(), tok.scores.tolist()):
        if kind == 2:
            text = " \u2047 ".encode()
        elif kind == 3:
            text = b""
        elif kind == 6:
            text = bytes([int(piece.decode()[3:5], 16)])
        else:
            text = piece.decode().replace("\u2581", " ").encode()
        out += struct.pack("<I", len(text)) + text + struct.pack("<f", score)
    names = ORDER + [f"layers.{b}.{n}.weight" if "." in n else f"layers.{b}.{n}.weight" for b in range(2)
                     for n in LAYER]
    for name in names:
        short = name if not name.startswith("layers.") else name.split(".", 2)[2].rsplit(".weight", 1)[0]
        canon = META_TO_CANON[short] if not name.startswith("layers.") else \
            f"blk.{name.split('.')[1]}.{META_TO_CANON[short]}.weight"
        t = model.tensors[canon]
        ne = list(reversed(t.shape))
        out += struct.pack("<III", len(ne), len(name), 0) + struct.pack(f"<{len(ne)}I", *ne) + name.encode()
        out += b"\0" * (-len(out) % 32)
        out += t.numpy().astype("<f4").tobytes()
    return out


def test_golden_ggjt_v3_bytes(tmp_path):
    src = random_model(GQA, seed=3, tokenizer=sp_tokenizer())
    out = tmp_path / "m.bin"
    res = cli("translate", "--from", "safetensors", _st(tmp_path, src), out, "--to", "ggml")
    assert res.rc == 0, res.err
    assert out.read_bytes() == _spec_ggjt_v3(src)


def _st(tmp_path, model, name="src.safetensors"):
    path = tmp_path / name
    write_model(model, str(path), get_registry().format("safetensors"), quiet=True)
    return path


def test_bin_needs_to(tmp_path):
    src = _st(tmp_path, random_model(GQA, seed=1, tokenizer=sp_tokenizer()))
    res = cli("translate", src, tmp_path / "m.bin")
    assert res.rc == 2 and "the suffix .bin does not name exactly one format" in res.err
    assert cli("translate", src, tmp_path / "m.bin", "--to", "ggjt").rc == 0


def test_translate_reports_load_time_parameters(tmp_path):
    src = _st(tmp_path, random_model(GQA, seed=1, tokenizer=sp_tokenizer()))
    res = cli("translate", src, tmp_path / "m.bin", "--to", "ggml")
    assert res.rc == 0, res.err
    lines = [line.strip() for line in res.out.splitlines()]
    assert "note: hparam n_head_kv: 2 is not stored in ggml; loaders need n_gqa = n_head / n_head_kv " \
           "(llama-cpp-python 0.1.78: Llama(n_gqa=...))" in lines
    assert "note: hparam norm_eps: 1e-05 is not stored in ggml; loaders need rms_norm_eps (llama-cpp-python " \
           "0.1.78: Llama(rms_norm_eps=...); its default is 5e-6)" in lines
    assert "note: loader llama-cpp-python 0.1.78: load with Llama(path, n_ctx=128, n_gqa=4, rms_norm_eps=1e-05, " \
           "rope_freq_base=10000.0)" in lines
    res = cli("inspect", tmp_path / "m.bin")
    assert ("note:      ggjt stores no n_head_kv, norm_eps, rope_theta or n_ctx; llama-cpp-python 0.1.78 needs "
            "Llama(path, n_ctx=2048, n_gqa=4, rms_norm_eps=1e-05, rope_freq_base=10000.0) (n_ctx, norm_eps, "
            "rope_theta are defaults here: check them against the model's own config)\n") in res.out
    assert "  n_head_kv    2              (tensor shapes)\n" in res.out
    assert "  n_ff         88             (tensor shapes)\n" in res.out
    assert "  norm_eps     1e-05          (default (ggml))\n" in res.out


def test_n_mult_search():
    # Llama-7B: n_mult 256 gives n_ff 11008 (FORMATS.md G(b)); the search takes the largest n_mult
    assert legacy_n_ff(4096, 256, 32, 32, 32) == 11008
    hp = dict(n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32, n_layer=32)
    m = find_n_mult(hp)
    assert legacy_n_ff(4096, m, 32, 32, 32) == 11008 and m == 5504
    # Llama-2-70B: f_ffn_mult 1.3 for n_gqa 8 and 80 layers: (u32)(1.3f*21845) = 28398 -> 28672 with n_mult 4096
    assert legacy_n_ff(8192, 4096, 64, 8, 80) == 28672
    assert legacy_n_ff(8192, 4096, 64, 64, 80) == 24576
    with pytest.raises(UnsupportedError) as e:
        find_n_mult(dict(n_embd=32, n_ff=64, n_head=8, n_head_kv=2, n_layer=2))
    assert str(e.value) == ("n_ff 64 cannot be stored in ggjt: ggjt-era llama.cpp derives n_ff as "
                            "ceil(85 / n_mult) * n_mult from n_embd 32, and no n_mult from 2 to 8192 gives 64")


def test_impossible_n_ff_refused(tmp_path):
    src = _st(tmp_path, random_model(GQA | {"n_ff": 64}, seed=1, tokenizer=sp_tokenizer()))
    res = cli("translate", src, tmp_path / "m.bin", "--to", "ggml")
    assert res.err == ("mconv: error: n_ff 64 cannot be stored in ggjt: ggjt-era llama.cpp derives n_ff as "
                       "ceil(85 / n_mult) * n_mult from n_embd 32, and no n_mult from 2 to 8192 gives 64\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.safetensors"]


def test_bf16_widens_to_f32_and_tied_output_is_duplicated(tmp_path):
    src = random_model(GQA, dtype="bf16", seed=2, tied=True, tokenizer=sp_tokenizer())
    res = cli("translate", _st(tmp_path, src), tmp_path / "m.bin", "--to", "ggml")
    assert res.rc == 0, res.err
    assert "  dtype: 20 tensor(s) bf16 -> f32 (widened losslessly)\n" in res.out
    assert ("  note: tensor output.weight: ggjt has no tied embeddings; token_embd.weight is stored a second time "
            "as output.weight\n") in res.out
    m = open_model(str(tmp_path / "m.bin"))
    for name, t in src.tensors.items():
        assert m.tensors[name].dtype.name == "f32"
        assert np.array_equal(m.tensors[name].numpy(), t.numpy())
    assert np.array_equal(m.tensors["output.weight"].numpy(), src.tensors["token_embd.weight"].numpy())


def test_gguf_ggml_gguf_round_trip(tmp_path):
    src = random_model(MHA | {"n_vocab": 384}, dtype="f16", seed=6, tokenizer=sp_tokenizer())
    # norms already f32, as GGUF keeps them: nothing is widened (which GGUF would record in metadata)
    src.tensors = {n: cast(t, get_dtype("f32")) if len(t.shape) == 1 else t for n, t in src.tensors.items()}
    gg = tmp_path / "a.gguf"
    write_model(src, str(gg), get_registry().format("gguf"), quiet=True)
    assert cli("translate", gg, tmp_path / "b.bin", "--to", "ggml").rc == 0
    res = cli("translate", tmp_path / "b.bin", tmp_path / "c" / "a.gguf", "--hparam", "norm_eps=1e-6",
              "--hparam", "rope_theta=500000", "--hparam", "n_ctx=96")
    assert res.rc == 0, res.err
    b = open_model(str(tmp_path / "b.bin"))
    assert {(len(t.shape), t.dtype.name) for t in b.tensors.values()} == {(1, "f32"), (2, "f16")}
    a, c = open_model(str(gg)), open_model(str(tmp_path / "c" / "a.gguf"))
    assert_same_tensors(a, c, list(a.tensors))
    assert a.hparams == c.hparams
    assert c.tokenizer.same_as(src.tokenizer)
    assert (tmp_path / "c" / "a.gguf").read_bytes() == gg.read_bytes()


def test_untranslatable_vocabulary_is_a_loss(tmp_path):
    tok = sp_tokenizer()
    types = tok.token_types.copy()
    types[300] = 3      # a control token that is not <s>/</s> becomes "" in ggjt and cannot come back
    src = random_model(GQA, seed=1, tokenizer=replace(tok, token_types=types))
    with pytest.raises(LossyConversionError) as e:
        write_model(src, str(tmp_path / "m.bin"), ggml(), quiet=True)
    assert str(e.value) == ("converting to ggml would lose information: tokenizer (1 tokens): the legacy "
                            f"vocabulary conventions cannot represent them, e.g. token 300 {tok.tokens[300]!r}; "
                            "pass --allow-lossy to accept")
    src = random_model(GQA, seed=1)
    with pytest.raises(LossyConversionError) as e:
        write_model(src, str(tmp_path / "m.bin"), ggml(), quiet=True)
    assert "tokenizer (none): ggjt needs a vocabulary; 384 empty tokens will be written" in str(e.value)


# -- reading the older variants ---------------------------------------------------------------------------

VOCAB = [b" \xe2\x81\x87 ", b"", b""] + [bytes([i]) for i in range(256)] + [b" the", b"ing", b" "]
IR_VOCAB = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)] + \
    ["\u2581the".encode(), b"ing", "\u2581".encode()]
IR_TYPES = [2, 3, 3] + [6] * 256 + [1, 1, 1]


def _legacy_tensors(model, f16):
    out = []
    for b in range(-1, model.hparams["n_layer"]):
        names = ORDER if b < 0 else [f"layers.{b}.{n}.weight" for n in LAYER]
        for name in names:
            short = name if b < 0 else name.split(".", 2)[2].rsplit(".weight", 1)[0]
            canon = META_TO_CANON[short] if b < 0 else f"blk.{b}.{META_TO_CANON[short]}.weight"
            t = model.tensors[canon]
            values = t.numpy()
            type_id = 1 if (f16 and values.ndim == 2) else 0
            data = values.astype("<f2" if type_id else "<f4").tobytes()
            out.append((name, list(reversed(t.shape)), type_id, data))
    return out


@pytest.mark.parametrize("variant,version", [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)])
def test_reads_legacy_variants(tmp_path, variant, version):
    hp = GQA | {"n_vocab": len(VOCAB)}
    src = random_model(hp, seed=9)
    scores = [-float(i) for i in range(len(VOCAB))]
    blob = ggml_file(variant, version, [len(VOCAB), 32, 88, 8, 2, 4, 1], VOCAB, scores, _legacy_tensors(src, True))
    path = tmp_path / "m.bin"
    path.write_bytes(blob)
    m = open_model(str(path))
    assert {k: m.hparams[k] for k in GQA} == hp | {"n_ctx": 2048}
    assert m.hparam_origin["n_head_kv"] == "tensor shapes" and m.hparam_origin["n_ctx"] == "default (ggml)"
    tok = m.tokenizer
    assert list(tok.tokens) == IR_VOCAB and tok.token_types.tolist() == IR_TYPES
    assert tok.scores.tolist() == (scores if variant != "ggml" else [0.0] * len(VOCAB))
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    for name, t in src.tensors.items():
        want = t.numpy().astype(np.float16).astype(np.float32) if t.shape[0] > 1 and len(t.shape) == 2 else t.numpy()
        assert np.array_equal(m.tensors[name].numpy().astype(np.float32), want), name
    notes = ggml().notes(m)
    label = {"ggml": "unversioned 'ggml' file: llama-cpp-python 0.1.70 and later misread it",
             "ggmf": "ggmf v1 file", "ggjt": f"ggjt v{version} file"}[variant]
    assert any(n.startswith(label) for n in notes) == (version != 3)


def test_inconsistent_n_mult_is_noted(tmp_path):
    src = random_model(GQA | {"n_vocab": len(VOCAB)}, seed=9)
    blob = ggml_file("ggjt", 3, [len(VOCAB), 32, 256, 8, 2, 4, 0], VOCAB, [0.0] * len(VOCAB),
                     _legacy_tensors(src, False))
    (tmp_path / "m.bin").write_bytes(blob)
    res = cli("inspect", tmp_path / "m.bin")
    assert ("note:      n_mult 256 makes ggjt-era llama.cpp expect n_ff 256, but the tensors have n_ff 88\n"
            in res.out)


def test_k_quants_in_ggjt(tmp_path):
    hp = dict(n_vocab=384, n_embd=256, n_layer=1, n_head=8, n_head_kv=2, n_ff=768, n_ctx=64, norm_eps=1e-5,
              rope_theta=10000.0)
    src = _st(tmp_path, random_model(hp, seed=2, tokenizer=sp_tokenizer()))
    assert cli("translate", src, tmp_path / "a.gguf", "--dtype", "q4_k_m").rc == 0
    assert cli("translate", src, tmp_path / "b.bin", "--to", "ggml", "--dtype", "q4_k_m").rc == 0
    a, b = open_model(str(tmp_path / "a.gguf")), open_model(str(tmp_path / "b.bin"))
    assert_same_tensors(a, b, list(a.tensors))
    assert {t.dtype.name for t in b.tensors.values()} == {"q4_k", "q6_k", "f32"}
    blob = (tmp_path / "b.bin").read_bytes()
    # n_mult: ceil(682 / m) * m == 768 holds for m = 768 (and for 384, 256...): the largest is 768
    assert struct.unpack_from("<7I", blob, 8) == (384, 256, 768, 8, 1, 32, 15)   # ftype 15 = MOSTLY_Q4_K_M
