"""Hostile .npz archives for the example plugin (plugins/mconv-npz): bad zips, object arrays, .npy
headers that lie, members that disagree with ``__mconv__.json``, and compressed bombs; plus small
valid archives (the fuzz seeds) built with zipfile and numpy's own .npy writer, not the plugin's.

The plugin loads only when named in ``MCONV_LOAD_PLUGINS``: corpus cases and seeds say
``plugins=("npz",)`` and the runners load it from plugins/mconv-npz (corpus/plugins.py).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

NPZ = ("npz",)
META = "__mconv__.json"
#: a llama with rows of 32 (q8_0, q4_0), GQA 4:2, one block
HP = dict(n_vocab=32, n_embd=32, n_layer=1, n_head=4, n_head_kv=2, n_ff=64, n_ctx=64, norm_eps=1e-5,
          rope_theta=10000.0)
#: dtype tag of each tensor kind (1-D tensors stay f32)
TAGS = {"token_embd": "q8_0", "attn_q": "f16", "attn_k": "bf16", "attn_v": "q4_0", "ffn_gate": "f16"}
DATE = (1980, 1, 1, 0, 0, 0)


# ==================================================================================================
# builders
# ==================================================================================================

def npy(array: np.ndarray) -> bytes:
    """One .npy file as numpy writes it (format 1.0, no pickle)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_raw(header: str | bytes, data: bytes = b"", version: int = 1, hlen: Optional[int] = None) -> bytes:
    """A .npy file with a header of our choosing (``hlen`` overrides the length field)."""
    body = header.encode("latin1") if isinstance(header, str) else header
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body) if hlen is None else hlen) + body + data
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(body) if hlen is None else hlen) + body + data


def pack_zip(members: Sequence[tuple[str, bytes]], deflate: Sequence[str] = ()) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore", UserWarning)   # duplicate names are made on purpose
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=DATE)
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return buf.getvalue()


def _tag_array(kind: str, values: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """(dtype tag, the array stored for it) of float32 ``values`` stored as ``kind``."""
    from mconv.core.dtypes import get_dtype

    if kind == "f32":
        return {"dtype": "f32"}, values
    if kind == "f16":
        return {"dtype": "f16"}, values.astype("<f2")
    if kind == "bf16":
        return {"dtype": "bf16"}, (values.view("<u4") >> 16).astype("<u2")
    dt = get_dtype(kind)   # a block type: rows of quantized blocks as bytes
    return {"dtype": kind}, np.asarray(dt.encode(values)).reshape(values.shape[0], -1)


def model_members(hp: Optional[dict] = None, seed: int = 0, tokenizer: bool = True) -> list[tuple[str, bytes]]:
    """The members of an mconv-npz archive of a random model: __mconv__.json, then one .npy per tensor."""
    from corpus.builders import sp_model_bytes
    from mconv.core.arch.llama import expected_shapes
    from mconv.core.tokenizers import tokenizer_from_sentencepiece, tokenizer_to_json

    hp = dict(HP if hp is None else hp)
    rng = np.random.default_rng(seed)
    tags, arrays = {}, []
    for name, shape in expected_shapes(hp).items():
        kind = TAGS.get(name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0], "f32")
        tag, arr = _tag_array(kind if len(shape) == 2 else "f32", rng.standard_normal(shape).astype("<f4"))
        tags[name] = {**tag, "shape": list(shape)}
        arrays.append((f"{name}.npy", npy(arr)))
    meta = {"mconv_npz": 1, "arch": "llama", "hparams": hp,
            "tokenizer": tokenizer_to_json(tokenizer_from_sentencepiece(sp_model_bytes())) if tokenizer else None,
            "metadata": {"general.name": "tiny"}, "history": [["read", "test"]], "tensors": tags}
    return [(META, json.dumps(meta).encode())] + arrays


def model_npz(**kw: Any) -> bytes:
    return pack_zip(model_members(**kw))


