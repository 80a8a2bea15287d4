"""Writing .pth without torch: torch.load(weights_only=True) loads exactly the tensors; the bytes are
torch.save's own (but for the serialization id's name hash) and deterministic; zip64 fields load; the
three layouts store what they say and the planner reports what they cannot."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry
from mconv.formats import _torch_save
from mconv.formats._torch_zip import ZipWriter
from mconv.formats.pth import params_json
from mconv.plugins import LossyConversionError, UsageError, get_dtype, tensor_from_raw
from testlib import GQA, MHA, assert_same_tensors, cli, random_model, sp_tokenizer
from test_pth_read import DTYPES, _values
from torch_oracle import assert_same, torch_bytes

MCONV_DTYPE = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
               torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
               torch.bool: "bool", torch.uint16: "u16", torch.uint32: "u32", torch.uint64: "u64",
               torch.float8_e4m3fn: "f8_e4m3", torch.float8_e5m2: "f8_e5m2"}


def ir_of(name: str, t: torch.Tensor):  # noqa: ANN201
    return tensor_from_raw(name, tuple(t.shape), get_dtype(MCONV_DTYPE[t.dtype]), torch_bytes(t))


def sample() -> "OrderedDict[str, torch.Tensor]":
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, dt in enumerate(DTYPES):
        n = str(dt).split(".")[1]
        sd[f"{n}.matrix"] = _values(dt, (3, 5), i)
        sd[f"{n}.scalar"] = _values(dt, (), i)
        sd[f"{n}.empty"] = _values(dt, (2, 0, 3), i)
    sd["cube"] = torch.randn(2, 3, 4)
    for i in range(1100):   # more than one SETITEMS batch, memo indexes above 255
        sd[f"many.{i}"] = torch.full((1,), float(i))
    return sd


def _save_mconv(path: str, sd: "OrderedDict[str, torch.Tensor]") -> None:
    with open(path, "wb") as f:
        _torch_save.save(f, _torch_save.archive_name(path), OrderedDict((k, ir_of(k, v)) for k, v in sd.items()))


def _mask_serialization_id(path: str) -> bytes:
    """The file with the serialization id's name-hash half and the two CRC fields covering it zeroed."""
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".data/serialization_id"))
        cd = z.start_dir
    off = info.header_offset
    start = off + 30 + sum(int.from_bytes(data[off + o:off + o + 2], "little") for o in (26, 28))
    data[start:start + 20] = b"0" * 20
    data[start + 44:start + 48] = bytes(4)              # data descriptor: PK78, crc
    pos = cd
    while data[pos:pos + 4] == b"PK\x01\x02":
        n, m, k = (int.from_bytes(data[pos + o:pos + o + 2], "little") for o in (28, 30, 32))
        if data[pos + 46:pos + 46 + n] == info.filename.encode():
            data[pos + 16:pos + 20] = bytes(4)          # central directory: crc
        pos += 46 + n + m + k
    return bytes(data)


def test_torch_loads_every_dtype_bit_exactly(tmp_path):
    sd = sample()
    path = str(tmp_path / "all.pth")
    _save_mconv(path, sd)
    for mmap in (False, True):   # mmap=True needs torch's 64-byte storage alignment
        back = torch.load(path, weights_only=True, mmap=mmap)
        assert type(back) is OrderedDict and list(back) == list(sd)
        for k, v in sd.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].stride() == v.stride(), k
            assert torch_bytes(back[k]) == torch_bytes(v), k


def test_bytes_are_torch_saves_own(tmp_path):
    sd = sample()
    ours, theirs = str(tmp_path / "a" / "m.pth"), str(tmp_path / "b" / "m.pth")
    os.makedirs(os.path.dirname(ours))
    os.makedirs(os.path.dirname(theirs))
    _save_mconv(ours, sd)
    torch.save(sd, theirs)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if not name.endswith("serialization_id"):
                assert a.read(name) == b.read(name), name
        # the id's second half is torch's combined CRC of the records, reproduced exactly
        assert a.read("m/.data/serialization_id")[20:] == b.read("m/.data/serialization_id")[20:]
    assert _mask_serialization_id(ours) == _mask_serialization_id(theirs)


def test_writes_are_deterministic(tmp_path):
    sd = sample()
    a, b = str(tmp_path / "x" / "w.pth"), str(tmp_path / "y" / "w.pth")
    for p in (a, b):
        os.makedirs(os.path.dirname(p))
        _save_mconv(p, sd)
    assert open(a, "rb").read() == open(b, "rb").read()


def test_zip64_fields_load_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(ZipWriter, "zip64_threshold", 0)
    sd = OrderedDict([("a", torch.randn(3, 4)), ("b", torch.arange(5)), ("e", torch.zeros(0))])
    path = str(tmp_path / "z64.pth")
    _save_mconv(path, sd)
    back = torch.load(path, weights_only=True)
    for k, v in sd.items():
        assert torch_bytes(back[k]) == torch_bytes(v), k
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
    from mconv.formats.pth import _read_part
    from mconv.plugins import ReadContext

    part = _read_part(path, ReadContext())
    for k, v in sd.items():
        assert_same(part.tensors[k], v, k)


# -- layouts ------------------------------------------------------------------------------------------------

def _pth():  # noqa: ANN202
    return get_registry().format("pth")


#: llama2.c model.py ModelArgs, the fields train.py pickles as model_args
@dataclasses.dataclass
class Llama2cModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 0
    vocab_size: int = 32000
    hidden_dim: int = 0
    multiple_of: int = 256
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    dropout: float = 0.0


