"""Checkpoint layouts people have (Meta dirs with 1 and 2 shards, HF pytorch_model*.bin, llama2.c
train.py checkpoints) read with the right names, layout, hparams and tokenizer, and translated to
safetensors and back to .pth bit-exactly against torch's own view of the source."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file

from mconv.core.convert import open_model
from mconv.plugins import table
from testlib import GQA, MHA, cli, sentencepiece_model
from torch_oracle import (
    assert_model_equals,
    hf_bin_dir,
    meta_dir,
    meta_state,
    torch_bytes,
    train_checkpoint,
    write_json,
)


def _hp(model) -> dict:  # noqa: ANN001
    return {k: model.hparams[k] for k in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff",
                                          "norm_eps", "rope_theta")}


def _expected(hp: dict) -> dict:
    return {k: hp[k] for k in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "norm_eps",
                               "rope_theta")}


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_directory(tmp_path, shards):
    d = str(tmp_path / "meta")
    sd = meta_dir(d, GQA, shards=shards)
    with open_model(d) as m:
        assert m.format == "pth"
        assert_model_equals(m, sd)      # rope.freqs dropped; shards merged along the right axes
        assert _hp(m) == _expected(GQA)
        assert m.hparam_origin["n_vocab"] == "tensor shapes"     # params.json says -1
        assert m.hparam_origin["n_ff"] == "tensor shapes"
        assert m.hparam_origin["n_head"] == "params.json"
        assert m.tokenizer is not None and m.tokenizer.sp_model == sentencepiece_model()
        notes = [s.detail for s in m.history if s.kind == "note"]
        assert "ignored rope.freqs" in notes
        assert ("merged 2 model-parallel shards (Meta layout)" in notes) == (shards == 2)
    if shards == 2:
        # naming one shard file reads the whole set
        with open_model(os.path.join(d, "consolidated.01.pth")) as m:
            assert_model_equals(m, sd)


def test_meta_shards_that_do_not_fit_are_refused(tmp_path):
    d = str(tmp_path / "meta")
    meta_dir(d, GQA, shards=2)
    bad = torch.load(os.path.join(d, "consolidated.01.pth"))
    bad["layers.0.attention.wq.weight"] = bad["layers.0.attention.wq.weight"][:, :8].clone()
    torch.save(bad, os.path.join(d, "consolidated.01.pth"))
    r = cli("inspect", d)
    assert r.rc == 2
    assert r.err.strip() == (f"mconv: error: {d}: tensor 'layers.0.attention.wq.weight': shards do not fit "
                             "together along axis 0: [(16, 32), (16, 8)] ['bf16', 'bf16']")


@pytest.mark.parametrize("shards", [1, 2])
def test_hf_pytorch_model_bin(tmp_path, shards):
    d = str(tmp_path / "hf")
    meta, _ = hf_bin_dir(d, GQA, shards=shards)
    with open_model(d) as m:
        assert_model_equals(m, meta)    # q/k un-permuted back to Meta's layout (k with n_head_kv)
        assert _hp(m) == _expected(GQA)
        assert m.hparam_origin["n_head_kv"] == "config.json"
        assert [s.detail for s in m.history if s.kind == "names"] == ["hf naming convention"]


def test_hf_index_must_match_the_shards(tmp_path):
    d = str(tmp_path / "hf")
    hf_bin_dir(d, GQA, shards=2)
    index_path = os.path.join(d, "pytorch_model.bin.index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["weight_map"]["model.layers.1.mlp.up_proj.weight"] = "pytorch_model-00001-of-00002.bin"
    write_json(index_path, index)
    r = cli("inspect", d)
    assert r.rc == 2
    assert r.err.strip() == (f"mconv: error: {d}/pytorch_model-00002-of-00002.bin: tensor 'model.layers.1.mlp.up_proj.weight': "
                             "tensor is not listed for this shard in pytorch_model.bin.index.json")


def test_train_py_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    sd = train_checkpoint(path, MHA)
    with open_model(path) as m:
        assert_model_equals(m, sd)      # _orig_mod. stripped, optimizer never touched
        assert _hp(m) == _expected({**MHA, "rope_theta": 10000.0})
        assert m.hparams["n_ctx"] == MHA["n_ctx"]
        assert {m.hparam_origin[k] for k in ("n_embd", "n_ff", "n_ctx", "norm_eps")} == {"model_args"}
        notes = [s.detail for s in m.history if s.kind == "note"]
        assert "ckpt.pt: training checkpoint, weights from 'model'; skipped optimizer, iter_num, best_val_loss, " \
               "config" in notes
        assert "stripped the '_orig_mod.' prefix of torch.compile" in notes


# -- translate: torch's view of the source == what mconv writes, bit for bit --------------------------------

def _source(kind: str, tmp_path) -> tuple[str, "OrderedDict[str, torch.Tensor]", list[str]]:  # noqa: ANN001
    """(input path, its tensors in Meta layout and names, extra translate args)."""
    if kind == "meta":
        d = str(tmp_path / "meta")
        return d, meta_dir(d, GQA), []
    if kind == "meta2":
        d = str(tmp_path / "meta2")
        return d, meta_dir(d, GQA, shards=2), []
    if kind == "hf":
        d = str(tmp_path / "hf")
        return d, hf_bin_dir(d, GQA, shards=2)[0], []
    path = str(tmp_path / "ckpt.pt")
    return path, train_checkpoint(path, MHA), []


def _without_rope_freqs(sd: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v) for k, v in sd.items() if k != "rope.freqs")


@pytest.mark.parametrize("kind", ["meta", "meta2", "hf", "train"])
def test_translate_to_safetensors_and_pth(tmp_path, kind):
    src, sd, extra = _source(kind, tmp_path)
    sd = _without_rope_freqs(sd)
    names = table("llama")
    hp = GQA if kind != "train" else MHA

    out_st = str(tmp_path / "out.safetensors")
    r = cli("translate", src, out_st, *extra)
    assert r.rc == 0, r.err
    st = load_file(out_st)
    for meta_name, t in sd.items():
        canonical = names.to_canonical(meta_name, "meta")
        hf_name = names.from_canonical(canonical, "hf")
        ref = t
        if canonical.endswith(("attn_q.weight", "attn_k.weight")):
            heads = hp["n_head"] if canonical.endswith("attn_q.weight") else hp["n_head_kv"]
            ref = t.view(heads, -1, 2, t.shape[1]).transpose(1, 2).reshape(t.shape)   # HF layout
        assert torch_bytes(st[hf_name]) == torch_bytes(ref), meta_name

    out_dir = str(tmp_path / "out_meta") + "/"
    r = cli("translate", src, out_dir, "--to", "pth", *extra)
    assert r.rc == 0, r.err
    back = torch.load(os.path.join(out_dir, "consolidated.00.pth"), weights_only=True)
    assert list(back) == list(sd)
    for name, t in sd.items():
        assert back[name].dtype == t.dtype and torch_bytes(back[name]) == torch_bytes(t), name
    with open(os.path.join(out_dir, "params.json")) as f:
        params = json.load(f)
    assert (params["dim"], params["n_layers"], params["n_heads"], params["n_kv_heads"], params["vocab_size"]) == \
        (hp["n_embd"], hp["n_layer"], hp["n_head"], hp["n_head_kv"], hp["n_vocab"])
    assert os.path.isfile(os.path.join(out_dir, "tokenizer.model")) == (kind != "train")
    with open_model(out_dir) as m:
        assert_model_equals(m, sd)
        assert m.hparams["n_ff"] == hp["n_ff"]

    # and from the HF-layout safetensors back to a .pth state_dict: q/k return to Meta's layout
    out_pth = str(tmp_path / "back.pth")
    r = cli("translate", out_st, out_pth, "--allow-lossy")
    assert r.rc == 0, r.err
    back = torch.load(out_pth, weights_only=True)
    assert {k: torch_bytes(v) for k, v in back.items()} == {k: torch_bytes(v) for k, v in sd.items()}


def test_pytorch_bin_file_needs_no_from(tmp_path):
    d = str(tmp_path / "hf")
    hf_bin_dir(d, GQA)
    r = cli("inspect", os.path.join(d, "pytorch_model.bin"))
    assert r.rc == 0, r.err
    assert "format:    pth" in r.out


def test_state_dict_without_sidecars_needs_n_head(tmp_path):
    path = str(tmp_path / "bare.pth")
    torch.save(meta_state(GQA), path)
    r = cli("inspect", path)
    assert r.rc == 2
    assert r.err.strip() == (f"mconv: error: {path}: hparam n_head is not stored in the file or a sidecar and "
                             "cannot be inferred from tensor shapes; give it with --hparam n_head=N")
    r = cli("inspect", path, "--hparam", "n_head=8")
    assert r.rc == 0, r.err
    assert "n_head_kv    2 " in r.out


def test_concat_releases_exactly_the_rows_it_read():
    """Merged Meta shards stream: after each chunk, the shards' rows behind it are released."""
    import numpy as np

    from mconv.plugins import InMemory, Tensor, concat, get_dtype

    class Recording(InMemory):
        def __init__(self, raw: np.ndarray) -> None:
            super().__init__(raw)
            self.released: list[tuple[int, int]] = []

        def release_rows(self, start: int, stop: int) -> None:
            self.released.append((start, stop))

    f32 = get_dtype("f32")
    parts = [Tensor(f"p{i}", (2, 3, 4), f32, Recording(np.full((6, 16), i, np.uint8))) for i in range(2)]
    t = concat("t", parts, axis=1)                     # output rows: per outer index 3 of p0 then 3 of p1
    assert t.shape == (2, 6, 4)
    assert [c.shape[0] for c in t.iter_chunks(max_bytes=4 * 16)] == [4, 4, 4]
    # chunks [0,4) [4,8) [8,12) = p0[0:3] p1[0:1] | p1[1:3] p0[3:5] | p0[5:6] p1[3:6]
    assert parts[0].source.released == [(0, 3), (3, 5), (5, 6)]
    assert parts[1].source.released == [(0, 1), (1, 3), (3, 6)]
    assert t.raw()[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]