def generic_members(seed: int = 0) -> list[tuple[str, bytes]]:
    """``np.savez`` of an HF-named f32 state dict (names detected, hparams from config.json)."""
    from corpus.builders import hf_tensors

    return [(f"{t.name}.npy", npy(np.frombuffer(t.data, "<f4").reshape(t.shape))) for t in hf_tensors(seed=seed)]


def _write(d: str, data: bytes, name: str = "m.npz") -> str:
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _generic_dir(d: str, deflate: bool = False) -> str:
    from corpus.builders import hf_config, write_json

    members = generic_members()
    path = _write(d, pack_zip(members, deflate=[n for n, _ in members] if deflate else ()))
    write_json(os.path.join(d, "config.json"), hf_config())
    return path


# ==================================================================================================
# cases
# ==================================================================================================

def _edit_meta(fn: Callable[[dict[str, Any]], Any]) -> bytes:
    members = model_members(tokenizer=False)
    meta = json.loads(members[0][1])
    out = fn(meta)
    members[0] = (META, out if isinstance(out, bytes) else json.dumps(meta).encode())
    return pack_zip(members)


def _replace(member: str, data: Optional[bytes], deflate: Sequence[str] = ()) -> bytes:
    """The model archive with ``member`` replaced (None: removed)."""
    members = [(n, data if n == member else d) for n, d in model_members(tokenizer=False) if n != member or data]
    return pack_zip(members, deflate)


def _add(name: str, data: bytes) -> bytes:
    return pack_zip(model_members(tokenizer=False) + [(name, data)])


def _bomb(total: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero = bytes(1 << 20)
    return b"".join(z.compress(zero) for _ in range(total >> 20)) + z.flush()


def _raw_deflated(name: str, stream: bytes, size: int, crc: int = 0) -> bytes:
    """A zip with one DEFLATED member whose headers declare ``size`` uncompressed bytes."""
    raw = name.encode()
    local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, crc, len(stream), size, len(raw), 0)
    central = b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 8, 0, 0x21, crc, len(stream), size,
                                          len(raw), 0, 0, 0, 0, 0, 0)
    body = local + raw + stream
    cd = central + raw
    return body + cd + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(cd), len(body), 0)


HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }"


def _npy_member(npy_bytes: bytes, name: str = "x.npy") -> Callable[[str], str]:
    return lambda d: _write(d, pack_zip([(name, npy_bytes)]))


