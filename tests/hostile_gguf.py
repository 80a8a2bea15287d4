"""Builders of GGUF and legacy GGML (ggml/ggmf/ggjt) files from raw fields, valid or not, written
with struct from the FORMATS.md spec independently of mconv's writers; and the malformed cases
(each with the exact offset and message mconv must refuse it with).  Importable by other tests
(the fuzz tests reuse the builders and cases).

A case is ``Case(id, data, offset, message)``: ``mconv inspect`` of ``data`` must fail with exit 2
and print ``mconv: error: <path>: offset <offset>: <message>``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# -- GGUF -----------------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
               I64: "<q", F64: "<d"}


def gstr(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gvalue(vtype: int, value: object) -> bytes:
    """The encoding of a value of ``vtype`` (without the type); arrays are (elem_type, items)."""
    if vtype == STRING:
        return gstr(value)  # type: ignore[arg-type]
    if vtype == ARRAY:
        etype, items = value  # type: ignore[misc]
        return struct.pack("<iQ", etype, len(items)) + b"".join(gvalue(etype, v) for v in items)
    return struct.pack(_SCALAR_FMT[vtype], value)


def gkv(key: str | bytes, vtype: int, value: object) -> bytes:
    return gstr(key) + struct.pack("<i", vtype) + gvalue(vtype, value)


def ginfo(name: str | bytes, ne: Sequence[int], type_id: int, offset: int) -> bytes:
    return gstr(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne) + struct.pack("<iQ", type_id,
                                                                                                    offset)


def gguf_file(kvs: Sequence[bytes], infos: Sequence[bytes], data: bytes = b"", *, version: int = 3,
              n_tensors: Optional[int] = None, n_kv: Optional[int] = None, alignment: int = 32) -> bytes:
    head = b"GGUF" + struct.pack("<Iqq", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    return head + data


ARCH = gkv("general.architecture", STRING, "llama")


def one_tensor(n: int = 8, name: str = "output_norm.weight", type_id: int = 0, type_size: int = 4) -> tuple[bytes, bytes]:
    """(tensor info, data padded to 32) of one 1-D tensor."""
    data = np.arange(n, dtype=np.float32).tobytes() if type_id == 0 else b"\x11" * (n * type_size)
    return ginfo(name, [n], type_id, 0), data + b"\0" * (-len(data) % 32)


# -- legacy GGML ---------------------------------------------------------------------------------------

GGML_MAGIC = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}


def ggml_header(variant: str, version: int, hparams: Sequence[int]) -> bytes:
    out = struct.pack("<I", GGML_MAGIC[variant])
    if variant != "ggml":
        out += struct.pack("<I", version)
    return out + struct.pack("<7I", *hparams)


def ggml_vocab(tokens: Sequence[bytes], scores: Optional[Sequence[float]]) -> bytes:
    out = b""
    for i, t in enumerate(tokens):
        out += struct.pack("<I", len(t)) + t
        if scores is not None:
            out += struct.pack("<f", scores[i])
    return out


def ggml_tensor(pos: int, name: str | bytes, ne: Sequence[int], type_id: int, data: bytes, align: bool) -> bytes:
    """One tensor record starting at absolute file offset ``pos`` (ggjt pads its data to 32)."""
    raw = name.encode() if isinstance(name, str) else name
    rec = struct.pack(f"<3I{len(ne)}I", len(ne), len(raw), type_id, *ne) + raw
    if align:
        rec += b"\0" * (-(pos + len(rec)) % 32)
    return rec + data


def ggml_file(variant: str, version: int, hparams: Sequence[int], tokens: Sequence[bytes],
              scores: Optional[Sequence[float]], tensors: Sequence[tuple[str, Sequence[int], int, bytes]]) -> bytes:
    out = ggml_header(variant, version, hparams) + ggml_vocab(tokens, scores if variant != "ggml" else None)
    for name, ne, type_id, data in tensors:
        out += ggml_tensor(len(out), name, ne, type_id, data, align=variant == "ggjt")
    return out


# -- cases ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    offset: int
    message: str


def _gguf_cases() -> list[Case]:
    info, data = one_tensor()
    cases = []

    def add(id: str, blob: bytes, offset: int, message: str) -> None:
        cases.append(Case(id, blob, offset, message))

    add("version-1", b"GGUF" + struct.pack("<Iqq", 1, 0, 0), 4, "GGUF version 1 is not supported (only versions 2 and 3)")
    add("big-endian", b"GGUF" + struct.pack(">Iqq", 3, 0, 0), 4,
        "version field 0x03000000: a big-endian GGUF file, which mconv does not read")
    add("version-9", b"GGUF" + struct.pack("<Iqq", 9, 0, 0), 4, "unknown GGUF version 9 (mconv reads versions 2 and 3)")
    add("truncated-counts", b"GGUF" + struct.pack("<Iq", 3, 0) + b"\0\0", 16,
        "key/value count needs 8 bytes but only 2 are left in the file")
    add("negative-tensor-count", gguf_file([ARCH], [], n_tensors=-1), 8, "tensor count -1 is negative")
    blob = gguf_file([ARCH], [], n_kv=1 << 62)
    add("huge-kv-count", blob, 16, f"key/value count {1 << 62} needs at least {14 << 62} bytes but only "
        f"{len(blob) - 24} are left in the file")
    blob = gguf_file([ARCH], [], n_tensors=10**9)
    add("huge-tensor-count", blob, 8, f"tensor count {10**9} needs at least {25 * 10**9} bytes but only "
        f"{len(blob) - 24} are left in the file")
    add("string-over-1GiB", gguf_file([struct.pack("<Q", (1 << 30) + 1) + b"k"], []), 24,
        f"key has length {(1 << 30) + 1}, over the 1 GiB limit")
    blob = gguf_file([gstr("general.name") + struct.pack("<iQ", STRING, 1000) + b"abc"], [], alignment=1)
    add("string-past-eof", blob, 24 + 8 + 12 + 4, "value of 'general.name' has length 1000 but only 3 bytes are "
        "left in the file")
    add("empty-key", gguf_file([gkv("", U32, 1)], []), 24, "empty key")
    add("duplicate-key", gguf_file([ARCH, ARCH], []), 24 + len(ARCH), "duplicate key 'general.architecture'")
    add("unknown-value-type", gguf_file([gstr("x") + struct.pack("<iI", 13, 0)], []), 24 + 9,
        "key 'x' has unknown value type 13")
    add("unknown-element-type", gguf_file([gstr("x") + struct.pack("<iiQ", ARRAY, 99, 0)], []), 24 + 13,
        "array 'x' has unknown element type 99")
    add("array-over-limit", gguf_file([gstr("x") + struct.pack("<iiQ", ARRAY, U8, (1 << 30) + 1)], []), 24 + 13,
        f"array 'x' has {(1 << 30) + 1} elements, over the 2^30 limit")
    blob = gguf_file([gstr("x") + struct.pack("<iiQ", ARRAY, U32, 10**8)], [], alignment=1)
    add("array-past-eof", blob, 24 + 13, f"array 'x' of {10**8} u32 elements needs at least {4 * 10**8} bytes but "
        "only 0 are left in the file")
    blob = gguf_file([gstr("x") + struct.pack("<iiQ", ARRAY, STRING, 10**6)], [], alignment=1)
    add("string-array-past-eof", blob, 24 + 13, f"array 'x' of {10**6} string elements needs at least {8 * 10**6} "
        "bytes but only 0 are left in the file")
    nested = (U8, [1])
    for _ in range(4):
        nested = (ARRAY, [nested])
    add("arrays-nested-too-deep", gguf_file([gkv("x", ARRAY, nested)], []), 24 + 13 + 12 * 3,
        "array 'x' nests arrays more than 4 levels deep")
    add("alignment-not-u32", gguf_file([gkv("general.alignment", I32, 32)], []), 24,
        "general.alignment must be u32, not i32")
    add("alignment-not-power-of-two", gguf_file([gkv("general.alignment", U32, 48)], []), 24,
        "general.alignment 48 is not a nonzero power of two")
    add("alignment-zero", gguf_file([gkv("general.alignment", U32, 0)], []), 24,
        "general.alignment 0 is not a nonzero power of two")
    head = 24 + len(ARCH)
    add("name-too-long", gguf_file([ARCH], [ginfo("n" * 64, [8], 0, 0)], data), head,
        "tensor 0 has a name of 64 bytes; GGUF allows at most 63")
    add("duplicate-tensor-name", gguf_file([ARCH], [info, info], data + data), head + len(info),
        "duplicate tensor name 'output_norm.weight'")
    add("too-many-dims", gguf_file([ARCH], [ginfo("t", [1, 1, 1, 1, 1], 0, 0)], data), head + 9,
        "tensor 't' has 5 dimensions; GGUF allows at most 4")
    add("negative-dim", gguf_file([ARCH], [ginfo("t", [8, -2], 0, 0)], data), head + 9 + 12,
        "tensor 't' dimension 1 is negative (-2)")
    add("element-count-overflow", gguf_file([ARCH], [ginfo("t", [1 << 32, 1 << 31, 2, 1], 0, 0)], data), head + 9,
        f"tensor 't' with ne [{1 << 32}, {1 << 31}, 2, 1] has {1 << 64} elements, more than 2^63-1")
    add("unknown-ggml-type", gguf_file([ARCH], [ginfo("t", [8], 99, 0)], data), head + 9 + 12,
        "tensor 't' has unknown ggml type 99")
    add("removed-ggml-type", gguf_file([ARCH], [ginfo("t", [32], 4, 0)], data), head + 9 + 12,
        "tensor 't' has ggml type 4 (Q4_2), which was removed from ggml")
    add("unsupported-ggml-type", gguf_file([ARCH], [ginfo("t", [256], 16, 0)], data), head + 9 + 12,
        "tensor 't' has ggml type 16 (IQ2_XXS), which mconv cannot read")
    add("negative-ggml-type", gguf_file([ARCH], [ginfo("t", [8], -1, 0)], data), head + 9 + 12,
        "tensor 't' has unknown ggml type -1")
    add("row-not-whole-blocks", gguf_file([ARCH], [ginfo("t", [33, 2], 8, 0)], data), head + 9 + 20,
        "tensor 't' has rows of 33 elements, not a multiple of the q8_0 block size 32")
    b = ginfo("b", [8], 0, 0)
    add("overlapping-offsets", gguf_file([ARCH], [info, b], data + data), head + len(info),
        "tensor 'b' has offset 0, expected 32 (tensors must follow each other in info order, each padded to 32 "
        "bytes)")
    add("gap-between-tensors", gguf_file([ARCH], [info, ginfo("b", [8], 0, 64)], data * 3), head + len(info),
        "tensor 'b' has offset 64, expected 32 (tensors must follow each other in info order, each padded to 32 "
        "bytes)")
    blob = gguf_file([ARCH], [info], data[:20])
    add("truncated-tensor", blob, len(blob) - 20, f"tensor 'output_norm.weight' data (32 bytes at offset "
        f"{len(blob) - 20}) runs past the end of the file ({len(blob)} bytes)")
    blob = gguf_file([ARCH], [ginfo("t", [1 << 40], 0, 0)], data)
    add("tensor-past-eof", blob, len(blob) - 32, f"tensor 't' data ({4 << 40} bytes at offset {len(blob) - 32}) "
        f"runs past the end of the file ({len(blob)} bytes)")
    blob = gguf_file([ARCH, gkv("x", U32, 5)], [], alignment=1)[:-2]
    add("truncated-value", blob, len(blob) - 2, "value of 'x' needs 4 bytes but only 2 are left in the file")
    return cases


def _legacy_cases() -> list[Case]:
    hp = [3, 8, 8, 2, 1, 4, 0]
    toks = [b" \xe2\x81\x87 ", b"", b""]
    cases = []

    def add(id: str, blob: bytes, offset: int, message: str) -> None:
        cases.append(Case(id, blob, offset, message))

    f32 = np.ones(8, np.float32).tobytes()
    base = ggml_header("ggjt", 3, hp) + ggml_vocab(toks, [0.0] * 3)
    add("ggjt-version-4", ggml_header("ggjt", 4, hp), 4, "unknown ggjt version 4 (known: 1, 2, 3)")
    add("ggmf-version-2", ggml_header("ggmf", 2, hp), 4, "unknown ggmf version 2 (known: 1)")
    add("truncated-hparams", ggml_header("ggjt", 3, hp)[:20], 8, "hparams needs 28 bytes but only 12 are left in "
        "the file")
    blob = ggml_header("ggjt", 3, [0xFFFFFFFF] + hp[1:])
    add("huge-n_vocab", blob, 8, f"n_vocab {0xFFFFFFFF} needs at least {8 * 0xFFFFFFFF} bytes of vocabulary but "
        "only 0 are left in the file")
    blob = ggml_header("ggjt", 3, [1] + hp[1:]) + struct.pack("<I", 1000) + b"abc\0\0\0\0\0"
    add("token-past-eof", blob, 36, "token 0 has length 1000 but only 8 bytes are left in the file")
    add("zero-dims", base + struct.pack("<3I", 0, 1, 0), len(base), "tensor header has 0 dimensions (1 to 4 allowed)")
    add("five-dims", base + struct.pack("<3I", 5, 1, 0), len(base), "tensor header has 5 dimensions (1 to 4 allowed)")
    blob = base + struct.pack("<4I", 1, 0xFFFFFFF0, 0, 8) + b"norm"
    add("name-past-eof", blob, len(base), f"tensor name has length {0xFFFFFFF0} but only 4 bytes are left in the "
        "file")
    add("unknown-type", base + ggml_tensor(len(base), "norm.weight", [8], 99, f32, True), len(base),
        "tensor 'norm.weight' has unknown ggml type 99")
    add("bf16-in-ggjt", base + ggml_tensor(len(base), "norm.weight", [8], 30, f32, True), len(base),
        "tensor 'norm.weight' has ggml type BF16 (30), which ggjt v3 files do not hold")
    add("q4_2-in-ggjt-v3", base + ggml_tensor(len(base), "norm.weight", [32], 4, f32, True), len(base),
        "tensor 'norm.weight' has ggml type Q4_2 (4), which ggjt v3 files do not hold")
    rec = ggml_tensor(len(base), "norm.weight", [8], 0, f32, True)
    add("duplicate-name", base + rec + ggml_tensor(len(base) + len(rec), "norm.weight", [8], 0, f32, True),
        len(base) + len(rec), "duplicate tensor name 'norm.weight'")
    blob = base + ggml_tensor(len(base), "norm.weight", [8], 0, f32, True)[:-4]
    add("truncated-data", blob, len(blob) - 28, f"tensor 'norm.weight' data (32 bytes at offset {len(blob) - 28}) "
        f"runs past the end of the file ({len(blob)} bytes)")
    add("row-not-whole-blocks", base + ggml_tensor(len(base), "x.weight", [33], 8, b"", True), len(base),
        "tensor 'x.weight' has rows of 33 elements, not a multiple of the q8_0 block size 32")
    for variant, version, label in (("ggjt", 2, "ggjt v2"), ("ggjt", 1, "ggjt v1"), ("ggmf", 1, "ggmf v1"),
                                    ("ggml", 0, "unversioned ggml")):
        head = ggml_header(variant, version, hp) + ggml_vocab(toks, [0.0] * 3 if variant != "ggml" else None)
        add(f"quantized-{variant}-v{version}", head + ggml_tensor(len(head), "w", [32], 2, b"\0" * 20,
                                                                  variant == "ggjt"), len(head),
            f"tensor 'w' is Q4_0 in a {label} file: quantized blocks before ggjt v3 have another layout (f32 "
            "scales; before ggjt v2 also interleaved nibbles), which mconv does not read; convert from unquantized "
            "weights instead")
    return cases


GGUF_CASES: list[Case] = _gguf_cases()
GGML_CASES: list[Case] = _legacy_cases()
