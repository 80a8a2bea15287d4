"""Legacy pre-GGUF llama files: reads unversioned 'ggml', 'ggmf' v1 and 'ggjt' v1/v2/v3; writes
ggjt v3, the last version (llama.cpp until August 2023, llama-cpp-python <= 0.1.78).  FORMATS.md G(b).

Layout, little-endian::

    u32 magic ; [u32 version]                          ggmf/ggjt only
    7 x u32 hparams: n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
    n_vocab x { u32 len ; len bytes ; f32 score }       no score in unversioned 'ggml'
    until EOF, per tensor:
        u32 n_dims ; u32 name_len ; u32 ggml_type ; u32 ne[n_dims] ; name
        ggjt: zero padding to an ABSOLUTE file offset that is a multiple of 32
        data (no padding after it)

n_ff is not stored: the loader derives it from n_embd and n_mult, so the writer must find an n_mult
that reproduces it.  n_head_kv, norm_eps, rope_theta and the context length are not stored either:
a loader is told them at load time (llama-cpp-python 0.1.78: n_gqa, rms_norm_eps, rope_freq_base,
n_ctx).  The vocabulary uses the legacy text conventions of the old convert.py (raw bytes for byte
tokens, " ⁇ " for <unk>, empty control tokens, spaces instead of "▁"); the reader maps them to the IR
spelling and the writer back.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Callable, Optional

import numpy as np

from mconv.plugins import (
    LOSSY,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    WARNING,
    FileSlice,
    Format,
    FormatError,
    Loss,
    MconvError,
    Model,
    ReadContext,
    Step,
    Tensor,
    Tokenizer,
    UnsupportedError,
    WriteContext,
    check_shape,
    check_tensor_count,
    check_token_count,
    hookimpl,
    resolve,
    table,
    write_padding,
    write_tensor,
)

from ._binary import Cursor, pad_to
from ._ggml_types import (
    GGML_TYPE_NAMES,
    dtype_for_ggml_type,
    ftype_label,
    ggml_type_for_dtype,
    ggml_type_label,
    llama_ftype_for,
)

MAGIC_GGML, MAGIC_GGMF, MAGIC_GGJT = 0x67676D6C, 0x67676D66, 0x67676A74
VARIANTS = {MAGIC_GGML: "ggml", MAGIC_GGMF: "ggmf", MAGIC_GGJT: "ggjt"}
VERSIONS = {"ggmf": (1,), "ggjt": (1, 2, 3)}
WRITE_VERSION = 3
#: ggjt aligns each tensor's data to an absolute file offset that is a multiple of this
ALIGNMENT = 32
HPARAM_FIELDS = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
#: the tensor types ggjt-era llama.cpp loads (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)
LEGACY_TYPES = frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14})
MAX_DIMS = 4

#: the legacy spelling of the unknown token (old convert.py: " \u2047 ")
UNK_TEXT = " \u2047 ".encode("utf-8")
SPACE_IR = "\u2581".encode("utf-8")
#: ids the legacy vocabulary gives the specials (SentencePiece llama layout)
LEGACY_SPECIALS = {0: (b"<unk>", TOKEN_UNKNOWN), 1: (b"<s>", TOKEN_CONTROL), 2: (b"</s>", TOKEN_CONTROL)}
#: byte tokens <0x00>..<0xFF> sit at ids 3..258 in the llama layout
BYTE_IDS = range(3, 259)
#: the hparam ftype is kept as GGUF's key, so ggjt -> GGUF keeps the file type
KEY_FILE_TYPE = "general.file_type"

#: llama-cpp-python 0.1.78 keyword arguments for what ggjt cannot store
LOADER_KWARGS = {"n_ctx": "n_ctx", "n_head_kv": "n_gqa", "norm_eps": "rms_norm_eps", "rope_theta": "rope_freq_base"}

#: the old convert.py's tensor order: canonical names, per-block ones with {bid}
WRITE_ORDER_TOP = ("token_embd.weight", "output_norm.weight", "output.weight")
WRITE_ORDER_BLOCK = ("attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "ffn_gate", "ffn_down", "ffn_up",
                     "ffn_norm")


# ==================================================================================================
# n_ff <-> n_mult
# ==================================================================================================

def _ffn_base(n_embd: int, n_head: int, n_head_kv: int, n_layer: int) -> int:
    """ggjt-era llama.cpp: n_ff_raw = 2*(4*n_embd)/3 in integers, scaled by f_ffn_mult = 1.3f for the
    70B shape (n_gqa == 8 and 80 layers), truncated to u32."""
    base = 2 * (4 * n_embd) // 3
    if n_layer == 80 and n_head_kv and n_head // n_head_kv == 8:
        base = int(np.float32(1.3) * np.float32(base))
    return base


def legacy_n_ff(n_embd: int, n_mult: int, n_head: int, n_head_kv: int, n_layer: int) -> int:
    base = _ffn_base(n_embd, n_head, n_head_kv, n_layer)
    return -(-base // n_mult) * n_mult


def find_n_mult(hp: dict[str, Any]) -> int:
    """The largest n_mult in 8192..2 that makes the loader derive n_ff (the old convert.py's search)."""
    n_embd, n_ff = hp["n_embd"], hp["n_ff"]
    args = (hp["n_head"], hp.get("n_head_kv", hp["n_head"]), hp["n_layer"])
    for m in range(8192, 1, -1):
        if legacy_n_ff(n_embd, m, *args) == n_ff:
            return m
    base = _ffn_base(n_embd, *args)
    raise UnsupportedError(f"n_ff {n_ff} cannot be stored in ggjt: ggjt-era llama.cpp derives n_ff as "
                           f"ceil({base} / n_mult) * n_mult from n_embd {n_embd}, and no n_mult from 2 to 8192 "
                           f"gives {n_ff}")


# ==================================================================================================
# vocabulary conventions
# ==================================================================================================

def legacy_to_ir(ident: int, text: bytes) -> tuple[bytes, int]:
    """A legacy vocabulary entry -> (IR spelling, GGUF token type), as convert_llama_ggml_to_gguf.py
    maps them, except that ids 0-2 are renamed only when they hold the legacy special spelling."""
    if ident in LEGACY_SPECIALS and text in (UNK_TEXT, b"", LEGACY_SPECIALS[ident][0]):
        return LEGACY_SPECIALS[ident]
    if text == UNK_TEXT:
        return b"<unk>", TOKEN_UNKNOWN
    if not text:
        return b"", TOKEN_CONTROL
    if ident in BYTE_IDS and len(text) == 1:
        return f"<0x{text[0]:02X}>".encode("ascii"), TOKEN_BYTE
    return text.replace(b" ", SPACE_IR), TOKEN_NORMAL


def _byte_token(piece: bytes) -> Optional[int]:
    if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def ir_to_legacy(piece: bytes, kind: int) -> bytes:
    """The old convert.py's spelling: unknown -> " ⁇ ", control -> "", byte <0xHH> -> the raw byte,
    otherwise "▁" -> " "."""
    if kind == TOKEN_UNKNOWN:
        return UNK_TEXT
    if kind == TOKEN_CONTROL:
        return b""
    if kind == TOKEN_BYTE:
        value = _byte_token(piece)
        if value is not None:
            return bytes([value])
    return piece.replace(SPACE_IR, b" ")


def vocab_round_trip(tok: Tokenizer) -> tuple[list[int], list[int]]:
    """(ids whose text would read back differently, ids whose token type would), for the loss report."""
    texts, kinds = [], []
    for i, (piece, kind) in enumerate(zip(tok.tokens, tok.token_types.tolist())):
        back, back_kind = legacy_to_ir(i, ir_to_legacy(piece, kind))
        if back != piece:
            texts.append(i)
        elif back_kind != kind:
            kinds.append(i)
    return texts, kinds


# ==================================================================================================
# reading
# ==================================================================================================

def _read_vocab(cur: Cursor, n_vocab: int, with_scores: bool, hp_at: int) -> Tokenizer:
    entry_min = 8 if with_scores else 4
    if n_vocab * entry_min > cur.left:
        raise cur.error(f"n_vocab {n_vocab} needs at least {n_vocab * entry_min} bytes of vocabulary but only "
                        f"{cur.left} are left in the file", hp_at)
    try:
        check_token_count(n_vocab)
    except FormatError as e:
        raise e.at(path=cur.path, offset=hp_at)
    tokens, scores, kinds = [], np.zeros(n_vocab, np.float32), np.zeros(n_vocab, np.int32)
    for i in range(n_vocab):
        at = cur.pos
        n = cur.u32(f"length of token {i}")
        text = cur.take(n, f"token {i}", at)
        if with_scores:
            scores[i] = cur.unpack("<f", f"score of token {i}")[0]
        piece, kinds[i] = legacy_to_ir(i, text)
        tokens.append(piece)
    specials = {field: i for field, i in (("unk_id", 0), ("bos_id", 1), ("eos_id", 2))
                if i < n_vocab and tokens[i] == LEGACY_SPECIALS[i][0]}
    return Tokenizer(model="llama", tokens=tuple(tokens), scores=scores, token_types=kinds, **specials)


def _read_tensors(cur: Cursor, mapped: Any, variant: str, version: int) -> list[tuple[str, Tensor]]:
    out: list[tuple[str, Tensor]] = []
    seen: set[str] = set()
    label = f"{variant} v{version}" if variant != "ggml" else "unversioned ggml"
    while cur.pos < cur.size:
        at = cur.pos
        n_dims, name_len, type_id = cur.unpack("<3I", "tensor header")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.error(f"tensor header has {n_dims} dimensions (1 to {MAX_DIMS} allowed)", at)
        ne = cur.unpack(f"<{n_dims}I", "tensor dimensions")
        raw_name = cur.take(name_len, "tensor name", at)
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise cur.error(f"tensor name {raw_name[:64]!r} is not UTF-8", at)
        if not name:
            raise cur.error("empty tensor name", at)
        if name in seen:
            raise cur.error(f"duplicate tensor name {name!r}", at)
        seen.add(name)
        if type_id > 1 and (variant != "ggjt" or version < 3):
            raise cur.error(f"tensor {name!r} is {ggml_type_label(type_id)} in a {label} file: quantized blocks "
                            "before ggjt v3 have another layout (f32 scales; before ggjt v2 also interleaved "
                            "nibbles), which mconv does not read; convert from unquantized weights instead", at)
        if type_id not in LEGACY_TYPES:
            if type_id in GGML_TYPE_NAMES:
                raise cur.error(f"tensor {name!r} has ggml type {ggml_type_label(type_id)} ({type_id}), which "
                                f"{label} files do not hold", at)
            raise cur.error(f"tensor {name!r} has unknown ggml type {type_id}", at)
        try:
            dt = dtype_for_ggml_type(type_id, name)
        except MconvError as e:
            raise e.at(path=cur.path, offset=at)
        if ne[0] % dt.block_size:
            raise cur.error(f"tensor {name!r} has rows of {ne[0]} elements, not a multiple of the {dt.name} block "
                            f"size {dt.block_size}", at)
        shape = tuple(int(d) for d in reversed(ne))
        try:
            check_shape(shape, dt)
            check_tensor_count(len(out) + 1)
        except FormatError as e:
            raise cur.error(f"tensor {name!r}: {e.message}", at)
        if variant == "ggjt":
            cur.pos = min(pad_to(cur.pos, ALIGNMENT), cur.size)
        rows = 1
        for d in shape[:-1]:
            rows *= d
        nbytes = rows * dt.row_bytes(shape[-1])
        if nbytes > cur.left:
            raise cur.error(f"tensor {name!r} data ({nbytes} bytes at offset {cur.pos}) runs past the end of the "
                            f"file ({cur.size} bytes)")
        out.append((name, Tensor(name, shape, dt, FileSlice(mapped, cur.pos, rows, dt.row_bytes(shape[-1])))))
        cur.pos += nbytes
    return out


def read_ggml(path: str, ctx: ReadContext) -> Model:
    mapped = ctx.cache.get(path)
    cur = Cursor(mapped.buffer, mapped.size, path)
    magic = cur.u32("magic")
    if magic not in VARIANTS:
        raise cur.error(f"not a ggml/ggmf/ggjt file (magic 0x{magic:08x})", 0)
    variant = VARIANTS[magic]
    version = 0
    if variant in VERSIONS:
        version = cur.u32("version")
        if version not in VERSIONS[variant]:
            raise cur.error(f"unknown {variant} version {version} (known: "
                            f"{', '.join(map(str, VERSIONS[variant]))})", 4)
    hp_at = cur.pos
    values = dict(zip(HPARAM_FIELDS, cur.unpack("<7I", "hparams")))
    tok = _read_vocab(cur, values["n_vocab"], with_scores=variant != "ggml", hp_at=hp_at)
    names = table("llama")
    tensors: dict[str, Tensor] = {}
    for name, t in _read_tensors(cur, mapped, variant, version):
        canonical = names.to_canonical(name, "ggml") or name
        if canonical in tensors:
            raise FormatError(f"two tensors map to {canonical!r}", path=path, tensor=name)
        tensors[canonical] = t.with_name(canonical)

    model = Model(arch="llama", hparams={}, tensors=tensors, tokenizer=tok, format="ggml",
                  files=(os.path.abspath(path),), cache=ctx.cache, metadata={KEY_FILE_TYPE: values["ftype"]})
    label = f"{variant} v{version}" if version else "unversioned ggml"
    model.history.append(Step("format", f"{label}, ftype {ftype_label(values['ftype'])}"))
    stored = {k: values[k] for k in ("n_vocab", "n_embd", "n_head", "n_layer")}
    resolve(model, names, [(f"{variant} header", stored)], ctx.hparams)
    hp = model.hparams
    if all(k in hp for k in ("n_embd", "n_head", "n_head_kv", "n_layer", "n_ff")) and values["n_mult"]:
        derived = legacy_n_ff(hp["n_embd"], values["n_mult"], hp["n_head"], hp["n_head_kv"], hp["n_layer"])
        if derived != hp["n_ff"]:
            model.history.append(Step("note", f"n_mult {values['n_mult']} makes ggjt-era llama.cpp expect n_ff "
                                      f"{derived}, but the tensors have n_ff {hp['n_ff']}"))
    if hp.get("n_head") and values["n_rot"] != hp["n_embd"] // hp["n_head"]:
        model.history.append(Step("note", f"n_rot {values['n_rot']} differs from the head size "
                                  f"{hp['n_embd'] // hp['n_head']} (loaders ignore n_rot)"))
    if variant == "ggml":
        model.history.append(Step("note", "unversioned 'ggml' file: llama-cpp-python 0.1.70 and later misread it "
                                  "(they expect token scores); 0.1.65 and older load it"))
    elif variant != "ggjt" or version < 3:
        model.history.append(Step("note", f"{label} file: late ggjt-era loaders (llama-cpp-python 0.1.78) load it "
                                  "only because its tensors are F32/F16"))
    return model


# ==================================================================================================
# writing
# ==================================================================================================

def ordered_tensors(model: Model) -> list[tuple[str, Tensor]]:
    """(ggml name, tensor) in the old convert.py's order; a tied model gets output.weight from
    token_embd.weight (ggjt-era llama.cpp requires it)."""
    names = table(model.arch)
    canonical = list(WRITE_ORDER_TOP)
    for b in range(model.hparams["n_layer"]):
        canonical += [f"blk.{b}.{t}.weight" for t in WRITE_ORDER_BLOCK]
    out = []
    for c in canonical:
        t = model.tensors.get(c)
        if t is None and c == "output.weight":
            t = model.tensors.get("token_embd.weight")
        if t is None:
            raise UnsupportedError(f"ggjt needs tensor {c}, which the model lacks", tensor=c)
        ggml_name = names.from_canonical(c, "ggml")
        assert ggml_name is not None
        out.append((ggml_name, t))
    extra = [n for n in model.tensors if n not in canonical]
    if extra:
        raise UnsupportedError(f"ggjt has no place for tensor {extra[0]}", tensor=extra[0])
    return out


def _vocab_bytes(model: Model) -> bytes:
    tok = model.tokenizer
    n_vocab = model.hparams["n_vocab"]
    if tok is None:
        return b"".join(struct.pack("<If", 0, 0.0) for _ in range(n_vocab))
    parts = []
    for piece, kind, score in zip(tok.tokens, tok.token_types.tolist(), tok.scores.tolist()):
        text = ir_to_legacy(piece, kind)
        parts.append(struct.pack("<I", len(text)) + text + struct.pack("<f", score))
    return b"".join(parts)


def header_bytes(model: Model, request: Optional[str] = None) -> bytes:
    hp = model.hparams
    ftype = llama_ftype_for(((t.dtype, t.numel, len(t.shape)) for t in model.tensors.values()), request,
                            model.metadata.get(KEY_FILE_TYPE))
    fields = (hp["n_vocab"], hp["n_embd"], find_n_mult(hp), hp["n_head"], hp["n_layer"], hp["n_embd"] // hp["n_head"],
              ftype)
    return struct.pack("<II7I", MAGIC_GGJT, WRITE_VERSION, *fields) + _vocab_bytes(model)


def check_writable(model: Model) -> None:
    hp = model.hparams
    find_n_mult(hp)
    tok = model.tokenizer
    if tok is not None:
        if tok.model != "llama":
            raise UnsupportedError(f"ggjt holds only SentencePiece (llama) vocabularies, not {tok.model!r}")
        if len(tok) != hp["n_vocab"]:
            raise UnsupportedError(f"the vocabulary has {len(tok)} tokens but n_vocab is {hp['n_vocab']}")
    for name, t in ordered_tensors(model):
        if len(t.shape) > 2:
            raise UnsupportedError(f"{len(t.shape)} dimensions; ggjt tensors have 1 or 2", tensor=name)
        ggml_type_for_dtype(t.dtype)


def write_ggjt(model: Model, path: str, ctx: WriteContext) -> None:
    check_writable(model)
    with open(path, "wb") as f:
        f.write(header_bytes(model, ctx.dtype))
        for name, t in ordered_tensors(model):
            raw_name = name.encode("utf-8")
            ne = tuple(reversed(t.shape))
            f.write(struct.pack(f"<3I{len(ne)}I", len(ne), len(raw_name), ggml_type_for_dtype(t.dtype), *ne))
            f.write(raw_name)
            write_padding(f, ALIGNMENT)
            write_tensor(f, t, ctx.progress)


def loader_call(hp: dict[str, Any]) -> str:
    """How llama-cpp-python 0.1.78 must be called for these hparams."""
    args = []
    if "n_ctx" in hp:
        args.append(f"n_ctx={hp['n_ctx']}")
    if hp.get("n_head") and hp.get("n_head_kv"):
        args.append(f"n_gqa={hp['n_head'] // hp['n_head_kv']}")
    if "norm_eps" in hp:
        args.append(f"rms_norm_eps={hp['norm_eps']!r}")
    if "rope_theta" in hp:
        args.append(f"rope_freq_base={hp['rope_theta']!r}")
    return f"Llama(path, {', '.join(args)})"


class GGMLFormat(Format):
    name = "ggml"
    aliases = ("ggjt",)
    extensions = ()
    description = "legacy llama.cpp files: reads ggml, ggmf v1, ggjt v1-v3; writes ggjt v3"
    dtypes = frozenset({"f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k",
                        "q6_k"})
    #: ggjt-era llama.cpp multiplies by 1-D weights (norms) only in f32: f16 ones give garbage logits
    #: (checked with llama-cpp-python 0.1.78), and the old convert.py always wrote them as f32
    dtypes_1d = frozenset({"f32"})
    stored_hparams = frozenset({"n_vocab", "n_embd", "n_head", "n_layer", "n_ff"})
    load_time_hparams = {
        "n_head_kv": "n_gqa = n_head / n_head_kv (llama-cpp-python 0.1.78: Llama(n_gqa=...))",
        "norm_eps": "rms_norm_eps (llama-cpp-python 0.1.78: Llama(rms_norm_eps=...); its default is 5e-6)",
        "rope_theta": "rope_freq_base (llama-cpp-python 0.1.78: Llama(rope_freq_base=...))",
        "n_ctx": "n_ctx (llama-cpp-python 0.1.78: Llama(n_ctx=...))",
    }
    stores_metadata = False

    def sniff(self, path: str, head: bytes, size: int, is_dir: bool) -> float:
        if is_dir or len(head) < 4:
            return 0.0
        return 1.0 if struct.unpack("<I", head[:4])[0] in VARIANTS else 0.0

    def read(self, path: str, ctx: ReadContext) -> Model:
        return read_ggml(path, ctx)

    def write(self, model: Model, path: str, ctx: WriteContext) -> None:
        write_ggjt(model, path, ctx)

    def accepts_tensor(self, canonical: str) -> bool:
        return table("llama").from_canonical(canonical, "ggml") is not None

    def plan_losses(self, model: Model, ctx: WriteContext) -> list[Loss]:
        check_writable(model)
        losses = [Loss("loader", "llama-cpp-python 0.1.78", f"load with {loader_call(model.hparams)}", WARNING)]
        if "output.weight" not in model.tensors:
            losses.append(Loss("tensor", "output.weight", "ggjt has no tied embeddings; token_embd.weight is "
                               "stored a second time as output.weight", WARNING))
        tok = model.tokenizer
        if tok is None:
            losses.append(Loss("tokenizer", "(none)", f"ggjt needs a vocabulary; {model.hparams['n_vocab']} empty "
                               "tokens will be written", LOSSY))
            return losses
        texts, kinds = vocab_round_trip(tok)
        if texts:
            i = texts[0]
            losses.append(Loss("tokenizer", f"({len(texts)} tokens)", "the legacy vocabulary conventions cannot "
                               f"represent them, e.g. token {i} {tok.tokens[i]!r}", LOSSY))
        if kinds:
            losses.append(Loss("tokenizer", f"({len(kinds)} tokens)", "ggjt stores no token types; they will "
                               f"read back as normal tokens, e.g. token {kinds[0]} {tok.tokens[kinds[0]]!r}",
                               WARNING))
        for field, ident in (("unk_id", 0), ("bos_id", 1), ("eos_id", 2)):
            if getattr(tok, field) not in (None, ident):
                losses.append(Loss("tokenizer", field, f"{getattr(tok, field)} cannot be stored; ggjt loaders "
                                   f"use {ident}", LOSSY))
        if tok.pad_id is not None:
            losses.append(Loss("tokenizer", "pad_id", f"{tok.pad_id} is not stored in ggjt", WARNING))
        if tok.add_bos is False or tok.add_eos:
            losses.append(Loss("tokenizer", "add_bos/add_eos", "ggjt stores neither; its loaders add BOS and "
                               "no EOS", WARNING))
        return losses

    def notes(self, model: Model) -> list[str]:
        hp = model.hparams
        missing = [k for k in ("n_ctx", "norm_eps", "rope_theta")
                   if model.hparam_origin.get(k, "").startswith("default")]
        line = f"ggjt stores no n_head_kv, norm_eps, rope_theta or n_ctx; llama-cpp-python 0.1.78 needs " \
               f"{loader_call(hp)}"
        if missing:
            line += f" ({', '.join(missing)} are defaults here: check them against the model's own config)"
        return [line] + [s.detail for s in model.history if s.kind == "note"]


@hookimpl
def register_formats(register: Callable[[object], None]) -> None:
    register(GGMLFormat)
