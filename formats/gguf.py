"""GGUF v3 (reads v2 too): llama.cpp's model file (FORMATS.md G(a)).

Layout, little-endian::

    "GGUF" ; u32 version ; i64 n_tensors ; i64 n_kv
    n_kv x  { string key ; i32 value_type ; value }          string = u64 length + bytes
    n_tensors x { string name ; u32 n_dims ; i64 ne[n_dims] ; i32 ggml_type ; u64 offset }
    zero padding to ALIGN (general.alignment, u32, default 32)
    data: each tensor at data_start + offset, padded to ALIGN; offsets are the running padded sums

``ne`` is in ggml order (ne[0] = the contiguous axis), so numpy shapes are reversed.  The reader is
hardened: every count and length is bounded and checked against the bytes left before anything is
allocated, and each violation is a FormatError with the byte offset.  Tensor data stay in the file
(FileSlice over an mmap) until a writer or the executor asks for them.

The writer emits the header, all key/values and all tensor infos first (shapes and types are known
without touching data), then streams the tensors, each padded.  Its bytes depend only on the model.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from mconv.plugins import (
    LOSSY,
    WARNING,
    FileSlice,
    Format,
    FormatError,
    Loss,
    MconvError,
    Model,
    NameTable,
    ReadContext,
    Step,
    Tensor,
    Tokenizer,
    UnsupportedError,
    WriteContext,
    WriterOption,
    check_shape,
    check_tensor_count,
    hookimpl,
    resolve,
    table,
    write_padding,
    write_tensor,
)

from ._binary import Cursor, pad_to
from ._gguf_values import (
    ARRAY,
    BOOL,
    F32,
    F64,
    I32,
    STRING,
    TYPE_NAMES,
    U32,
    U64,
    infer_type,
    pack_kv,
    pack_string,
    read_string,
    read_value,
    text,
)
from ._ggml_types import dtype_for_ggml_type, ftype_label, ggml_type_for_dtype, llama_ftype_for

MAGIC = b"GGUF"
VERSION = 3
READ_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: GGML_MAX_NAME: a tensor name must be shorter than this (at most 63 bytes)
MAX_NAME = 64
MAX_DIMS = 4
#: GGML_QNT_VERSION, written as general.quantization_version
QUANTIZATION_VERSION = 2
INT64_MAX = (1 << 63) - 1

#: smallest key/value: key length + 1 key byte + value type + a 1-byte value
MIN_KV_BYTES = 8 + 1 + 4 + 1
#: smallest tensor info: name length + 1 name byte + n_dims + type + offset
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 4 + 8

KEY_ARCH = "general.architecture"
KEY_NAME = "general.name"
KEY_ALIGNMENT = "general.alignment"
KEY_FILE_TYPE = "general.file_type"
KEY_QNT_VERSION = "general.quantization_version"
TOK = "tokenizer.ggml."
KEY_TOK_MODEL = TOK + "model"
KEY_TOKENS = TOK + "tokens"
KEY_SCORES = TOK + "scores"
KEY_TOKEN_TYPE = TOK + "token_type"
KEY_MERGES = TOK + "merges"
KEY_BOS, KEY_EOS, KEY_UNK, KEY_PAD = (TOK + "bos_token_id", TOK + "eos_token_id", TOK + "unknown_token_id",
                                      TOK + "padding_token_id")
KEY_ADD_BOS, KEY_ADD_EOS = TOK + "add_bos_token", TOK + "add_eos_token"
SPECIAL_IDS = {"bos_id": KEY_BOS, "eos_id": KEY_EOS, "unk_id": KEY_UNK, "pad_id": KEY_PAD}
#: keys the reader turns into IR fields and the writer writes itself (never carried as metadata;
#: general.file_type is carried so that a rewrite keeps e.g. Q4_K_S when the tensors still match it)
OWN_KEYS = frozenset({KEY_ARCH, KEY_ALIGNMENT, KEY_QNT_VERSION, KEY_TOK_MODEL, KEY_TOKENS,
                      KEY_SCORES, KEY_TOKEN_TYPE, KEY_MERGES, KEY_BOS, KEY_EOS, KEY_UNK, KEY_PAD, KEY_ADD_BOS,
                      KEY_ADD_EOS})
#: llama.cpp defaults when a llama (SentencePiece) GGUF does not say
LLAMA_ADD_BOS, LLAMA_ADD_EOS = True, False
NO_VOCAB = "no_vocab"


def rope_dim_key(arch: str) -> str:
    return f"{arch}.rope.dimension_count"


# ==================================================================================================
# reading
# ==================================================================================================

@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int
    #: file offset of this tensor info (for messages)
    at: int


@dataclass
class Header:
    version: int
    kv: dict[str, Any]
    types: dict[str, int]           # key -> value type (ARRAY for arrays)
    elem_types: dict[str, int]      # array key -> element type
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    nested: list[str]


def read_header(path: str, buf: Any, size: int) -> Header:
    cur = Cursor(buf, size, path)
    if size < 4 or bytes(buf[:4]) != MAGIC:
        raise cur.error(f"not a GGUF file (magic {bytes(buf[:4])!r})", 0)
    cur.pos = 4
    version = cur.u32("version")
    if version not in READ_VERSIONS:
        if version & 0xFFFF == 0:
            raise cur.error(f"version field 0x{version:08x}: a big-endian GGUF file, which mconv does not read", 4)
        if version == 1:
            raise cur.error("GGUF version 1 is not supported (only versions 2 and 3)", 4)
        raise cur.error(f"unknown GGUF version {version} (mconv reads versions 2 and 3)", 4)
    n_tensors = cur.i64("tensor count")
    n_kv = cur.i64("key/value count")
    for count, what, minimum, at in ((n_tensors, "tensor count", MIN_TENSOR_INFO_BYTES, 8),
                                     (n_kv, "key/value count", MIN_KV_BYTES, 16)):
        if count < 0:
            raise cur.error(f"{what} {count} is negative", at)
        left = size - cur.pos
        if count * minimum > left:
            raise cur.error(f"{what} {count} needs at least {count * minimum} bytes but only {left} are left "
                            "in the file", at)
    try:
        check_tensor_count(n_tensors)
    except FormatError as e:
        raise e.at(path=path, offset=8)

    kv: dict[str, Any] = {}
    types: dict[str, int] = {}
    elem_types: dict[str, int] = {}
    key_at: dict[str, int] = {}
    nested: list[str] = []
    for _ in range(n_kv):
        at = cur.pos
        raw_key = read_string(cur, "key")
        if not raw_key:
            raise cur.error("empty key", at)
        key = text(raw_key)
        if key in kv:
            raise cur.error(f"duplicate key {key!r}", at)
        vtype = cur.i32(f"value type of {key!r}")
        if vtype not in TYPE_NAMES:
            raise cur.error(f"key {key!r} has unknown value type {vtype}", cur.pos - 4)
        if vtype == ARRAY:
            cur.need(4, f"element type of {key!r}")
            elem_types[key] = int(struct.unpack_from("<i", buf, cur.pos)[0])
            if elem_types[key] == ARRAY:
                nested.append(key)
        kv[key] = read_value(cur, vtype, key)
        types[key] = vtype
        key_at[key] = at

    alignment = DEFAULT_ALIGNMENT
    if KEY_ALIGNMENT in kv:
        if types[KEY_ALIGNMENT] != U32:
            raise cur.error(f"{KEY_ALIGNMENT} must be u32, not {TYPE_NAMES[types[KEY_ALIGNMENT]]}",
                            key_at[KEY_ALIGNMENT])
        alignment = int(kv[KEY_ALIGNMENT])
        if alignment == 0 or alignment & (alignment - 1):
            raise cur.error(f"{KEY_ALIGNMENT} {alignment} is not a nonzero power of two", key_at[KEY_ALIGNMENT])

    infos: list[TensorInfo] = []
    names: set[str] = set()
    for i in range(n_tensors):
        at = cur.pos
        raw_name = read_string(cur, f"name of tensor {i}")
        if len(raw_name) >= MAX_NAME:
            raise cur.error(f"tensor {i} has a name of {len(raw_name)} bytes; GGUF allows at most {MAX_NAME - 1}", at)
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise cur.error(f"tensor {i} has a name that is not UTF-8: {raw_name!r}", at)
        if name in names:
            raise cur.error(f"duplicate tensor name {name!r}", at)
        names.add(name)
        dims_at = cur.pos
        n_dims = cur.u32(f"dimension count of {name!r}")
        if n_dims > MAX_DIMS:
            raise cur.error(f"tensor {name!r} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}", dims_at)
        ne = cur.unpack(f"<{n_dims}q", f"dimensions of {name!r}") if n_dims else ()
        for j, d in enumerate(ne):
            if d < 0:
                raise cur.error(f"tensor {name!r} dimension {j} is negative ({d})", dims_at + 4 + 8 * j)
        elems = 1
        for d in ne:
            elems *= d
        if elems > INT64_MAX:
            raise cur.error(f"tensor {name!r} with ne {list(ne)} has {elems} elements, more than 2^63-1", dims_at)
        type_at = cur.pos
        type_id = cur.i32(f"type of {name!r}")
        try:
            dt = dtype_for_ggml_type(type_id, name)
        except MconvError as e:
            raise e.at(path=path, offset=type_at)
        cols = ne[0] if ne else 1
        if cols % dt.block_size:
            raise cur.error(f"tensor {name!r} has rows of {cols} elements, not a multiple of the {dt.name} block "
                            f"size {dt.block_size}", type_at)
        try:
            check_shape(tuple(int(d) for d in reversed(ne)), dt)
        except FormatError as e:
            raise cur.error(f"tensor {name!r}: {e.message}", dims_at)
        offset = cur.u64(f"offset of {name!r}")
        infos.append(TensorInfo(name, tuple(int(d) for d in ne), type_id, offset, at))

    data_start = pad_to(cur.pos, alignment)
    expected = 0
    for info in infos:
        if info.offset != expected:
            raise cur.error(f"tensor {info.name!r} has offset {info.offset}, expected {expected} (tensors must "
                            f"follow each other in info order, each padded to {alignment} bytes)", info.at)
        nbytes = _nbytes(info)
        end = data_start + info.offset + nbytes
        if end > size:
            raise cur.error(f"tensor {info.name!r} data ({nbytes} bytes at offset {data_start + info.offset}) runs "
                            f"past the end of the file ({size} bytes)", data_start + info.offset)
        expected += pad_to(nbytes, alignment)
    return Header(version, kv, types, elem_types, infos, alignment, data_start, nested)


def _nbytes(info: TensorInfo) -> int:
    dt = dtype_for_ggml_type(info.type_id, info.name)
    return dt.nbytes(tuple(reversed(info.ne))) if info.ne else dt.row_bytes(1)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (f32 via its shortest decimal, so 1e-5 reads back as 1e-05)."""
    if isinstance(value, np.float32):
        return float(str(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _typed(header: Header, key: str, vtype: int, elem: Optional[int] = None) -> Any:
    """The value of ``key`` if it has the given type, else a FormatError naming both types."""
    value = header.kv[key]
    got = header.types[key]
    ok = got == vtype and (elem is None or header.elem_types.get(key) == elem)
    if not ok:
        want = TYPE_NAMES[vtype] if elem is None else f"array of {TYPE_NAMES[elem]}"
        have = TYPE_NAMES[got] if got != ARRAY else f"array of {TYPE_NAMES.get(header.elem_types[key], '?')}"
        raise FormatError(f"{key} must be {want}, not {have}")
    return value


def _read_tokenizer(header: Header, model: Model) -> Optional[Tokenizer]:
    kv = header.kv
    if KEY_TOK_MODEL not in kv:
        return None
    kind = _typed(header, KEY_TOK_MODEL, STRING)
    if KEY_TOKENS not in kv:
        if kind in (NO_VOCAB, "none"):
            return None
        raise FormatError(f"{KEY_TOK_MODEL} is {kind!r} but {KEY_TOKENS} is missing")
    tokens = tuple(t.encode("utf-8", errors="surrogateescape") for t in _typed(header, KEY_TOKENS, ARRAY, STRING))
    n = len(tokens)
    if KEY_SCORES in kv:
        if header.elem_types.get(KEY_SCORES) == I32:  # llama.cpp accepts i32 scores too
            scores = np.asarray(kv[KEY_SCORES], dtype=np.float32)
        else:
            scores = np.asarray(_typed(header, KEY_SCORES, ARRAY, F32), dtype=np.float32)
    else:
        scores = np.zeros(n, np.float32)
    types = (np.asarray(_typed(header, KEY_TOKEN_TYPE, ARRAY, I32), dtype=np.int32) if KEY_TOKEN_TYPE in kv
             else np.ones(n, np.int32))
    for key, arr in ((KEY_SCORES, scores), (KEY_TOKEN_TYPE, types)):
        if arr.shape != (n,):
            raise FormatError(f"{key} has {arr.size} elements for {n} tokens")
    ids: dict[str, Optional[int]] = {}
    for field, key in SPECIAL_IDS.items():
        ids[field] = None
        if key in kv:
            value = kv[key]
            if not isinstance(value, np.integer):
                raise FormatError(f"{key} must be an integer, not {TYPE_NAMES[header.types[key]]}")
            if 0 <= int(value) < n:
                ids[field] = int(value)
            else:
                model.history.append(Step("note", f"{key} = {int(value)} is not a token id below {n}; ignored"))
    flags: dict[str, Optional[bool]] = {}
    for field, key in (("add_bos", KEY_ADD_BOS), ("add_eos", KEY_ADD_EOS)):
        flags[field] = bool(_typed(header, key, BOOL)) if key in kv else None
    merges = tuple(_typed(header, KEY_MERGES, ARRAY, STRING)) if KEY_MERGES in kv else None
    return Tokenizer(model=kind, tokens=tokens, scores=scores, token_types=types, merges=merges, **ids, **flags)


def _type_notes(header: Header, names: NameTable, arch: str) -> list[str]:
    """Keys whose type llama.cpp would refuse (it enforces types exactly)."""
    notes = []
    want = {names.hparam_key(spec.key, "gguf"): spec.gguf_type for spec in names.hparams if spec.gguf_type}
    want[rope_dim_key(arch)] = "u32"
    for key, spec_type in want.items():
        if key in header.types and TYPE_NAMES[header.types[key]] != spec_type:
            notes.append(f"{key} is {TYPE_NAMES[header.types[key]]}; llama.cpp requires {spec_type} and will "
                         "refuse to load this file")
    for key in header.nested:
        notes.append(f"{key} is an array of arrays, which llama.cpp's GGUF reader rejects")
    return notes


def read_gguf(path: str, ctx: ReadContext) -> Model:
    mapped = ctx.cache.get(path)
    header = read_header(path, mapped.buffer, mapped.size)
    kv = header.kv
    if KEY_ARCH not in kv:
        raise FormatError(f"{KEY_ARCH} is missing")
    arch = _typed(header, KEY_ARCH, STRING)
    try:
        names = table(arch)
    except MconvError:
        raise UnsupportedError(f"architecture {arch!r} is not supported") from None

    tensors: dict[str, Tensor] = {}
    model = Model(arch=arch, hparams={}, tensors=tensors, format="gguf", files=(os.path.abspath(path),),
                  cache=ctx.cache)
    for info in header.tensors:
        dt = dtype_for_ggml_type(info.type_id, info.name)
        shape = tuple(reversed(info.ne))
        if names.is_ignored(info.name, "gguf"):
            model.history.append(Step("drop", f"{info.name}: not a weight mconv's {arch} graph uses"))
            continue
        cols = shape[-1] if shape else 1
        rows = 1
        for d in shape[:-1]:
            rows *= d
        tensors[info.name] = Tensor(info.name, shape, dt,
                                    FileSlice(mapped, header.data_start + info.offset, rows, dt.row_bytes(cols)))

    plain = {k: _plain(v) for k, v in kv.items() if not isinstance(v, (list, np.ndarray))}
    stored = names.hparams_from(plain, "gguf", "gguf metadata")
    resolve(model, names, [("gguf metadata", stored)], ctx.hparams)
    rope_key = rope_dim_key(arch)
    if rope_key in plain and "n_embd" in model.hparams and model.hparams.get("n_head"):
        head_dim = model.hparams["n_embd"] // model.hparams["n_head"]
        if plain[rope_key] != head_dim:
            raise UnsupportedError(f"{rope_key} is {plain[rope_key]} but the head size is {head_dim}; "
                                   "partial rotary embeddings are not supported")
    model.tokenizer = _read_tokenizer(header, model)
    own = OWN_KEYS | {names.hparam_key(spec.key, "gguf") for spec in names.hparams} | {rope_key}
    model.metadata = {k: v for k, v in kv.items() if k not in own}
    version = f"GGUF v{header.version}"
    if KEY_FILE_TYPE in kv and isinstance(kv[KEY_FILE_TYPE], np.integer):
        version += f", file type {ftype_label(int(kv[KEY_FILE_TYPE]))}"
    model.history.append(Step("format", version))
    for note in _type_notes(header, names, arch):
        model.history.append(Step("note", note))
    narrow_1d = [t.name for t in tensors.values() if len(t.shape) <= 1 and t.dtype.name in ("f16", "bf16")]
    if narrow_1d:
        model.history.append(Step("note", f"{len(narrow_1d)} 1-D tensor(s) such as {narrow_1d[0]} are not f32; "
                                  "llama.cpp aborts on them (mconv writes them as f32)"))
    return model


# ==================================================================================================
# writing
# ==================================================================================================

_HPARAM_TYPES = {"u32": U32, "i32": I32, "f32": F32, "u64": U64, "f64": F64, "bool": BOOL, "string": STRING}


def _hparam_kvs(model: Model) -> list[tuple[str, int, Any]]:
    names = table(model.arch)
    hp = model.hparams
    out = []
    for spec in names.hparams:
        key = names.hparam_key(spec.key, "gguf")
        if key is None or spec.key not in hp:
            continue
        out.append((key, _HPARAM_TYPES[spec.gguf_type or ("u32" if spec.type == "int" else "f32")], hp[spec.key]))
    if hp.get("n_embd") and hp.get("n_head"):
        # llama.cpp requires the rotary dimension to be the head size for llama
        out.append((rope_dim_key(model.arch), U32, hp["n_embd"] // hp["n_head"]))
    return out


def _tokenizer_kvs(tok: Optional[Tokenizer]) -> list[tuple[str, int, Any]]:
    if tok is None:
        return [(KEY_TOK_MODEL, STRING, NO_VOCAB)]
    out: list[tuple[str, int, Any]] = [
        (KEY_TOK_MODEL, STRING, tok.model),
        (KEY_TOKENS, ARRAY, list(tok.tokens)),
        (KEY_SCORES, ARRAY, np.asarray(tok.scores, dtype=np.float32)),
        (KEY_TOKEN_TYPE, ARRAY, np.asarray(tok.token_types, dtype=np.int32)),
    ]
    if tok.merges is not None:
        out.append((KEY_MERGES, ARRAY, list(tok.merges)))
    for field, key in SPECIAL_IDS.items():
        ident = getattr(tok, field)
        if ident is not None:
            out.append((key, U32, int(ident)))
    add_bos, add_eos = tok.add_bos, tok.add_eos
    if tok.model == "llama":
        add_bos = LLAMA_ADD_BOS if add_bos is None else add_bos
        add_eos = LLAMA_ADD_EOS if add_eos is None else add_eos
    if add_bos is not None:
        out.append((KEY_ADD_BOS, BOOL, bool(add_bos)))
    if add_eos is not None:
        out.append((KEY_ADD_EOS, BOOL, bool(add_eos)))
    return out


def model_name(model: Model, final_path: str) -> str:
    name = model.metadata.get(KEY_NAME)
    if isinstance(name, str) and name:
        return name
    base = os.path.basename(final_path.rstrip("/")) or "model"
    return os.path.splitext(base)[0] or base


def build_kvs(model: Model, ctx: WriteContext) -> list[tuple[str, int, Any]]:
    """Every key/value of the output, in writing order."""
    alignment: int = ctx.options.get("alignment", DEFAULT_ALIGNMENT)
    ftype = llama_ftype_for(((t.dtype, t.numel, len(t.shape)) for t in model.tensors.values()), ctx.dtype,
                            model.metadata.get(KEY_FILE_TYPE))
    kvs: list[tuple[str, int, Any]] = [(KEY_ARCH, STRING, model.arch),
                                       (KEY_NAME, STRING, model_name(model, ctx.final_path))]
    if alignment != DEFAULT_ALIGNMENT:
        kvs.append((KEY_ALIGNMENT, U32, alignment))
    kvs += [(KEY_FILE_TYPE, U32, ftype), (KEY_QNT_VERSION, U32, QUANTIZATION_VERSION)]
    kvs += _hparam_kvs(model)
    kvs += _tokenizer_kvs(model.tokenizer)
    written = {k for k, _, _ in kvs}
    names = table(model.arch)
    own = OWN_KEYS | {names.hparam_key(spec.key, "gguf") for spec in names.hparams} | {rope_dim_key(model.arch),
                                                                                        KEY_FILE_TYPE}
    for key, value in model.metadata.items():
        if key in written or key in own or value is None:
            continue
        vtype, norm = infer_type(value)
        kvs.append((key, vtype, norm))
    return kvs


def _tensor_info(t: Tensor, offset: int) -> bytes:
    ne = tuple(reversed(t.shape))
    return (pack_string(t.name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne)
            + struct.pack("<iQ", ggml_type_for_dtype(t.dtype), offset))


def check_writable(model: Model) -> None:
    """Refusals that are not losses: what llama.cpp would abort on or GGUF cannot encode."""
    for t in model.tensors.values():
        if len(t.name.encode("utf-8")) >= MAX_NAME:
            raise UnsupportedError(f"tensor name of {len(t.name.encode('utf-8'))} bytes; GGUF allows at most "
                                   f"{MAX_NAME - 1}", tensor=t.name)
        if len(t.shape) > MAX_DIMS:
            raise UnsupportedError(f"{len(t.shape)} dimensions; GGUF allows at most {MAX_DIMS}", tensor=t.name)
        ggml_type_for_dtype(t.dtype)
    tok = model.tokenizer
    if tok is not None:
        dups = tok.duplicates()
        if dups:
            raise UnsupportedError(f"the vocabulary has {len(dups)} duplicate token(s), e.g. {dups[0]!r}; "
                                   "llama.cpp aborts on duplicate tokens")
        emb = model.tensors.get("token_embd.weight")
        if emb is not None and emb.shape and len(tok) != emb.shape[0]:
            raise UnsupportedError(f"the vocabulary has {len(tok)} tokens but token_embd.weight has "
                                   f"{emb.shape[0]} rows; llama.cpp requires them to be equal")


def write_gguf(model: Model, path: str, ctx: WriteContext) -> None:
    check_writable(model)
    alignment: int = ctx.options.get("alignment", DEFAULT_ALIGNMENT)
    kvs = build_kvs(model, ctx)
    tensors = list(model.tensors.values())
    head = bytearray(MAGIC + struct.pack("<IQQ", VERSION, len(tensors), len(kvs)))
    for key, vtype, value in kvs:
        head += pack_kv(key, vtype, value)
    offset = 0
    for t in tensors:
        head += _tensor_info(t, offset)
        offset += pad_to(t.nbytes, alignment)
    with open(path, "wb") as f:
        f.write(head)
        write_padding(f, alignment)
        for t in tensors:
            write_tensor(f, t, ctx.progress)
            write_padding(f, alignment)


def _parse_alignment(text: str) -> int:
    n = int(text)
    if n <= 0 or n & (n - 1):
        raise ValueError("alignment must be a nonzero power of two")
    return n


class GGUFFormat(Format):
    name = "gguf"
    extensions = (".gguf",)
    description = "GGUF v3 (llama.cpp, ollama, LM Studio); reads v2 too"
    dtypes = frozenset({"f32", "f16", "bf16", "f64", "i8", "i16", "i32", "i64", "q8_0", "q4_0", "q4_1", "q5_0",
                        "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"})
    #: llama.cpp multiplies activations by 1-D weights (norms) only in f32: f16/bf16 ones abort it
    #: ("binary_op: unsupported types"), so they are widened, as llama.cpp's converters do
    dtypes_1d = dtypes - {"f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k",
                          "q6_k"}
    writer_options = {
        "alignment": WriterOption("alignment", _parse_alignment, DEFAULT_ALIGNMENT,
                                  "data alignment in bytes (a power of two; written as general.alignment)"),
    }

    def sniff(self, path: str, head: bytes, size: int, is_dir: bool) -> float:
        return 1.0 if not is_dir and head[:4] == MAGIC else 0.0

    def read(self, path: str, ctx: ReadContext) -> Model:
        return read_gguf(path, ctx)

    def write(self, model: Model, path: str, ctx: WriteContext) -> None:
        write_gguf(model, path, ctx)

    def plan_losses(self, model: Model, ctx: WriteContext) -> list[Loss]:
        check_writable(model)
        losses = []
        if model.tokenizer is None:
            losses.append(Loss("tokenizer", "(none)", f"GGUF needs a vocabulary; {KEY_TOK_MODEL} will be "
                               f"{NO_VOCAB!r} and llama.cpp cannot tokenize text with it", LOSSY))
        for key, value in model.metadata.items():
            if isinstance(value, dict):
                losses.append(Loss("metadata", key, "stored as a JSON string", WARNING))
        return losses

    def notes(self, model: Model) -> list[str]:
        return [s.detail for s in model.history if s.kind == "note"]


@hookimpl
def register_formats(register: Callable[[object], None]) -> None:
    register(GGUFFormat)
