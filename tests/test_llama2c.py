"""llama2.c .bin v0/v1/v2 and tokenizer.bin: byte-identity with export.py / tokenizer.py (expected
bytes derived from the spec in llama2c_ref.py), round trips, group sizes, classifier sharing, loss
semantics and the CLI layouts."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import llama2c_ref as ref
from testlib import GQA, MHA, assert_same_tensors, cli, random_model, random_weights, sentencepiece_model, sp_tokenizer

from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry
from mconv.plugins import LossyConversionError, Model, UsageError, UnsupportedError, get_dtype, tensor_from_array

#: export.py's group size (64) divides both dim and hidden_dim
HP_B = dict(n_vocab=384, n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=192, n_ctx=64, norm_eps=1e-5,
            rope_theta=10000.0)
#: stories260K's shape: dim 64, hidden_dim 172 -> the exporter's 64 breaks runq.c; 4 divides both
HP_260K = dict(n_vocab=384, n_embd=64, n_layer=1, n_head=8, n_head_kv=4, n_ff=172, n_ctx=32, norm_eps=1e-5,
               rope_theta=10000.0)
HP_GQA = dict(GQA, n_vocab=384)


def fmt():
    return get_registry().format("llama2c")


def model_of(weights: dict[str, np.ndarray], hp: dict, tokenizer=None) -> Model:
    tensors = {n: tensor_from_array(n, a, get_dtype("f32")) for n, a in weights.items()}
    return Model("llama", dict(hp), tensors, tokenizer=tokenizer, format="memory")


def write(model: Model, out: str, dtype=None, **options):
    return write_model(model, str(out), fmt(), dtype=dtype, options={k: str(v) for k, v in options.items()},
                       quiet=True)


def read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def weights(hp: dict, seed: int = 0, tied: bool = False, equal_classifier: bool = False) -> dict[str, np.ndarray]:
    w = random_weights(hp, seed, tied)
    if equal_classifier:
        w["output.weight"] = w["token_embd.weight"].copy()
    return w


# -- byte identity with export.py -----------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_v0_bytes_match_export_outside_the_rope_tables(tmp_path, tied):
    w = weights(HP_GQA, seed=1, tied=tied)
    write(model_of(w, HP_GQA), tmp_path / "m.bin")
    got, want = read_bytes(tmp_path / "m.bin"), ref.export_v0(w, HP_GQA)
    assert len(got) == len(want)
    lo, hi = ref.v0_rope_region(w, HP_GQA)
    assert got[:lo] == want[:lo] and got[hi:] == want[hi:]
    # the tables run.c skips: cos/sin of the float32 angle, within an ulp or so of torch's
    np.testing.assert_allclose(np.frombuffer(got[lo:hi], "<f4"), np.frombuffer(want[lo:hi], "<f4"), rtol=0, atol=2e-7)
    assert (got[20:24] == (384).to_bytes(4, "little", signed=True)) == tied


@pytest.mark.parametrize("tied", [False, True])
def test_v1_bytes_match_export(tmp_path, tied):
    w = weights(HP_GQA, seed=2, tied=tied)
    write(model_of(w, HP_GQA), tmp_path / "m.bin", version=1)
    assert read_bytes(tmp_path / "m.bin") == ref.export_v1(w, HP_GQA)


@pytest.mark.parametrize("tied", [False, True])
def test_v2_bytes_match_export(tmp_path, tied):
    w = weights(HP_B, seed=3, tied=tied)
    w["blk.0.attn_q.weight"][0, :64] = 0.0          # an all-zero group: scale 0, q 0
    w["blk.1.ffn_up.weight"][3, :] = 0.5            # w/scale hits exact .5 ties: half to even
    write(model_of(w, HP_B), tmp_path / "m.bin", dtype="l2c_q8")
    got = read_bytes(tmp_path / "m.bin")
    assert got == ref.export_v2(w, HP_B)
    assert got[37:41] == (64).to_bytes(4, "little")
    back = open_model(str(tmp_path / "m.bin"))
    assert back.tensors["blk.0.attn_q.weight"].dtype == get_dtype("l2c_q8")
    assert np.all(back.tensors["blk.0.attn_q.weight"].numpy()[0, :64] == 0)


def test_equal_classifier_is_stored_shared_as_export_does(tmp_path):
    w = weights(HP_GQA, seed=4, equal_classifier=True)
    result = write(model_of(w, HP_GQA), tmp_path / "m.bin", version=1)
    assert read_bytes(tmp_path / "m.bin") == ref.export_v1(w, HP_GQA)
    assert read_bytes(tmp_path / "m.bin")[36] == 1
    assert any("output.weight: equals token_embd.weight by value" in line for line in result.plan.report())
    back = open_model(str(tmp_path / "m.bin"))
    assert "output.weight" not in back.tensors          # shared reads back tied


def test_untied_classifier_is_always_kept(tmp_path):
    w = weights(HP_GQA, seed=5)
    for version in (0, 1, 2):
        out = tmp_path / f"v{version}.bin"
        write(model_of(w, HP_GQA), out, dtype="l2c_q8" if version == 2 else None, version=version)
        back = open_model(str(out))
        assert "output.weight" in back.tensors
        if version < 2:
            np.testing.assert_array_equal(back.tensors["output.weight"].numpy(), w["output.weight"])
            np.testing.assert_array_equal(back.tensors["token_embd.weight"].numpy(), w["token_embd.weight"])


# -- tokenizer.bin --------------------------------------------------------------------------------------

def test_tokenizer_bin_matches_tokenizer_py_and_reads_back(tmp_path):
    sp = sentencepiece_model(384)
    want = ref.tokenizer_bin(sp)
    assert b"\x00\x00\x00\x80" in want          # the first merge's score is -0.0
    tok = sp_tokenizer(384)
    write(random_model(HP_GQA, tokenizer=tok), tmp_path / "out" / "model.bin")
    assert read_bytes(tmp_path / "out" / "tokenizer.bin") == want
    back = open_model(str(tmp_path / "out" / "model.bin")).tokenizer
    assert back is not None and back.same_as(tok)
    assert back.scores.view(np.uint32)[259] == 0x80000000
    assert back.tokens[1] == b"<s>" and back.tokens[2] == b"</s>" and back.tokens[3] == b"<0x00>"


def test_tokenizer_bin_from_a_vocabulary_without_tokenizer_model(tmp_path):
    """A GGUF/GGML vocabulary in the IR (no tokenizer.model bytes) gives the same tokenizer.bin."""
    import dataclasses

    tok = dataclasses.replace(sp_tokenizer(384), sp_model=None, add_bos=True, add_eos=False)
    result = write(random_model(HP_GQA, tokenizer=tok), tmp_path / "stories.bin")
    assert result.plan.report() == []
    assert read_bytes(tmp_path / "tokenizer.bin") == ref.tokenizer_bin(sentencepiece_model(384))
    back = open_model(str(tmp_path))               # any *.bin + tokenizer.bin
    assert back.format == "llama2c" and back.files[0].endswith("stories.bin") and back.tokenizer.same_as(tok)
    # what tokenizer.bin cannot hold is a refused loss
    odd = dataclasses.replace(tok, bos_id=5, pad_id=3)
    with pytest.raises(LossyConversionError, match=r"tokenizer \(384 tokens\): special ids bos=5, pad=3 are not "
                       r"stored; llama2.c assumes unk=0 bos=1 eos=2 and no pad"):
        write(random_model(HP_GQA, tokenizer=odd), tmp_path / "x" / "m.bin")
    short = dataclasses.replace(tok, tokens=tok.tokens[:100], scores=tok.scores[:100], token_types=tok.token_types[:100])
    with pytest.raises(UnsupportedError, match="the tokenizer has 100 tokens but the model's vocab_size is 384"):
        write(random_model(HP_GQA, tokenizer=short), tmp_path / "y" / "m.bin")
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y" / "m.bin")


def test_tokenizer_option_path_and_directory_layout(tmp_path):
    m = random_model(HP_GQA, tokenizer=sp_tokenizer(384))
    write(m, tmp_path / "a" / "b" / "x.bin", tokenizer=tmp_path / "t" / "vocab.bin")
    assert os.path.isfile(tmp_path / "a" / "b" / "x.bin") and not os.path.exists(tmp_path / "a" / "b" / "tokenizer.bin")
    assert read_bytes(tmp_path / "t" / "vocab.bin") == ref.tokenizer_bin(sentencepiece_model(384))
    r = cli("translate", tmp_path / "a" / "b" / "x.bin", f"{tmp_path / 'dir'}/", "--to", "llama2c")
    assert r.rc == 0, r.err
    assert sorted(os.listdir(tmp_path / "dir")) == ["model.bin"]      # x.bin has no tokenizer.bin beside it
    assert read_bytes(tmp_path / "dir" / "model.bin") == read_bytes(tmp_path / "a" / "b" / "x.bin")
    # a directory of model.bin + tokenizer.bin is sniffed and read with both
    back = open_model(str(tmp_path / "dir"))
    assert back.format == "llama2c" and back.tokenizer is None      # dir/tokenizer.bin was never written
    r = cli("inspect", tmp_path / "dir")
    assert r.rc == 0 and "format:    llama2c" in r.out


def test_directory_with_tokenizer_and_existing_sidecar(tmp_path):
    m = random_model(HP_GQA, tokenizer=sp_tokenizer(384))
    write(m, f"{tmp_path / 'd'}/")
    assert sorted(os.listdir(tmp_path / "d")) == ["model.bin", "tokenizer.bin"]
    back = open_model(str(tmp_path / "d"))
    assert back.tokenizer is not None and back.tokenizer.same_as(m.tokenizer)
    # writing beside an existing tokenizer.bin needs --force, and nothing is left behind
    src = tmp_path / "d" / "model.bin"
    r = cli("translate", src, tmp_path / "d2" / "m.bin", "--to", "llama2c")
    assert r.rc == 0, r.err
    r = cli("translate", src, tmp_path / "d2" / "other.bin", "--to", "llama2c")
    assert r.rc == 2 and r.err == (f"mconv: error: {tmp_path / 'd2' / 'other.bin'}: {tmp_path / 'd2' / 'tokenizer.bin'} "
                                   "exists; use --force to replace it\n")
    assert sorted(os.listdir(tmp_path / "d2")) == ["m.bin", "tokenizer.bin"]
    assert cli("translate", src, tmp_path / "d2" / "other.bin", "--to", "llama2c", "--force").rc == 0


# -- round trips ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_v0_safetensors_v0_is_byte_identical(tmp_path, tied):
    w = weights(HP_GQA, seed=6, tied=tied)
    write(model_of(w, HP_GQA, sp_tokenizer(384)), tmp_path / "a" / "model.bin")
    assert cli("translate", tmp_path / "a" / "model.bin", tmp_path / "m.safetensors").rc == 0
    r = cli("translate", tmp_path / "m.safetensors", tmp_path / "b" / "model.bin", "--to", "llama2c")
    assert r.rc == 0, r.err
    for name in ("model.bin", "tokenizer.bin"):
        assert read_bytes(tmp_path / "a" / name) == read_bytes(tmp_path / "b" / name), name
    assert ("output.weight" in open_model(str(tmp_path / "m.safetensors")).tensors) != tied


@pytest.mark.parametrize("hp,dtype,version", [(HP_GQA, None, 1), (HP_B, "l2c_q8", 2), (HP_260K, "l2c_q8", 2)])
def test_read_write_round_trip_is_byte_identical(tmp_path, hp, dtype, version):
    write(random_model(hp, seed=7), tmp_path / "a.bin", dtype=dtype, version=version)
    a = open_model(str(tmp_path / "a.bin"))
    # v2 is implied by the l2c_q8 tensors (their group size is kept); v1 must be asked for again
    result = write(a, tmp_path / "b.bin", **({"version": 1} if version == 1 else {}))
    assert result.plan.lossless and not result.plan.casts
    assert read_bytes(tmp_path / "a.bin") == read_bytes(tmp_path / "b.bin")
    assert_same_tensors(a, open_model(str(tmp_path / "b.bin")))


def test_v2_to_v0_widens_losslessly(tmp_path):
    write(random_model(HP_B, seed=8), tmp_path / "q.bin", dtype="l2c_q8")
    q = open_model(str(tmp_path / "q.bin"))
    result = write(q, tmp_path / "f.bin", version=0)
    assert result.plan.lossless and "dtype: 16 tensor(s) l2c_q8 -> f32 (widened losslessly)" in result.plan.report()
    f = open_model(str(tmp_path / "f.bin"))
    for name, t in q.tensors.items():
        np.testing.assert_array_equal(f.tensors[name].numpy(), t.numpy())


# -- group sizes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hp,gs,noted", [
    (HP_B, 64, False),
    (dict(HP_B, n_embd=96, n_head=4, n_head_kv=2, n_ff=256), 32, False),   # exporter backs off to 32
    (HP_GQA, 8, True),                                                    # exporter's 32 does not divide 88
    (HP_260K, 4, True),                                                   # exporter's 64 does not divide 172
])
def test_group_size_choice(tmp_path, hp, gs, noted):
    w = weights(hp, seed=9)
    result = write(model_of(w, hp), tmp_path / "m.bin", dtype="l2c_q8")
    assert read_bytes(tmp_path / "m.bin") == ref.export_v2(w, hp, group_size=gs)
    notes = [line for line in result.plan.report() if "group_size" in line]
    if noted:
        exporter = ref.exporter_group_size(hp["n_embd"])
        assert notes == [f"note: llama2c group_size: group size {gs}: llama2.c's exporter would use {exporter}, "
                         f"which does not divide hidden_dim {hp['n_ff']} (runq.c would compute wrong logits); {gs} "
                         f"is the largest size <= 64 dividing dim {hp['n_embd']} and hidden_dim {hp['n_ff']}"]
        assert any(s.kind == "note" and s.detail == notes[0].split("group_size: ", 1)[1] for s in result.plan.model.history)
    else:
        assert notes == []


def test_group_size_option(tmp_path):
    w = weights(HP_B, seed=10)
    write(model_of(w, HP_B), tmp_path / "a.bin", group_size=16)          # implies v2
    assert read_bytes(tmp_path / "a.bin") == ref.export_v2(w, HP_B, group_size=16)
    write(model_of(w, HP_B), tmp_path / "b.bin", dtype="l2c_q8@16")
    assert read_bytes(tmp_path / "b.bin") == read_bytes(tmp_path / "a.bin")
    with pytest.raises(UsageError, match=r"^-O group_size=48 does not divide both dim 64 and hidden_dim 192$"):
        write(model_of(w, HP_B), tmp_path / "c.bin", group_size=48)
    r = cli("translate", tmp_path / "a.bin", tmp_path / "d.bin", "--to", "llama2c", "-O", "group_size=0")
    assert r.rc == 2 and r.err == "mconv: error: -O group_size=0: expected a positive integer\n"
    assert not os.path.exists(tmp_path / "c.bin") and not os.path.exists(tmp_path / "d.bin")


def test_requantizing_to_another_group_size_is_reported(tmp_path):
    write(random_model(HP_B, seed=11), tmp_path / "a.bin", dtype="l2c_q8")
    a = open_model(str(tmp_path / "a.bin"))
    result = write(a, tmp_path / "b.bin", group_size=32)
    assert "dtype: 16 tensor(s) l2c_q8 -> l2c_q8@32 (re-quantized: dequantized from l2c_q8, quantized to " \
           "l2c_q8@32; values change)" in result.plan.report()
    assert not result.plan.lossless
    assert open_model(str(tmp_path / "b.bin")).tensors["token_embd.weight"].dtype.label == "l2c_q8@32"
    assert re.search(r"\n  token_embd.weight +l2c_q8@32 +384x64 ", cli("inspect", tmp_path / "b.bin").out)


def test_q8_0_to_l2c_q8_is_a_reported_loss(tmp_path):
    from mconv.plugins import all_dtypes

    if "q8_0" not in all_dtypes():
        pytest.skip("ggml q8_0 is not registered in this tree yet")
    m = random_model(HP_B, seed=12)
    m.tensors = {n: (t if len(t.shape) == 1 else tensor_from_array(n, t.numpy(), get_dtype("q8_0")))
                 for n, t in m.tensors.items()}
    result = write(m, tmp_path / "a.bin", dtype="l2c_q8")
    assert any("q8_0 -> l2c_q8 (re-quantized" in line for line in result.plan.report())
    result = write(m, tmp_path / "b.bin")                   # no --dtype: q8_0 widens to f32 (v0)
    assert result.plan.lossless


def test_reading_an_exporter_v2_whose_groups_straddle_rows(tmp_path):
    """export.py with stories260K's shape writes group size 64 although 64 does not divide 172."""
    w = weights(HP_260K, seed=13)
    (tmp_path / "m.bin").write_bytes(ref.export_v2(w, HP_260K))
    m = open_model(str(tmp_path / "m.bin"))
    down = m.tensors["blk.0.ffn_down.weight"]
    assert down.dtype == get_dtype("f32") and m.tensors["blk.0.ffn_up.weight"].dtype == get_dtype("l2c_q8")
    q, s = ref.quantize_q80(w["blk.0.ffn_down.weight"], 64)
    deq = (np.frombuffer(q, np.int8).reshape(-1, 64) * np.frombuffer(s, "<f4")[:, None]).reshape(64, 172)
    np.testing.assert_array_equal(down.numpy(), deq)
    np.testing.assert_array_equal(down.f32(5, 9), deq[5:9])
    assert any("groups of 1 ffn_down matrices straddle rows" in s.detail for s in m.history)
    with pytest.raises(UnsupportedError, match="pass --dtype l2c_q8 to quantize"):
        write(m, tmp_path / "again.bin")
    write(m, tmp_path / "fixed.bin", dtype="l2c_q8")
    assert read_bytes(tmp_path / "fixed.bin")[37:41] == (4).to_bytes(4, "little")