def cases() -> list[tuple[str, Callable[[str], str], str]]:
    """(name, build(dir) -> path, expected message substring)."""
    f4 = np.zeros(4, "<f4").tobytes()
    emb = "member 'token_embd.weight.npy'"
    c: list[tuple[str, Callable[[str], str], str]] = [
        # -- the zip itself ----------------------------------------------------------------------------
        ("not_a_zip", lambda d: _write(d, b"PK\x03\x04" + b"\0" * 60), "not a readable zip archive"),
        ("truncated_zip", lambda d: _write(d, model_npz()[:3000]), "not a readable zip archive"),
        ("no_end_record", lambda d: _write(d, model_npz()[:-22]), "not a readable zip archive"),
        ("duplicate_member", lambda d: _write(d, _add("output_norm.weight.npy", npy(np.zeros(32, "<f4")))),
         "member 'output_norm.weight.npy': duplicate member"),
        ("local_header_lies", lambda d: _write(d, _local_name_lie()),
         "local header names b'output_norm.weight.npx', central directory 'output_norm.weight.npy'"),
        ("member_past_eof", lambda d: _write(d, _member_past_eof()), "runs past the end of the file"),
        # (a classic end record counts to 65535: more entries take a zip64 end record)
        ("too_many_members", lambda d: _write(d, _end_record(entries=300_000, zip64=True)),
         "300000 members exceed the limit of 262145"),
        ("too_many_members_2_40", lambda d: _write(d, _end_record(entries=1 << 40, zip64=True)),
         f"{1 << 40} members exceed the limit of 262145"),
        ("central_directory_huge", lambda d: _write(d, _end_record(cd_size=100 << 20)),
         f"central directory of {100 << 20} bytes exceeds the {64 << 20}-byte limit"),
        # 100,000 entries of one name: a duplicate search by list.count would take minutes
        ("one_name_100000_times", lambda d: _write(d, _same_name(100_000)), "member 'a.npy': duplicate member"),
        # -- .npy headers ---------------------------------------------------------------------------------
        ("object_array", _npy_member(npy_raw("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8)),
         "object arrays are refused (allow_pickle=False)"),
        ("object_field", _npy_member(npy_raw("{'descr': [('a', '|O')], 'fortran_order': False, 'shape': (1,), }",
                                             b"\0" * 8)), "object arrays are refused (allow_pickle=False)"),
        ("structured_dtype", _npy_member(npy_raw("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, "
                                                 "'shape': (1,), }", b"\0" * 8)), "structured dtype"),
        ("bad_npy_magic", _npy_member(b"\x93NUMPX\x01\x00" + npy(np.zeros(2))[8:]), "not an .npy array (bad magic)"),
        ("npy_version_9", _npy_member(b"\x93NUMPY\x09\x00" + npy(np.zeros(2))[8:]), "unsupported .npy version 9"),
        ("npy_header_length_lie", _npy_member(npy_raw(HEADER, f4 * 4, hlen=0xFFFF)),
         ".npy header of 65535 bytes is truncated or over 65535 bytes"),
        ("npy_v2_header_huge", _npy_member(npy_raw(HEADER, f4 * 4, version=2, hlen=1 << 30)),
         f".npy header of {1 << 30} bytes is truncated or over 65535 bytes"),
        ("npy_truncated_v2", _npy_member(b"\x93NUMPY\x02\x00\x10\x00\x00"), "truncated .npy header"),
        ("npy_header_not_dict", _npy_member(npy_raw("[1, 2, 3]", f4)), "bad .npy header"),
        ("npy_header_code", _npy_member(npy_raw("__import__('os').system('touch MARKER')", f4)), "bad .npy header"),
        ("npy_header_missing_key", _npy_member(npy_raw("{'descr': '<f4', 'shape': (4,), }", f4)), "bad .npy header"),
        ("npy_negative_dim", _npy_member(npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }", f4)),
         "member 'x.npy': shape [-4] is not a list of non-negative integers"),
        ("npy_unknown_descr", _npy_member(npy_raw("{'descr': '<q9', 'fortran_order': False, 'shape': (4,), }", f4)),
         "bad .npy header"),
        ("npy_complex", _npy_member(npy_raw("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", f4)),
         "numpy dtype <c8 has no mconv equivalent"),
        ("npy_shape_larger_than_data", _npy_member(npy_raw(HEADER.replace("(2, 2)", "(4, 4)"), f4)),
         "array data is 16 bytes, its header implies 64"),
        ("npy_shape_smaller_than_data", _npy_member(npy_raw(HEADER.replace("(2, 2)", "(1, 2)"), f4)),
         "array data is 16 bytes, its header implies 8"),
        ("npy_shape_huge", _npy_member(npy_raw(HEADER.replace("(2, 2)", f"({1 << 40}, {1 << 40})"), f4)),
         f"member 'x.npy': shape [{1 << 40}, {1 << 40}] is too large"),
        ("npy_fortran_huge", _npy_member(npy_raw(HEADER.replace("False", "True").replace("(2, 2)", f"({1 << 40}, 2)"),
                                                 f4)), "its header implies"),
        ("npy_zero_dim_huge", _npy_member(npy_raw(HEADER.replace("(2, 2)", f"(0, {1 << 62}, {1 << 62})"), b"")),
         "member 'x.npy': shape [0, 4611686018427387904, 4611686018427387904] is too large"),
        # -- __mconv__.json --------------------------------------------------------------------------------
        ("meta_not_json", lambda d: _write(d, _edit_meta(lambda m: b"{not json")), "not valid JSON"),
        ("meta_not_utf8", lambda d: _write(d, _edit_meta(lambda m: b'{"a": "\xff"}')), "not valid JSON"),
        ("meta_deep", lambda d: _write(d, _edit_meta(lambda m: b"[" * 100_000 + b"]" * 100_000)), "not valid JSON"),
        ("meta_array", lambda d: _write(d, _edit_meta(lambda m: b"[]")),
         "__mconv__.json is not an mconv-npz v1 description"),
        ("meta_version_2", lambda d: _write(d, _edit_meta(lambda m: m.update(mconv_npz=2))),
         "__mconv__.json is not an mconv-npz v1 description"),
        ("meta_tensors_list", lambda d: _write(d, _edit_meta(lambda m: m.update(tensors=[]))),
         "tensors must be an object"),
        ("meta_shape_negative", lambda d: _write(d, _edit_meta(lambda m: m["tensors"]["output_norm.weight"].update(
            shape=[-32]))), "tensor 'output_norm.weight': shape must be a list of non-negative integers"),
        ("meta_shape_string", lambda d: _write(d, _edit_meta(lambda m: m["tensors"]["output_norm.weight"].update(
            shape="32"))), "tensor 'output_norm.weight': shape must be a list of non-negative integers"),
        ("meta_tag_not_object", lambda d: _write(d, _edit_meta(lambda m: m["tensors"].update(
            {"output_norm.weight": "f32"}))), "tensor 'output_norm.weight': shape must be a list"),
        ("meta_dtype_unknown", lambda d: _write(d, _edit_meta(lambda m: m["tensors"]["output_norm.weight"].update(
            dtype="f128"))), "bad dtype tag 'f128'"),
        ("meta_dtype_missing", lambda d: _write(d, _edit_meta(lambda m: m["tensors"]["output_norm.weight"].pop(
            "dtype"))), "bad dtype tag None"),
        ("meta_block_size_bad", lambda d: _write(d, _edit_meta(lambda m: m["tensors"]["token_embd.weight"].update(
            block_size=7))), "q8_0 has a fixed block size of 32"),
        ("meta_dtype_disagrees", lambda d: _write(d, _edit_meta(lambda m: m["tensors"]["output_norm.weight"].update(
            dtype="f16"))), "array is <f4 (32,) but __mconv__.json says f16 (32,), stored as <f2 (32,)"),
        ("meta_shape_disagrees", lambda d: _write(d, _edit_meta(lambda m: m["tensors"]["output_norm.weight"].update(
            shape=[16, 2]))), "array is <f4 (32,) but __mconv__.json says f32 (16, 2)"),
        ("meta_tensor_without_member", lambda d: _write(d, _replace("output_norm.weight.npy", None)),
         "tensor 'output_norm.weight' listed in __mconv__.json has no member"),
        ("member_not_listed", lambda d: _write(d, _add("extra.npy", npy(np.zeros(2, "<f4")))),
         "member extra.npy is not listed in __mconv__.json"),
        ("meta_hparams_string", lambda d: _write(d, _edit_meta(lambda m: m["hparams"].update(n_head="4"))),
         "hparam n_head = '4' from __mconv__.json is not an integer"),
        ("meta_hparams_unknown", lambda d: _write(d, _edit_meta(lambda m: m["hparams"].update(n_heads=4))),
         "unknown hparam 'n_heads'"),
        ("meta_hparams_zero_layers", lambda d: _write(d, _edit_meta(lambda m: m["hparams"].update(n_layer=0))),
         "hparam n_layer = 0"),
        ("meta_hparams_huge_layers", lambda d: _write(d, _edit_meta(lambda m: m["hparams"].update(n_layer=2**31 - 1))),
         "tensor blk.1.attn_norm.weight is missing"),
        ("meta_history_bad", lambda d: _write(d, _edit_meta(lambda m: m.update(history=[["a"]]))),
         "history must be a list of [kind, detail] pairs"),
        ("meta_arch_number", lambda d: _write(d, _edit_meta(lambda m: m.update(arch=7))), "arch must be a string"),
        ("meta_arch_unknown", lambda d: _write(d, _edit_meta(lambda m: m.update(arch="gpt9"))), "gpt9"),
        ("meta_tokenizer_bad", lambda d: _write(d, _edit_meta(lambda m: m.update(tokenizer={"tokens": 5}))),
         "member '__mconv__.json'"),
        ("meta_too_large_declared", lambda d: _write(d, _raw_deflated(META, _bomb(1 << 20), (256 << 20) + 1)),
         f"{(256 << 20) + 1} bytes exceed the {256 << 20}-byte limit"),
        # -- compressed members --------------------------------------------------------------------------
        ("bomb_declared_over_cap", lambda d: _write(d, _raw_deflated("x.npy", _bomb(1 << 20), 3 << 30)),
         f"compressed members declare {3 << 30} bytes in all; the limit is {1 << 30}"),
        ("bomb_lies_about_size", lambda d: _write(d, _raw_deflated("x.npy", _bomb(64 << 20), 100)),
         "member 'x.npy'"),
        ("bomb_bad_stream", lambda d: _write(d, _raw_deflated("x.npy", b"\xff" * 64, 1000)), "member 'x.npy'"),
        ("compressed_npy_lies", lambda d: _write(d, _replace("token_embd.weight.npy", npy(np.zeros((32, 3), "u1")),
                                                             deflate=["token_embd.weight.npy"])),
         f"{emb}: array is |u1 (32, 3)"),
        ("bombs_in_total", lambda d: _write(d, _two_bombs()),
         f"compressed members declare {1200 << 20} bytes in all; the limit is {1 << 30}"),
    ]
    return c


def _local_name_lie() -> bytes:
    """The local header of output_norm.weight.npy names another member than its central entry."""
    blob = bytearray(model_npz())
    name = b"output_norm.weight.npy"
    at = blob.find(name)   # the first occurrence is in the local header
    blob[at:at + len(name)] = b"output_norm.weight.npx"
    return bytes(blob)


def _member_past_eof() -> bytes:
    """A stored member whose central entry points its data past the end of the file."""
    members = [("x.npy", npy(np.zeros(4, "<f4")))]
    blob = bytearray(pack_zip(members))
    cd = blob.find(b"PK\x01\x02")
    size = len(members[0][1]) + 1000
    struct.pack_into("<II", blob, cd + 20, size, size)   # compressed and uncompressed sizes
    lh = blob.find(b"PK\x03\x04")
    struct.pack_into("<II", blob, lh + 18, size, size)
    return bytes(blob)


def _end_record(entries: int = 1, cd_size: int = 0, zip64: bool = False) -> bytes:
    """A local header and an end record claiming ``entries`` entries in a ``cd_size``-byte
    directory (zip64 end record and locator too, if ``zip64``)."""
    local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0x21, 0, 0, 0, 5, 0) + b"a.npy"
    out = local
    if zip64:
        z64 = len(out)
        out += b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, entries, entries, cd_size, len(local))
        out += b"PK\x06\x07" + struct.pack("<IQI", 0, z64, 1)
        entries, cd_size = 0xFFFF, 0xFFFFFFFF
    return out + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, entries, entries, cd_size, len(local), 0)