def test_checkpoint_layout_keeps_every_hparam(tmp_path):
    model = random_model(GQA, dtype="bf16", seed=3)
    out = str(tmp_path / "ckpt.pt")
    write_model(model, out, _pth(), options={"layout": "checkpoint"}, quiet=True)
    ckpt = torch.load(out, weights_only=True)
    assert sorted(ckpt) == ["model", "model_args"]
    Llama2cModelArgs(**ckpt["model_args"])          # llama2.c's export.py / train.py accept it
    assert ckpt["model_args"]["hidden_dim"] == GQA["n_ff"] and ckpt["model_args"]["max_seq_len"] == GQA["n_ctx"]
    with open_model(out) as back:
        assert_same_tensors(model, back)
        assert back.hparams == model.hparams
        assert back.hparam_origin["n_ctx"] == "model_args"


def test_checkpoint_layout_stores_rope_theta_only_when_not_10000(tmp_path):
    model = random_model(MHA, seed=4)                   # rope_theta 500000, norm_eps 1e-6
    out = str(tmp_path / "ckpt.pt")
    write_model(model, out, _pth(), options={"layout": "checkpoint"}, quiet=True)
    args = torch.load(out, weights_only=True)["model_args"]
    assert args["rope_theta"] == 500000.0 and args["norm_eps"] == 1e-6
    with pytest.raises(TypeError):
        Llama2cModelArgs(**args)                        # llama2.c refuses instead of using theta 10000
    with open_model(out) as back:
        assert back.hparams == model.hparams


def test_state_dict_layout_reports_what_it_cannot_store(tmp_path):
    model = random_model(GQA, tokenizer=sp_tokenizer())
    out = str(tmp_path / "bare.pth")
    with pytest.raises(LossyConversionError) as e:
        write_model(model, out, _pth(), quiet=True)
    assert str(e.value) == (
        "converting to pth would lose information: tokenizer (384 tokens): a single .pth file has no slot for it "
        "(write OUT/ for a Meta directory with tokenizer.model); dropped; hparam n_ctx: 128 cannot be stored in "
        "a bare state_dict (use -O layout=checkpoint or OUT/); a reader needs --hparam n_ctx=128; hparam n_head: "
        "8 cannot be stored in a bare state_dict (use -O layout=checkpoint or OUT/); a reader needs --hparam "
        "n_head=8; pass --allow-lossy to accept")
    assert not os.path.exists(out)
    write_model(model, out, _pth(), allow_lossy=True, quiet=True)
    sd = torch.load(out, weights_only=True)
    assert list(sd) == [n for n in (_pth_names(model))]
    with open_model(out, hparams={"n_head": 8, "n_ctx": 128}) as back:
        assert_same_tensors(model, back)
        assert back.hparams == model.hparams


def _pth_names(model):  # noqa: ANN001, ANN202
    from mconv.plugins import table

    return [table("llama").from_canonical(n, "meta") for n in model.tensors]


def test_meta_directory_output(tmp_path):
    model = random_model(MHA | {"n_vocab": 384}, dtype="f16", seed=5, tokenizer=sp_tokenizer())
    out = str(tmp_path / "meta") + "/"
    result = write_model(model, out, _pth(), quiet=True)
    assert [loss.line() for loss in result.plan.losses] == [
        "note: hparam n_ctx: 96 is not stored in params.json; Meta's loader takes it at load time (max_seq_len)"]
    assert sorted(os.listdir(out)) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    with zipfile.ZipFile(os.path.join(out, "consolidated.00.pth")) as z:
        assert z.namelist()[0] == "consolidated.00/data.pkl"
    with open(os.path.join(out, "params.json")) as f:
        params = json.load(f)
    assert params == {"dim": 48, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "vocab_size": 384, "multiple_of": 128,
                      "norm_eps": 1e-6, "rope_theta": 500000.0}
    with open_model(out) as back:
        assert_same_tensors(model, back)
        assert {k: back.hparams[k] for k in model.hparams if k != "n_ctx"} == \
            {k: v for k, v in model.hparams.items() if k != "n_ctx"}
        assert back.tokenizer.sp_model == model.tokenizer.sp_model


def _meta_ffn(dim: int, multiple_of: int, ffn_dim_multiplier) -> int:  # noqa: ANN001
    """Meta's llama/model.py FeedForward hidden size."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@pytest.mark.parametrize("dim,n_ff", [(32, 88), (48, 128), (64, 100), (4096, 11008), (8192, 28672), (4096, 14336),
                                      (288, 768), (5120, 13824), (96, 7)])
def test_params_json_reproduces_n_ff_with_metas_formula(dim, n_ff):
    model = random_model(dict(GQA, n_embd=dim, n_ff=n_ff, n_head=4, n_head_kv=4, n_layer=0, n_vocab=4))
    params = params_json(model)
    assert _meta_ffn(dim, params["multiple_of"], params.get("ffn_dim_multiplier")) == n_ff


def test_layout_checkpoint_is_for_files_only(tmp_path):
    model = random_model(GQA)
    with pytest.raises(UsageError, match="layout=checkpoint applies to single-file output"):
        write_model(model, str(tmp_path / "d") + "/", _pth(), options={"layout": "checkpoint"}, quiet=True)
    assert not os.path.exists(tmp_path / "d")
    r = cli("formats")
    assert "pth" in r.out and "layout" in r.out


def test_tied_model_writes_without_output(tmp_path):
    model = random_model(GQA, tied=True)
    out = str(tmp_path / "tied") + "/"
    write_model(model, out, _pth(), quiet=True)
    sd = torch.load(os.path.join(out, "consolidated.00.pth"), weights_only=True)
    assert "output.weight" not in sd and "tok_embeddings.weight" in sd
    with open_model(out) as back:
        assert_same_tensors(model, back)
        np.testing.assert_array_equal(back.tensors["token_embd.weight"].numpy(),
                                      model.tensors["token_embd.weight"].numpy())
