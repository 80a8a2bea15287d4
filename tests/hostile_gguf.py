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
from typing import Callable, Optional, Sequence

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
    add("zero-dim-huge-shape", gguf_file([ARCH], [ginfo("t", [0, 1 << 40, 1 << 40], 0, 0)], data), head + 9,
        f"tensor 't': shape [{1 << 40}, {1 << 40}, 0] is too large")
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


# ==================================================================================================
# legacy variants: the same faults in unversioned ggml, ggmf v1 and ggjt v1/v2 headers
# ==================================================================================================

def _variant_cases() -> list[Case]:
    """Truncation and count faults for each older variant (their header and vocabulary layouts
    differ: no version field in ggml, no scores in ggml, no data alignment before ggjt)."""
    hp = [3, 8, 8, 2, 1, 4, 0]
    toks = [b" \xe2\x81\x87 ", b"", b""]
    f32 = np.ones(8, np.float32).tobytes()
    cases = []
    for variant, version in (("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2)):
        tag = f"{variant}-v{version}"
        scores = None if variant == "ggml" else [0.0] * 3
        header = ggml_header(variant, version, hp)
        hp_at = len(header) - 28
        base = header + ggml_vocab(toks, scores)
        entry = 4 if variant == "ggml" else 8
        cases.append(Case(f"{tag}-truncated-hparams", header[:hp_at + 10], hp_at,
                          "hparams needs 28 bytes but only 10 are left in the file"))
        blob = ggml_header(variant, version, [1000] + hp[1:])
        cases.append(Case(f"{tag}-huge-n_vocab", blob, hp_at, f"n_vocab 1000 needs at least {1000 * entry} bytes of "
                          "vocabulary but only 0 are left in the file"))
        blob = ggml_header(variant, version, [1] + hp[1:]) + struct.pack("<I", 1000) + b"abc" + b"\0" * 5
        cases.append(Case(f"{tag}-token-past-eof", blob, hp_at + 28, "token 0 has length 1000 but only 8 bytes are "
                          "left in the file"))
        rec = ggml_tensor(len(base), "norm.weight", [8], 0, f32, variant == "ggjt")
        blob = base + rec[:-4]
        data_at = len(blob) - 28
        cases.append(Case(f"{tag}-truncated-data", blob, data_at, f"tensor 'norm.weight' data (32 bytes at offset "
                          f"{data_at}) runs past the end of the file ({len(blob)} bytes)"))
        cases.append(Case(f"{tag}-duplicate-name", base + rec + ggml_tensor(len(base) + len(rec), "norm.weight", [8],
                                                                            0, f32, variant == "ggjt"),
                          len(base) + len(rec), "duplicate tensor name 'norm.weight'"))
        huge = ggml_tensor(len(base), "w", [0, 1 << 31, 1 << 31, 1 << 31], 0, b"", variant == "ggjt")
        cases.append(Case(f"{tag}-zero-dim-huge-shape", base + huge, len(base),
                          f"tensor 'w': shape [{1 << 31}, {1 << 31}, {1 << 31}, 0] is too large"))
        cases.append(Case(f"{tag}-five-dims", base + struct.pack("<3I", 5, 1, 0), len(base),
                          "tensor header has 5 dimensions (1 to 4 allowed)"))
        cases.append(Case(f"{tag}-truncated-tensor-header", base + struct.pack("<2I", 1, 4), len(base),
                          "tensor header needs 12 bytes but only 8 are left in the file"))
        cases.append(Case(f"{tag}-bf16", base + ggml_tensor(len(base), "norm.weight", [8], 30, f32,
                                                            variant == "ggjt"), len(base),
                          f"tensor 'norm.weight' is BF16 in a "
                          f"{'unversioned ggml' if variant == 'ggml' else f'{variant} v{version}'} file: quantized "
                          "blocks before ggjt v3 have another layout (f32 scales; before ggjt v2 also interleaved "
                          "nibbles), which mconv does not read; convert from unquantized weights instead"))
    return cases


GGML_CASES += _variant_cases()


# ==================================================================================================
# small valid models (the fuzz seeds), and the corpus / fuzz hooks
# ==================================================================================================

#: hparams of the GGUF seed: rows of 32 (q4_0...q8_0) and one of 256 (a K-quant), GQA 4:2
GGUF_TINY = dict(n_vocab=32, n_embd=32, n_layer=1, n_head=4, n_head_kv=2, n_ff=256, n_ctx=64, norm_eps=1e-5,
                 rope_theta=10000.0)
#: ggml type of each tensor kind in the seeds (norms stay f32)
GGUF_TYPES = {"token_embd": 8, "output": 6, "attn_q": 1, "attn_k": 2, "attn_v": 3, "attn_output": 30,
              "ffn_gate": 7, "ffn_down": 12, "ffn_up": 8}
GGJT_TYPES = {"token_embd": 8, "output": 6, "attn_q": 1, "attn_k": 2, "attn_v": 3, "attn_output": 7,
              "ffn_gate": 8, "ffn_down": 8, "ffn_up": 1}


def _tensor_bytes(type_id: int, shape: Sequence[int], rng: np.random.Generator) -> bytes:
    """Plausible data for a tensor of ``type_id``: float values, or blocks of random bytes with
    modest f16 scales (so dequantized values stay finite)."""
    from mconv.core.dtypes import get_dtype

    from mconv.formats._ggml_types import GGML_TYPE_TO_DTYPE

    if type_id == 0:
        return rng.standard_normal(shape).astype("<f4").tobytes()
    if type_id == 1:
        return rng.standard_normal(shape).astype("<f2").tobytes()
    if type_id == 30:
        return (rng.standard_normal(shape).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    dt = get_dtype(GGML_TYPE_TO_DTYPE[type_id])
    n = dt.nbytes(tuple(shape))
    raw = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    scale = np.float16(0.01).tobytes()
    for b in range(0, n, dt.type_size):   # every block starts with an f16 scale (d) in these types
        raw[b:b + 2] = scale
    return bytes(raw)


def _kind(canonical: str) -> str:
    return canonical.split(".")[-2] if canonical.startswith("blk.") else canonical.split(".")[0]


def _vocab(n: int) -> list[str]:
    normal = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581t", "\u2581th", "\u2581the"]
    return (["<unk>", "<s>", "</s>"] + normal)[:n]


def tiny_gguf(hp: Optional[dict] = None, seed: int = 0, version: int = 3, alignment: int = 32) -> bytes:
    """A complete llama GGUF (hparams, SentencePiece-style vocabulary, one tensor of each of
    f32/f16/bf16/q4_0/q4_1/q5_0/q5_1/q8_0/q4_K), built field by field; ``alignment`` other than 32
    is stored as general.alignment."""
    from mconv.core.arch.llama import expected_shapes

    hp = dict(GGUF_TINY if hp is None else hp)
    rng = np.random.default_rng(seed)
    kvs = [ARCH, gkv("general.name", STRING, "tiny"),
           gkv("llama.context_length", U32, hp["n_ctx"]), gkv("llama.embedding_length", U32, hp["n_embd"]),
           gkv("llama.block_count", U32, hp["n_layer"]), gkv("llama.feed_forward_length", U32, hp["n_ff"]),
           gkv("llama.attention.head_count", U32, hp["n_head"]),
           gkv("llama.attention.head_count_kv", U32, hp["n_head_kv"]),
           gkv("llama.attention.layer_norm_rms_epsilon", F32, hp["norm_eps"]),
           gkv("llama.rope.freq_base", F32, hp["rope_theta"]),
           gkv("llama.rope.dimension_count", U32, hp["n_embd"] // hp["n_head"]),
           gkv("general.file_type", U32, 7)]
    vocab = _vocab(hp["n_vocab"])
    kvs += [gkv("tokenizer.ggml.model", STRING, "llama"), gkv("tokenizer.ggml.tokens", ARRAY, (STRING, vocab)),
            gkv("tokenizer.ggml.scores", ARRAY, (F32, [-float(i) for i in range(len(vocab))])),
            gkv("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3] + [1] * (len(vocab) - 3))),
            gkv("tokenizer.ggml.bos_token_id", U32, 1), gkv("tokenizer.ggml.eos_token_id", U32, 2),
            gkv("tokenizer.ggml.add_bos_token", BOOL, True)]
    if alignment != 32:
        kvs.append(gkv("general.alignment", U32, alignment))
    infos, data = [], b""
    for canonical, shape in expected_shapes(hp).items():
        type_id = GGUF_TYPES.get(_kind(canonical), 0) if len(shape) == 2 else 0
        raw = _tensor_bytes(type_id, shape, rng)
        infos.append(ginfo(canonical, list(reversed(shape)), type_id, len(data)))
        data += raw + b"\0" * (-len(raw) % alignment)
    return gguf_file(kvs, infos, data, version=version, alignment=alignment)


#: hparams of the legacy seeds: no GQA in ggml-era llama, n_ff from n_mult 32
GGML_TINY = dict(n_vocab=32, n_embd=32, n_layer=1, n_head=4, n_head_kv=4, n_ff=96, n_ctx=64, norm_eps=1e-5,
                 rope_theta=10000.0)
_LEGACY_SPECIAL_TEXT = [" \u2047 ".encode(), b"", b""]


def tiny_ggml(variant: str = "ggjt", version: int = 3, seed: int = 0) -> bytes:
    """A complete legacy llama file of ``variant``/``version`` with Meta tensor names; quantized
    tensors (q4_0...q8_0) in ggjt v3 only, f32/f16 before."""
    from mconv.core.arch.llama import expected_shapes
    from mconv.core.names import table

    hp = dict(GGML_TINY)
    rng = np.random.default_rng(seed)
    naming = table("llama")
    vocab = _vocab(hp["n_vocab"])
    tokens = _LEGACY_SPECIAL_TEXT + [t.replace("\u2581", " ").encode() for t in vocab[3:]]
    header = [hp["n_vocab"], hp["n_embd"], 32, hp["n_head"], hp["n_layer"], hp["n_embd"] // hp["n_head"], 7]
    tensors = []
    for canonical, shape in expected_shapes(hp).items():
        type_id = 0
        if len(shape) == 2:
            type_id = GGJT_TYPES.get(_kind(canonical), 0)
            if (variant, version) != ("ggjt", 3):
                type_id = min(type_id, 1)
        tensors.append((naming.from_canonical(canonical, "ggml") or canonical, list(reversed(shape)), type_id,
                        _tensor_bytes(type_id, shape, rng)))
    return ggml_file(variant, version, header, tokens, [-float(i) for i in range(len(tokens))], tensors)


# -- where the integers are ---------------------------------------------------------------------------

def gguf_int_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the header counts, every key/value's lengths, types and integer values,
    and every tensor info's fields, as far as the bytes parse."""
    fields = [(4, 4), (8, 8), (16, 8)]
    size = len(data)

    def u(fmt: str, at: int) -> Optional[int]:
        n = struct.calcsize(fmt)
        return struct.unpack_from(fmt, data, at)[0] if at + n <= size else None

    try:
        n_tensors, n_kv = u("<q", 8), u("<q", 16)
        pos = 24
        for _ in range(min(n_kv or 0, 4096)):
            klen = u("<Q", pos)
            if klen is None or pos + 8 + klen > size:
                return fields
            fields.append((pos, 8))
            pos += 8 + klen
            vtype = u("<i", pos)
            fields.append((pos, 4))
            pos += 4
            pos = _walk_value(data, pos, vtype, fields, 0)
            if pos is None:
                return fields
        for _ in range(min(n_tensors or 0, 4096)):
            nlen = u("<Q", pos)
            if nlen is None or pos + 8 + nlen + 4 > size:
                return fields
            fields.append((pos, 8))
            pos += 8 + nlen
            n_dims = u("<I", pos)
            fields.append((pos, 4))
            pos += 4
            if n_dims is None or n_dims > 8:
                return fields
            fields += [(pos + 8 * j, 8) for j in range(n_dims)]
            pos += 8 * n_dims
            fields += [(pos, 4), (pos + 4, 8)]
            pos += 12
    except struct.error:
        pass
    return [f for f in fields if f[0] + f[1] <= size]


def _walk_value(data: bytes, pos: int, vtype: Optional[int], fields: list[tuple[int, int]],
                depth: int) -> Optional[int]:
    sizes = {U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32: 4, BOOL: 1, U64: 8, I64: 8, F64: 8}
    if vtype in sizes:
        if vtype not in (F32, F64, BOOL):
            fields.append((pos, sizes[vtype]))
        return pos + sizes[vtype]
    if vtype == STRING:
        if pos + 8 > len(data):
            return None
        fields.append((pos, 8))
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
    if vtype == ARRAY and depth < 3 and pos + 12 <= len(data):
        etype, count = struct.unpack_from("<iQ", data, pos)
        fields += [(pos, 4), (pos + 4, 8)]
        pos += 12
        if etype in sizes:
            return pos + sizes[etype] * count
        for _ in range(min(count, 64)):
            nxt = _walk_value(data, pos, etype, fields, depth + 1)
            if nxt is None:
                return None
            pos = nxt
        return pos if count <= 64 else None
    return None


#: ggml type id -> (block elements, block bytes) for walking legacy tensor data
_LEGACY_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34)}


def ggml_int_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the magic, version, hparams, every token length and every tensor header
    field of a legacy file, as far as the bytes parse."""
    size = len(data)
    if size < 4:
        return []
    magic = struct.unpack_from("<I", data, 0)[0]
    variant = {v: k for k, v in GGML_MAGIC.items()}.get(magic, "ggjt")
    pos = 4 if variant == "ggml" else 8
    fields = [(0, 4)] + ([(4, 4)] if variant != "ggml" else [])
    fields += [(pos + 4 * i, 4) for i in range(7)]
    if pos + 28 > size:
        return [f for f in fields if f[0] + f[1] <= size]
    n_vocab = struct.unpack_from("<I", data, pos)[0]
    pos += 28
    for _ in range(min(n_vocab, 4096)):
        if pos + 4 > size:
            return fields
        fields.append((pos, 4))
        pos += 4 + struct.unpack_from("<I", data, pos)[0] + (0 if variant == "ggml" else 4)
    while pos + 12 <= size and len(fields) < 8192:
        n_dims, name_len, type_id = struct.unpack_from("<3I", data, pos)
        fields += [(pos, 4), (pos + 4, 4), (pos + 8, 4)]
        pos += 12
        if n_dims > 4 or pos + 4 * n_dims > size:
            break
        ne = struct.unpack_from(f"<{n_dims}I", data, pos)
        fields += [(pos + 4 * j, 4) for j in range(n_dims)]
        pos += 4 * n_dims + name_len
        if variant == "ggjt":
            pos += -pos % 32
        block = _LEGACY_BLOCKS.get(type_id)
        if block is None:
            break
        n = 1
        for d in ne:
            n *= d
        pos += n // block[0] * block[1]
    return [f for f in fields if f[0] + f[1] <= size]


def fuzz_seeds() -> list:
    from corpus.seeds import Seed

    def file(name: str, make: Callable[[], bytes]) -> Callable[[str], tuple[str, str]]:
        def build(d: str) -> tuple[str, str]:
            path = f"{d}/{name}"
            with open(path, "wb") as f:
                f.write(make())
            return path, path
        return build

    seeds = [Seed("gguf", "v3", file("m.gguf", tiny_gguf), gguf_int_fields),
             Seed("gguf", "v2-aligned-64", file("m.gguf", lambda: tiny_gguf(seed=1, version=2, alignment=64)),
                  gguf_int_fields)]
    for variant, version in (("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)):
        seeds.append(Seed("ggml", f"{variant}-v{version}",
                          file("m.bin", lambda v=variant, n=version: tiny_ggml(v, n)), ggml_int_fields))
    return seeds


def corpus_cases() -> list:
    """GGUF_CASES (read as .gguf, sniffed) and GGML_CASES (read as .bin, sniffed), with exact messages."""
    from corpus.make_corpus import Case as CorpusCase

    def build(case: Case, name: str) -> Callable[[str], tuple[str, str]]:
        def b(d: str) -> tuple[str, str]:
            path = f"{d}/{name}"
            with open(path, "wb") as f:
                f.write(case.data)
            return path, f"{path}: offset {case.offset}: {case.message}"
        return b

    return [CorpusCase("gguf", c.id, build(c, "m.gguf"), c.message) for c in GGUF_CASES] + \
        [CorpusCase("ggml", c.id, build(c, "m.bin"), c.message) for c in GGML_CASES] + \
        [CorpusCase("gguf", name, b, message) for name, b, message in _sparse_cases()]


def _sparse(head: bytes, size: int) -> Callable[[str], str]:
    """A file of ``size`` bytes starting with ``head``, the rest a hole (zeros that cost no disk)."""
    def build(d: str) -> str:
        path = f"{d}/m.gguf"
        with open(path, "wb") as f:
            f.write(head)
            f.truncate(size)
        return path
    return build


def _sparse_cases() -> list[tuple[str, Callable[[str], str], str]]:
    """Counts within the bytes of a large (sparse) file but over mconv's limits: 2^18+1 tensor infos,
    2^20+1 tokens (each would become a Python object)."""
    from mconv.core.limits import MAX_TENSORS, MAX_TOKENS

    n = MAX_TENSORS + 1
    tensors = b"GGUF" + struct.pack("<Iqq", 3, n, 0)
    n_tok = MAX_TOKENS + 1
    tokens = b"GGUF" + struct.pack("<Iqq", 3, 0, 1) + gstr("tokenizer.ggml.tokens") + \
        struct.pack("<iiQ", ARRAY, STRING, n_tok)
    return [
        ("tensor-count-over-limit", _sparse(tensors, 24 + 25 * n),
         f"offset 8: {n} tensors exceed mconv's limit of {MAX_TENSORS} per file"),
        ("token-array-over-limit", _sparse(tokens, len(tokens) + 8 * n_tok),
         f"offset {len(tokens) - 12}: array 'tokenizer.ggml.tokens' has {n_tok} string elements, over mconv's limit "
         f"of {MAX_TOKENS}"),
    ]