def _same_name(n: int) -> bytes:
    """``n`` central directory entries all named a.npy, all pointing at one stored member."""
    data = npy(np.zeros(2, "<f4"))
    crc = zlib.crc32(data)
    local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 0, 0, 0x21, crc, len(data), len(data), 5, 0) + \
        b"a.npy" + data
    entry = b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 0, 0, 0x21, crc, len(data), len(data), 5, 0,
                                         0, 0, 0, 0, 0) + b"a.npy"
    cd = entry * n
    return local + cd + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, len(cd), len(local), 0)


def _two_bombs() -> bytes:
    """Two compressed members declaring 600 MiB each: 1.2 GiB to inflate in all."""
    stream = _bomb(1 << 20)
    size = 600 << 20
    out, central = b"", b""
    for name in (b"a.npy", b"b.npy"):
        local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0x21, 0, len(stream), size, len(name), 0)
        central += b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 8, 0, 0x21, 0, len(stream), size,
                                               len(name), 0, 0, 0, 0, 0, len(out)) + name
        out += local + name + stream
    return out + central + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 2, 2, len(central), len(out), 0)


def corpus_cases() -> list:
    from corpus.make_corpus import Case

    return [Case("npz", name, build, expect, read_args=("--from", "npz"), plugins=NPZ,
                 commands=TRANSLATE_ONLY.get(name, ("translate", "inspect")))
            for name, build, expect in cases()]