# -- hparams and loss semantics -------------------------------------------------------------------------

def test_norm_eps_and_rope_theta_are_refused_losses(tmp_path):
    m = random_model(dict(MHA))
    with pytest.raises(LossyConversionError) as e:
        write(m, tmp_path / "m.bin")
    assert str(e.value) == ("converting to llama2c would lose information: "
                            "hparam norm_eps: 1e-06 cannot be stored; every llama2c loader assumes 1e-05; "
                            "hparam rope_theta: 500000.0 cannot be stored; every llama2c loader assumes 10000.0; "
                            "pass --allow-lossy to accept")
    assert not os.path.exists(tmp_path / "m.bin")
    write_model(m, str(tmp_path / "m.bin"), fmt(), allow_lossy=True, quiet=True)
    back = open_model(str(tmp_path / "m.bin"))
    assert back.hparams["norm_eps"] == 1e-5 and back.hparams["rope_theta"] == 10000.0
    assert back.hparam_origin["norm_eps"] == "default (llama2c)"
    assert back.hparams["n_ctx"] == MHA["n_ctx"] and back.hparam_origin["n_ctx"] == "llama2c v0 header"
    # an eps that went through a float32 field (GGUF) is the same value
    m32 = random_model(dict(HP_GQA, norm_eps=float(np.float32(1e-5))))
    assert write(m32, tmp_path / "ok.bin").plan.lossless


