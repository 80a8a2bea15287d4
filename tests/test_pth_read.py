"""Reading what torch writes: every dtype, views, shared storages, legacy and TorchScript containers,
nn.Module state_dicts, parameters, compressed members; and laziness (inspect reads only the pickle)."""

from __future__ import annotations

import io
import os
import resource
import struct
import zipfile
from collections import OrderedDict

import pytest
import torch

from mconv.formats import _torch_file
from mconv.formats.pth import _read_part
from mconv.plugins import MappedFile, ReadContext
from testlib import GQA, cli, cli_subprocess
from torch_oracle import assert_same, meta_dir

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn,
          torch.float8_e5m2]
#: dtypes the pre-zip format can hold (the others have no legacy storage class)
LEGACY_DTYPES = DTYPES[:10]


def _values(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 3).to(dtype)
    hi = 200 if dtype == torch.uint8 else 100
    return torch.randint(0 if not dtype.is_signed else -100, hi, shape, generator=g).to(dtype)


def odd_tensors(dtypes: list[torch.dtype]) -> "OrderedDict[str, torch.Tensor]":
    """Views of every kind over every dtype."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, dt in enumerate(dtypes):
        n = str(dt).split(".")[1]
        base = _values(dt, (5, 6), i)
        sd[f"{n}.plain"] = base
        sd[f"{n}.transposed"] = base.t()
        sd[f"{n}.sliced"] = base[1:4, 2:5]
        sd[f"{n}.row"] = base[3]                      # contiguous, storage offset 18
        sd[f"{n}.column"] = base[:, 4]                # stride 6
        sd[f"{n}.stepped"] = base[::2, ::3]
        sd[f"{n}.scalar"] = _values(dt, (), i)
        sd[f"{n}.empty"] = _values(dt, (2, 0, 3), i)
    cube = torch.randn(2, 3, 4, 5)
    sd["permuted"] = cube.permute(3, 1, 0, 2)
    sd["permuted_sliced"] = cube.permute(3, 1, 0, 2)[1:, :, :, ::2]
    sd["broadcast"] = torch.randn(3).expand(4, 3)     # stride 0
    sd["broadcast3"] = torch.randn(1, 1, 5).expand(2, 3, 5)
    sd["param"] = torch.nn.Parameter(torch.randn(3))
    return sd


def check_part(path: str, sd: "OrderedDict[str, torch.Tensor]") -> list[str]:
    part = _read_part(path, ReadContext())
    assert list(part.tensors) == list(sd)
    for name, ref in sd.items():
        t = part.tensors[name]
        assert_same(t, ref, name)
        raw = t.tobytes()
        for r in range(t.n_rows):    # row chunks read the same bytes as the whole
            assert t.read_rows(r, r + 1).tobytes() == raw[r * t.row_bytes:(r + 1) * t.row_bytes], name
    return part.notes


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_every_dtype_and_view_is_bit_identical(tmp_path, legacy):
    sd = odd_tensors(LEGACY_DTYPES if legacy else DTYPES)
    path = str(tmp_path / "odd.pt")
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    notes = check_part(path, sd)
    # views of one storage share it: the file holds each storage once
    assert "float32.transposed shares its storage with float32.plain" in notes
    assert ("legacy (pre-zip) torch.save format" in notes[0]) == legacy


def test_shared_storage_is_one_mapping(tmp_path):
    emb = torch.randn(6, 4)
    sd = OrderedDict([("tok_embeddings.weight", emb), ("output.weight", emb), ("half", emb[3:])])
    path = str(tmp_path / "tied.pth")
    torch.save(sd, path)
    with zipfile.ZipFile(path) as z:
        assert sum(n.startswith("tied/data/") for n in z.namelist()) == 1
    loaded = _torch_file.load(path)
    assert len(loaded.storages) == 1
    assert loaded.obj["output.weight"].storage is loaded.obj["tok_embeddings.weight"].storage
    notes = check_part(path, sd)
    assert notes == ["output.weight shares its storage with tok_embeddings.weight",
                     "half shares its storage with tok_embeddings.weight"]


def test_module_state_dict_with_metadata(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    sd = m.state_dict()
    path = str(tmp_path / "module.pt")
    torch.save(sd, path)
    loaded = _torch_file.load(path)
    assert loaded.obj.state["_metadata"][""] == {"version": 1}      # BUILD of OrderedDict
    check_part(path, sd)   # num_batches_tracked is a 0-d int64


def test_parameter_and_subclass_forms(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    p2 = torch.nn.Parameter(torch.randn(2, 2))
    p2.note = "x"                                  # _rebuild_parameter_with_state
    t = torch.randn(4)
    t.extra = 7                                    # _rebuild_from_type_v2
    sd = OrderedDict([("p", p), ("p2", p2), ("t", t), ("size", torch.Size([2, 3])), ("dev", torch.device("cpu")),
                      ("dt", torch.float16), ("bytes", b"\x00\xff"), ("set", {1})])
    path = str(tmp_path / "forms.pt")
    torch.save(sd, path)
    obj = _torch_file.load(path).obj
    assert [obj["p"].parameter, obj["p2"].parameter, obj["t"].parameter] == [True, True, False]
    assert obj["size"] == (2, 3) and obj["dev"].type == "cpu" and obj["dt"].dtype == "f16"
    assert obj["bytes"] == b"\x00\xff" and obj["set"] == [1]
    check_part(path, OrderedDict((k, v) for k, v in sd.items() if isinstance(v, torch.Tensor)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_weights_are_inert_data(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
            self.register_buffer("buf", torch.arange(6).reshape(2, 3).t())
            self.sizes = [1, 2]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    torch.manual_seed(0)
    net = Net()
    path = str(tmp_path / "scripted.pt")
    torch.jit.save(torch.jit.script(net), path)
    notes = check_part(path, OrderedDict(net.state_dict()))
    assert notes[0].startswith("scripted.pt: TorchScript archive (__torch__.")
    assert notes[0].endswith(".Net); weights read as data, code ignored")


def test_deflated_members_read_under_the_cap(tmp_path):
    sd = OrderedDict([("a", torch.randn(4, 5)), ("b", torch.randn(5, 4).t()), ("c", torch.arange(7))])
    src = tmp_path / "plain.pth"
    torch.save(sd, str(src))
    dst = str(tmp_path / "deflated.pth")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    check_part(dst, sd)


def test_archive_folder_name_is_free(tmp_path):
    sd = OrderedDict([("a", torch.randn(3))])
    src = tmp_path / "x.pth"
    torch.save(sd, str(src))
    dst = str(tmp_path / "renamed.pth")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename.replace("x/", "some folder/", 1), zin.read(info))
    check_part(dst, sd)


# -- laziness ----------------------------------------------------------------------------------------------

def test_inspect_never_maps_storage_bytes(tmp_path, monkeypatch):
    meta_dir(str(tmp_path / "m"), GQA)

    def refuse(self):  # noqa: ANN001
        raise AssertionError(f"storage bytes of {self.path} were read")

    monkeypatch.setattr(MappedFile, "buffer", property(refuse))
    r = cli("inspect", str(tmp_path / "m"))
    assert r.rc == 0, r.err
    assert "format:    pth" in r.out and "n_ff         88 " in r.out


def _sparse_checkpoint(path: str, numel: int) -> None:
    """A torch-layout zip whose one storage is `numel` float32 of holes (a sparse file): zip64 sizes."""
    pkl = io.BytesIO()
    sd = OrderedDict([("tok_embeddings.weight", torch.zeros(2, 2))])
    torch.save(sd, pkl)
    with zipfile.ZipFile(pkl) as z:
        data = z.read("archive/data.pkl").replace(b"K\x04t", b"\x8a\x05" + numel.to_bytes(5, "little") + b"t")
    data = data.replace(b"K\x02K\x02\x86", b"\x8a\x05" + (numel // 2).to_bytes(5, "little") + b"K\x02\x86")
    nbytes = numel * 4
    with open(path, "wb") as f:
        entries = []
        for name, blob, size in (("archive/data.pkl", data, len(data)), ("archive/data/0", None, nbytes)):
            raw = name.encode()
            off = f.tell()
            extra = struct.pack("<HHQQ", 1, 16, size, size)
            f.write(b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 45, 0x800, 0, 0, 0, 0 if blob is None else
                                                 __import__("zlib").crc32(blob), 0xFFFFFFFF, 0xFFFFFFFF, len(raw),
                                                 len(extra)) + raw + extra)
            if blob is None:
                f.seek(size, os.SEEK_CUR)  # a hole: no disk space, no bytes to read
            else:
                f.write(blob)
            entries.append((raw, off, size, 0 if blob is None else __import__("zlib").crc32(blob)))
        cd = f.tell()
        for raw, off, size, crc in entries:
            extra = struct.pack("<HHQQQ", 1, 24, size, size, off)
            f.write(b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 45, 45, 0x800, 0, 0, 0, crc, 0xFFFFFFFF,
                                                 0xFFFFFFFF, len(raw), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + raw + extra)
        cd_size = f.tell() - cd
        z64 = f.tell()
        f.write(b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, 2, 2, cd_size, cd))
        f.write(b"PK\x06\x07" + struct.pack("<IQI", 0, z64, 1))
        f.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 2, 2, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_inspect_of_a_6_gib_checkpoint_reads_only_the_pickle(tmp_path):
    """6 GiB of storage in a sparse file: inspect succeeds under a 1 GiB address-space limit, so it
    neither reads nor maps the storage."""
    path = str(tmp_path / "big.pth")
    numel = 6 << 28
    _sparse_checkpoint(path, numel)
    assert os.path.getsize(path) > 6 << 30
    hparams = [a for k in ("n_head", "n_head_kv", "n_ff", "n_layer") for a in ("--hparam", f"{k}=1")]
    r = cli_subprocess("inspect", *hparams, path, preexec=_limit_address_space)
    assert r.rc == 0, r.err
    assert f"token_embd.weight  f32      {numel // 2}x2" in r.out