#: cases only the architecture check refuses, which ``inspect`` skips
TRANSLATE_ONLY = {"meta_hparams_huge_layers": ("translate",)}


# ==================================================================================================
# fuzz seeds
# ==================================================================================================

#: a Python literal token of a .npy header dict
PY_TOKEN = re.compile(rb"-?[0-9]+|'[^']*'|True|False|None")


def npy_retoken(data: bytes, k: int, literal: bytes) -> Optional[bytes]:
    """Replace the k-th literal of a version 1.0 .npy header and fix the header length field."""
    if len(data) < 10 or data[6] != 1:
        return None
    (n,) = struct.unpack_from("<H", data, 8)
    header = data[10:10 + n]
    tokens = list(PY_TOKEN.finditer(header))
    if not tokens:
        return None
    m = tokens[k % len(tokens)]
    new = header[:m.start()] + literal + header[m.end():]
    if len(new) > 0xFFFF:
        return None
    return data[:8] + struct.pack("<H", len(new)) + new + data[10 + n:]


def npy_int_fields(data: bytes) -> list[tuple[int, int]]:
    return [(6, 1), (8, 2)]


def fuzz_seeds() -> list:
    from corpus.seeds import Seed, json_retoken
    from hostile_pth import _zip_layer, zip_int_fields

    def model(d: str) -> tuple[str, str]:
        path = _write(d, model_npz())
        return path, path

    def generic(d: str) -> tuple[str, str]:
        path = _generic_dir(d)
        return path, path

    def compressed(d: str) -> tuple[str, str]:
        path = _generic_dir(d, deflate=True)
        return path, path

    def config(d: str) -> tuple[str, str]:
        path = _generic_dir(d)
        return path, os.path.join(d, "config.json")

    return [
        Seed("npz", "mconv", model, zip_int_fields, plugins=NPZ),
        Seed("npz", "mconv-meta", model, retoken=json_retoken, layer=_zip_layer(META), plugins=NPZ),
        Seed("npz", "mconv-npy-q8_0", model, npy_int_fields, npy_retoken, layer=_zip_layer("token_embd.weight.npy"),
             plugins=NPZ),
        Seed("npz", "mconv-npy-f32", model, npy_int_fields, npy_retoken, layer=_zip_layer("output_norm.weight.npy"),
             plugins=NPZ),
        Seed("npz", "savez", generic, zip_int_fields, plugins=NPZ),
        Seed("npz", "savez-npy", generic, npy_int_fields, npy_retoken,
             layer=_zip_layer("model.layers.0.self_attn.q_proj.weight.npy"), plugins=NPZ),
        Seed("npz", "savez-compressed", compressed, zip_int_fields, plugins=NPZ),
        Seed("npz", "config.json", config, retoken=json_retoken, plugins=NPZ),
    ]