def test_missing_n_ctx_defaults_to_2048(tmp_path):
    hp = dict(HP_GQA)
    del hp["n_ctx"]
    write(random_model(hp), tmp_path / "m.bin", version=1)
    assert read_bytes(tmp_path / "m.bin")[32:36] == (2048).to_bytes(4, "little")


def test_bf16_widens_to_f32_losslessly(tmp_path):
    m = random_model(HP_GQA, dtype="bf16", seed=14)
    result = write(m, tmp_path / "m.bin")
    assert result.plan.lossless
    back = open_model(str(tmp_path / "m.bin"))
    for name, t in m.tensors.items():
        np.testing.assert_array_equal(back.tensors[name].numpy(), t.numpy())


def test_version_and_dtype_conflicts(tmp_path):
    m = random_model(HP_B)
    with pytest.raises(UnsupportedError, match=r"^llama2.c v1 stores float32 only; l2c_q8 needs version 2"):
        write(m, tmp_path / "a.bin", dtype="l2c_q8", version=1)
    with pytest.raises(UnsupportedError, match="format llama2c cannot store f16"):
        write(m, tmp_path / "a.bin", dtype="f16")
    with pytest.raises(UnsupportedError, match="llama2.c v2 stores l2c_q8 int8 groups"):
        write(m, tmp_path / "a.bin", dtype="f32", version=2)
    write(m, tmp_path / "in.bin")
    r = cli("translate", tmp_path / "in.bin", tmp_path / "a.bin", "--to", "llama2c", "-O", "version=3")
    assert r.rc == 2 and r.err == "mconv: error: -O version=3: expected one of 0, 1, 2\n"
    assert os.listdir(tmp_path) == ["in.bin"]


def test_bin_output_needs_to_and_extra_tensors_are_losses(tmp_path):
    write(random_model(HP_GQA), tmp_path / "m.bin")
    r = cli("translate", tmp_path / "m.bin", tmp_path / "out.bin")
    assert r.rc == 2 and "use --to" in r.err
    m = random_model(HP_GQA)
    m.tensors["rope_freqs.weight"] = tensor_from_array("rope_freqs.weight", np.ones(2, np.float32), get_dtype("f32"))
    with pytest.raises(LossyConversionError, match="tensor rope_freqs.weight: llama2c has no place for it; dropped"):
        write(m, tmp_path / "x.bin")


def test_sniffing(tmp_path):
    write(random_model(HP_GQA, tokenizer=sp_tokenizer(384)), tmp_path / "m.bin")
    write(random_model(HP_GQA), tmp_path / "v1.bin", version=1)
    reg = get_registry()
    assert reg.sniff(str(tmp_path / "m.bin")).name == "llama2c"
    assert reg.sniff(str(tmp_path / "v1.bin")).name == "llama2c"
    assert fmt().sniff(str(tmp_path), b"", 0, True) == 0.0          # two model files, neither model.bin
    (tmp_path / "v1.bin").rename(tmp_path / "model.bin")
    assert reg.sniff(str(tmp_path)).name == "llama2c"
    with pytest.raises(Exception, match="several llama2.c model files: m.bin, v1.bin; pass one file"):
        (tmp_path / "model.bin").rename(tmp_path / "v1.bin")
        open_model(str(tmp_path), "llama2c")
    r = cli("inspect", tmp_path / "tokenizer.bin")
    assert r.rc == 2 and "no format recognises this file" in r.err
