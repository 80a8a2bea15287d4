"""llama2.c: the ``.bin`` model files of ``export.py`` (versions 0, 1, 2) and ``tokenizer.bin``.

Byte layouts (FORMATS.md Part 2; little-endian, no padding between arrays):

* **v0** (what ``run.c`` reads): 28-byte header of 7 int32 ``dim, hidden_dim, n_layers, n_heads,
  n_kv_heads, vocab_size, seq_len``; a negative vocab_size flags an unshared classifier.  float32
  body "tensor type major, layer minor": embedding, attn norms, wq, wk, wv, wo, ffn norms, w1, w2,
  w3, final norm, RoPE cos table (seq_len x head_size/2), RoPE sin table, classifier if unshared.
  run.c skips the RoPE tables; this writer fills them with cos/sin of the float32 angle
  t * freq, computed in float64 and rounded (torch's float32 cos differs in the last bit now and
  then, so byte comparisons with export.py mask that region).
* **v1**: 256-byte header: uint32 magic 0x616b3432 (bytes "24ka"), int32 version, the 7 int32
  (vocab_size positive), uint8 shared flag at 36, zeros.  float32 body: attn norms, ffn norms,
  final norm, embedding, wq, wk, wv, wo, w1, w2, w3, classifier if unshared.  No RoPE tables.
* **v2** (what ``runq.c`` reads): v1's header plus int32 group_size at the unaligned offset 37;
  float32 norms as in v1, then for each matrix in v1's order its int8 values followed by its own
  float32 scales (one per group of group_size consecutive values).  In the IR these matrices are
  ``l2c_q8@GS`` (core/quant/l2c.py: blocks of GS int8 + a float32 scale).

The file stores neither norm_eps nor rope_theta: every llama2.c loader assumes 1e-5 and 10000,
so the reader yields those (recorded as defaults) and the planner refuses other values.
Whether the classifier is shared is decided by value equality, as export.py does; an untied
classifier is always kept.

``tokenizer.bin`` (tokenizer.py ``export``): uint32 max_token_length, then per token float32
score, uint32 length, the bytes.  The BOS and EOS tokens are spelled "\\n<s>\\n" and "\\n</s>\\n",
"▁" becomes a space, byte tokens stay "<0xNN>" text.  No count is stored: a reader takes exactly
the model's vocab_size entries.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from mconv.plugins import (
    DIR_LLAMA2C,
    LOSSY,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    WARNING,
    Derived,
    FileSlice,
    Format,
    FormatError,
    Loss,
    MappedFile,
    Model,
    ReadContext,
    Source,
    Step,
    Tensor,
    Tokenizer,
    UnsupportedError,
    UsageError,
    WriteContext,
    WriterOption,
    check_tensor_count,
    check_token_count,
    get_dtype,
    hookimpl,
    resolve,
    table,
    write_tensor,
)

MAGIC = 0x616B3432                  # "ak42" as a big-endian number; on disk "24ka"
MAGIC_BYTES = struct.pack("<I", MAGIC)
V0_HEADER_BYTES = 28
HEADER_BYTES = 256                  # v1 and v2
FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
SHARED_OFFSET = 36
GROUP_SIZE_OFFSET = 37              # v2: written by its own struct.pack('i') right after the flag byte
EXPORTER_GROUP_SIZE = 64            # export.py's starting group size (halved until it divides dim)
DEFAULT_SEQ_LEN = 2048              # export.py's Meta path
TOKENIZER_BIN = "tokenizer.bin"
MODEL_BIN = "model.bin"
BOS_TEXT, EOS_TEXT = b"\n<s>\n", b"\n</s>\n"
SPACE_MARK = "\u2581".encode("utf-8")
#: llama2.c's special ids (run.c: BOS = 1 starts every prompt, generation stops on 1; unk 0, eos 2)
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
FIXED_HPARAMS = {"norm_eps": 1e-5, "rope_theta": 10000.0}
BYTE_TOKEN_RE = re.compile(rb"^<0x[0-9A-Fa-f]{2}>$")
#: sniff bounds: a v0 header outside them is not taken for llama2.c (405B has dim 16384)
PLAUSIBLE_MAX = {"dim": 1 << 17, "hidden_dim": 1 << 20, "n_layers": 1 << 12, "n_heads": 1 << 12,
                 "n_kv_heads": 1 << 12, "vocab_size": 1 << 24, "seq_len": 1 << 24}
F32 = np.dtype("<f4")
ROPE_CHUNK_ROWS = 1 << 14
COMPARE_CHUNK_BYTES = 8 << 20

# canonical names of one block, in the order of both the v0 and v1 bodies within a block type
_LAYER_KINDS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_down",
                "ffn_up")
_NAME_RE = re.compile(r"^(token_embd|output_norm|output)\.weight$|^blk\.(0|[1-9][0-9]*)\.(" +
                      "|".join(_LAYER_KINDS) + r")\.weight$")


# ==================================================================================================
# header
# ==================================================================================================

@dataclass(frozen=True)
class Header:
    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int          # always positive here; v0's sign is ``shared``
    seq_len: int
    shared: bool
    group_size: int = 0      # v2 only

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.dim * self.n_kv_heads // self.n_heads

    @property
    def header_bytes(self) -> int:
        return V0_HEADER_BYTES if self.version == 0 else HEADER_BYTES

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical name -> numpy shape, in the IR's order (embedding, blocks, final norm, classifier)."""
        d, h, kv, v = self.dim, self.hidden_dim, self.kv_dim, self.vocab_size
        out: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, d)}
        per_kind = {"attn_norm": (d,), "attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d),
                    "attn_output": (d, d), "ffn_norm": (d,), "ffn_gate": (h, d), "ffn_down": (d, h),
                    "ffn_up": (h, d)}
        for b in range(self.n_layers):
            for kind in _LAYER_KINDS:
                out[f"blk.{b}.{kind}.weight"] = per_kind[kind]
        out["output_norm.weight"] = (d,)
        if not self.shared:
            out["output.weight"] = (v, d)
        return out

    def body_order(self) -> list[str]:
        """Canonical names in file order (v0: "rope" marks the RoPE tables; v2 = v1's order)."""
        names = table("llama")
        present = list(self.shapes())
        key = "llama2c_v0" if self.version == 0 else "llama2c_v1"
        order = names.ordered(key, present, self.n_layers)
        if self.version == 0:
            order.insert(order.index("output_norm.weight") + 1, "rope")
        return order

    def rope_floats(self) -> int:
        return 2 * self.seq_len * (self.head_size // 2)

    def tensor_bytes(self, name: str, shape: tuple[int, ...]) -> int:
        n = math.prod(shape)
        if self.version == 2 and len(shape) == 2:
            return n + 4 * (n // self.group_size)
        return 4 * n

    def expected_size(self) -> int:
        """The exact file size this header implies, by arithmetic on Python ints (no overflow, and
        nothing proportional to n_layers is built before the size has been checked)."""
        d, h, kv, v, n_layers = self.dim, self.hidden_dim, self.kv_dim, self.vocab_size, self.n_layers
        vectors = n_layers * 2 * d + d
        matrices = v * d + n_layers * (2 * d * d + 2 * kv * d + 3 * h * d) + (0 if self.shared else v * d)
        if self.version == 2:
            # every matrix has a dim-sized axis and group_size divides dim: whole groups per matrix
            body = 4 * vectors + matrices + 4 * (matrices // self.group_size)
        else:
            body = 4 * (vectors + matrices)
        if self.version == 0:
            body += 4 * self.rope_floats()
        return self.header_bytes + body

    def pack(self) -> bytes:
        vocab = self.vocab_size if (self.shared or self.version != 0) else -self.vocab_size
        values = (self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads, vocab, self.seq_len)
        for field, value in zip(FIELDS, values):
            if not -(1 << 31) <= value < (1 << 31):
                raise UnsupportedError(f"{field} {value} does not fit the int32 field of a llama2.c header")
        config = struct.pack("<7i", *values)
        if self.version == 0:
            return config
        head = MAGIC_BYTES + struct.pack("<i", self.version) + config + struct.pack("<B", int(self.shared))
        if self.version == 2:
            head += struct.pack("<i", self.group_size)
        return head + b"\0" * (HEADER_BYTES - len(head))


def parse_header(head: bytes, size: int, path: Optional[str] = None) -> Header:
    """Validate a header against the file size; every refusal names the field and offset."""
    if len(head) >= 8 and head[:4] == MAGIC_BYTES:
        (version,) = struct.unpack_from("<i", head, 4)
        if version not in (1, 2):
            raise FormatError(f"unsupported llama2.c version {version} (known: 1 and 2 after the magic; "
                              "version 0 files have no magic)", path=path, offset=4)
        if size < HEADER_BYTES:
            raise FormatError(f"file of {size} bytes is too short for the {HEADER_BYTES}-byte llama2.c v{version} "
                              "header", path=path)
        values = struct.unpack_from("<7i", head, 8)
        base = 8
        flag = head[SHARED_OFFSET]
        if flag not in (0, 1):
            raise FormatError(f"shared_classifier byte {flag} must be 0 or 1", path=path, offset=SHARED_OFFSET)
        shared = bool(flag)
        group_size = struct.unpack_from("<i", head, GROUP_SIZE_OFFSET)[0] if version == 2 else 0
    else:
        version = 0
        if size < V0_HEADER_BYTES:
            raise FormatError(f"file of {size} bytes is too short for the {V0_HEADER_BYTES}-byte llama2.c header",
                              path=path)
        values = struct.unpack_from("<7i", head, 0)
        base = 0
        shared = values[5] > 0
        group_size = 0
    fields = dict(zip(FIELDS, values))
    for i, (field, value) in enumerate(fields.items()):
        if field == "vocab_size" and version == 0:
            if value == 0:
                raise FormatError("vocab_size 0 must be nonzero (its sign flags a shared classifier)",
                                  path=path, offset=base + 4 * i)
            fields[field] = abs(value)
        elif value <= 0:
            raise FormatError(f"{field} {value} must be positive", path=path, offset=base + 4 * i)
    dim, n_heads, n_kv = fields["dim"], fields["n_heads"], fields["n_kv_heads"]
    if dim % n_heads:
        raise FormatError(f"n_heads {n_heads} does not divide dim {dim}", path=path, offset=base + 12)
    if n_kv > n_heads or n_heads % n_kv:
        raise FormatError(f"n_kv_heads {n_kv} does not divide n_heads {n_heads}", path=path, offset=base + 16)
    if (dim // n_heads) % 2:
        raise FormatError(f"head size {dim // n_heads} (dim {dim} / n_heads {n_heads}) is odd; RoPE rotates pairs",
                          path=path, offset=base + 12)
    if version == 2:
        if group_size <= 0:
            raise FormatError(f"group_size {group_size} must be positive", path=path, offset=GROUP_SIZE_OFFSET)
        if dim % group_size:
            raise FormatError(f"group_size {group_size} does not divide dim {dim}", path=path,
                              offset=GROUP_SIZE_OFFSET)
    header = Header(version=version, shared=shared, group_size=group_size, **fields)
    expected = header.expected_size()
    if expected != size:
        raise FormatError(f"llama2.c v{version} header implies {expected} bytes, file has {size}", path=path)
    try:   # a file of the right size may still be a hole: 9 tensors per layer + embedding, norm, classifier
        check_tensor_count(9 * header.n_layers + 3)
    except FormatError as e:
        raise e.at(path=path, offset=base + 8)
    return header


def sniff_file(head: bytes, size: int) -> float:
    """1.0 for the v1/v2 magic; 0.9 for a v0 header that implies exactly this file size; 0.05 for
    a plausible v0 header of the wrong size (so that reading it explains the mismatch)."""
    if len(head) >= 8 and head[:4] == MAGIC_BYTES:
        (version,) = struct.unpack_from("<i", head, 4)
        return 1.0 if version in (1, 2) else 0.5
    if len(head) < V0_HEADER_BYTES:
        return 0.0
    values = struct.unpack_from("<7i", head, 0)
    for field, value in zip(FIELDS, values):
        if not (0 < abs(value) <= PLAUSIBLE_MAX[field]) or (field != "vocab_size" and value < 0):
            return 0.0
    try:
        parse_header(head, size)
    except FormatError:
        return 0.05
    return 0.9


# ==================================================================================================
# reading
# ==================================================================================================

class Q80Source(Source):
    """Rows of a v2 matrix as l2c_q8 blocks: the file holds all int8 values, then all scales;
    a row chunk reads both runs and interleaves them (GS int8 + float32 scale per block)."""

    kind = "llama2c_q8"

    def __init__(self, file: MappedFile, q_offset: int, n_rows: int, n_cols: int, group_size: int) -> None:
        self.file = file
        self.q_offset = q_offset
        self.n_cols = n_cols
        self.gs = group_size
        self.groups_per_row = n_cols // group_size
        self.s_offset = q_offset + n_rows * n_cols
        self.n_rows = n_rows

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        n, g, gs = stop - start, self.groups_per_row, self.gs
        q = self.file.view(self.q_offset + start * self.n_cols, n * self.n_cols)
        s = self.file.view(self.s_offset + start * g * 4, n * g * 4)
        out = np.empty((n * g, gs + 4), dtype=np.uint8)
        out[:, :gs] = q.reshape(n * g, gs)
        out[:, gs:] = s.reshape(n * g, 4)
        return out.reshape(n, g * (gs + 4))

    def release_rows(self, start: int, stop: int) -> None:
        g = self.groups_per_row
        self.file.release(self.q_offset + start * self.n_cols, (stop - start) * self.n_cols)
        self.file.release(self.s_offset + start * g * 4, (stop - start) * g * 4)

    def release(self) -> None:
        self.file.release(self.q_offset, self.n_rows * self.n_cols + self.n_rows * self.groups_per_row * 4)

    def files(self) -> tuple[str, ...]:
        return (self.file.path,)


class Q80DequantSource(Source):
    """A v2 matrix whose groups straddle rows (llama2.c's exporter never checks that the group size
    divides hidden_dim): rows are decoded to float32 from the groups that cover them."""

    kind = "llama2c_q8_dequant"

    def __init__(self, file: MappedFile, q_offset: int, n_rows: int, n_cols: int, group_size: int) -> None:
        self.file = file
        self.q_offset = q_offset
        self.n_cols = n_cols
        self.gs = group_size
        self.s_offset = q_offset + n_rows * n_cols

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        gs = self.gs
        e0, e1 = start * self.n_cols, stop * self.n_cols
        g0, g1 = e0 // gs, -(-e1 // gs)
        q = self.file.view(self.q_offset + g0 * gs, (g1 - g0) * gs).view(np.int8).reshape(-1, gs)
        s = self.file.view(self.s_offset + g0 * 4, (g1 - g0) * 4).view(F32).reshape(-1, 1)
        values = (q.astype(F32) * s).reshape(-1)[e0 - g0 * gs:e1 - g0 * gs]
        return np.ascontiguousarray(values, dtype=F32).view(np.uint8).reshape(stop - start, self.n_cols * 4)

    def files(self) -> tuple[str, ...]:
        return (self.file.path,)


def _model_tensors(header: Header, mapped: MappedFile) -> tuple[dict[str, Tensor], list[str]]:
    """Lazy tensors at their file offsets, in the IR's order; plus notes for the history."""
    f32 = get_dtype("f32")
    shapes = header.shapes()
    located: dict[str, Tensor] = {}
    notes: list[str] = []
    offset = header.header_bytes
    q8 = get_dtype("l2c_q8").variant(header.group_size) if header.version == 2 else None  # type: ignore[attr-defined]
    straddling = []
    for name in header.body_order():
        if name == "rope":
            offset += 4 * header.rope_floats()
            continue
        shape = shapes[name]
        rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
        if header.version == 2 and len(shape) == 2:
            if cols % header.group_size == 0:
                src: Source = Q80Source(mapped, offset, rows, cols, header.group_size)
                located[name] = Tensor(name, shape, q8, src)  # type: ignore[arg-type]
            else:
                located[name] = Tensor(name, shape, f32, Q80DequantSource(mapped, offset, rows, cols,
                                                                          header.group_size))
                straddling.append(name)
        else:
            located[name] = Tensor(name, shape, f32, FileSlice(mapped, offset, rows, cols * 4))
        offset += header.tensor_bytes(name, shape)
    if straddling:
        notes.append(f"group size {header.group_size} does not divide hidden_dim {header.hidden_dim}: the int8 "
                     f"groups of {len(straddling)} ffn_down matrices straddle rows (runq.c computes wrong logits "
                     "for this file); they are read as their float32 dequantized values")
    return {name: located[name] for name in shapes}, notes


def _choose_model_file(directory: str) -> str:
    path = os.path.join(directory, MODEL_BIN)
    if os.path.isfile(path):
        return path
    found = []
    for entry in sorted(os.listdir(directory)):
        full = os.path.join(directory, entry)
        if entry.endswith(".bin") and entry != TOKENIZER_BIN and os.path.isfile(full):
            head, size = _head(full)
            if sniff_file(head, size) >= 0.5:
                found.append(entry)
    if not found:
        raise FormatError("no llama2.c model .bin in this directory", path=directory)
    if len(found) > 1:
        raise FormatError(f"several llama2.c model files: {', '.join(found)}; pass one file", path=directory)
    return os.path.join(directory, found[0])


def _head(path: str, n: int = 64) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        return f.read(n), os.fstat(f.fileno()).st_size


def read_llama2c(path: str, ctx: ReadContext) -> Model:
    model_path = _choose_model_file(path) if os.path.isdir(path) else path
    head, size = _head(model_path, HEADER_BYTES)
    header = parse_header(head, size, model_path)
    mapped = ctx.cache.get(model_path)
    tensors, notes = _model_tensors(header, mapped)
    model = Model(arch="llama", hparams={}, tensors=tensors, format="llama2c",
                  files=(os.path.abspath(model_path),), cache=ctx.cache)
    stored = {"n_vocab": header.vocab_size, "n_embd": header.dim, "n_layer": header.n_layers,
              "n_head": header.n_heads, "n_head_kv": header.n_kv_heads, "n_ff": header.hidden_dim,
              "n_ctx": header.seq_len}
    resolve(model, table("llama"), [(f"llama2c v{header.version} header", stored)], ctx.hparams,
            defaults=FIXED_HPARAMS)
    detail = f"llama2.c v{header.version}, {'shared' if header.shared else 'unshared'} classifier"
    if header.version == 2:
        detail += f", int8 group size {header.group_size}"
    model.history.append(Step("llama2c", detail))
    model.history.extend(Step("note", n) for n in notes)
    tok_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), TOKENIZER_BIN)
    if os.path.isfile(tok_path):
        mapped_tok = ctx.cache.get(tok_path)
        model.tokenizer, end = read_tokenizer_bin(tok_path, header.vocab_size, mapped_tok)
        model.files = model.files + (os.path.abspath(tok_path),)
        if end < mapped_tok.size:
            model.history.append(Step("note", f"{tok_path} has {mapped_tok.size - end} bytes after the first "
                                      f"{header.vocab_size} (vocab_size) tokens; they are ignored, as run.c does"))
        model.history.append(Step("default", f"tokenizer ids unk={UNK_ID} bos={BOS_ID} eos={EOS_ID} "
                                  "(llama2.c convention; tokenizer.bin does not store them)"))
    return model


# ==================================================================================================
# tokenizer.bin
# ==================================================================================================

def _token_type(token: bytes) -> int:
    if BYTE_TOKEN_RE.match(token):
        return TOKEN_BYTE
    if token == b"<unk>":
        return TOKEN_UNKNOWN
    if token in (b"<s>", b"</s>"):
        return TOKEN_CONTROL
    return TOKEN_NORMAL


def from_l2c_spelling(i: int, raw: bytes) -> bytes:
    """tokenizer.bin spelling -> the IR's (SentencePiece) spelling."""
    if i == BOS_ID and raw == BOS_TEXT:
        return b"<s>"
    if i == EOS_ID and raw == EOS_TEXT:
        return b"</s>"
    return raw.replace(b" ", SPACE_MARK)


def to_l2c_spelling(i: int, token: bytes, tok: Tokenizer) -> bytes:
    """The IR's spelling -> tokenizer.py's: BOS/EOS replaced first, then every "▁" -> " "."""
    if i == tok.bos_id:
        return BOS_TEXT
    if i == tok.eos_id:
        return EOS_TEXT
    return token.replace(SPACE_MARK, b" ")


def read_tokenizer_bin(path: str, n_vocab: int, mapped: Optional[MappedFile] = None) -> tuple[Tokenizer, int]:
    """Exactly ``n_vocab`` entries (the model header's vocab_size), as run.c reads them; returns the
    tokenizer and the offset where its entries end."""
    mapped = mapped or MappedFile(path)
    size = mapped.size
    try:
        check_token_count(n_vocab)   # before building n_vocab Python objects from a sparse file
    except FormatError as e:
        raise e.at(path=path)
    if size < 4:
        raise FormatError(f"file of {size} bytes is too short for the 4-byte max_token_length", path=path)
    buf = mapped.buffer
    (max_len,) = struct.unpack_from("<I", buf, 0)
    pos = 4
    tokens: list[bytes] = []
    score_bits: list[int] = []
    for i in range(n_vocab):
        if pos + 8 > size:
            raise FormatError(f"tokenizer.bin ends after {i} tokens; the model's vocab_size is {n_vocab}",
                              path=path, offset=pos)
        bits, length = struct.unpack_from("<II", buf, pos)
        if length > size - pos - 8:
            raise FormatError(f"token {i}: length {length} runs past the end of the file ({size} bytes)",
                              path=path, offset=pos + 4)
        if length > max_len:
            raise FormatError(f"token {i}: length {length} exceeds max_token_length {max_len}", path=path,
                              offset=pos + 4)
        tokens.append(from_l2c_spelling(i, bytes(buf[pos + 8:pos + 8 + length])))
        score_bits.append(bits)
        pos += 8 + length
    scores = np.array(score_bits, dtype=np.uint32).view(F32)
    types = np.array([_token_type(t) for t in tokens], dtype=np.int32)

    def special(i: int) -> Optional[int]:
        return i if i < n_vocab else None

    return Tokenizer(model="llama", tokens=tuple(tokens), scores=scores, token_types=types,
                     bos_id=special(BOS_ID), eos_id=special(EOS_ID), unk_id=special(UNK_ID)), pos


def tokenizer_bin_bytes(tok: Tokenizer) -> bytes:
    """tokenizer.bin exactly as llama2.c's tokenizer.py writes it for the same vocabulary."""
    pieces = [to_l2c_spelling(i, t, tok) for i, t in enumerate(tok.tokens)]
    max_len = max((len(p) for p in pieces), default=0)
    bits = np.asarray(tok.scores, dtype=F32).view(np.uint32).tolist()
    out = [struct.pack("<I", max_len)]
    for piece, b in zip(pieces, bits):
        out.append(struct.pack("<II", b, len(piece)))
        out.append(piece)
    return b"".join(out)


def tokenizer_losses(tok: Tokenizer, n_vocab: int) -> list[Loss]:
    """What tokenizer.bin cannot carry (it holds pieces and scores; readers assume the rest)."""
    losses = []
    subject = f"({len(tok)} tokens)"
    if len(tok) < n_vocab:
        raise UnsupportedError(f"the tokenizer has {len(tok)} tokens but the model's vocab_size is {n_vocab}; "
                               "run.c reads exactly vocab_size entries from tokenizer.bin")
    if len(tok) > n_vocab:
        losses.append(Loss("tokenizer", subject, f"tokenizer.bin readers take only the first {n_vocab} "
                           f"(vocab_size) entries; {len(tok) - n_vocab} dropped", LOSSY))
    if tok.model != "llama":
        losses.append(Loss("tokenizer", subject, f"a {tok.model} tokenizer is stored as pieces and scores only "
                           "(read back as a SentencePiece vocabulary)", LOSSY))
    if tok.merges:
        losses.append(Loss("tokenizer", subject, f"{len(tok.merges)} merges cannot be stored; dropped", LOSSY))
    ids = {"unk": (tok.unk_id, UNK_ID), "bos": (tok.bos_id, BOS_ID), "eos": (tok.eos_id, EOS_ID),
           "pad": (tok.pad_id, None)}
    wrong = [f"{k}={have}" for k, (have, want) in ids.items() if have is not None and have != want]
    if wrong:
        losses.append(Loss("tokenizer", subject, f"special ids {', '.join(wrong)} are not stored; llama2.c "
                           f"assumes unk={UNK_ID} bos={BOS_ID} eos={EOS_ID} and no pad", LOSSY))
    spaced = sum(1 for t in tok.tokens if b" " in t)
    if spaced:
        losses.append(Loss("tokenizer", subject, f"{spaced} token(s) contain an ASCII space, which tokenizer.bin "
                           "cannot tell from '▁' (read back as '▁')", LOSSY))
    inferred = np.array([_token_type(t) for t in tok.tokens], dtype=np.int32)
    if not np.array_equal(inferred, np.asarray(tok.token_types)):
        n = int(np.count_nonzero(inferred != np.asarray(tok.token_types)))
        losses.append(Loss("tokenizer", subject, f"token types are not stored; {n} token(s) have a type other "
                           "than the one a reader infers from the spelling", LOSSY))
    if tok.sp_model is not None:
        losses.append(Loss("tokenizer", subject, "the original tokenizer.model is not kept (pieces, scores and "
                           "ids are)", WARNING))
    return losses


# ==================================================================================================
# writing
# ==================================================================================================

def exporter_group_size(dim: int) -> int:
    """export.py: start at 64 and halve while dim % group_size != 0."""
    gs = EXPORTER_GROUP_SIZE
    while dim % gs:
        gs //= 2
    return gs


def largest_group_size(dim: int, hidden_dim: int) -> int:
    """The largest size <= 64 that divides both (runq.c needs both: its matmuls step over n in GS)."""
    return max(g for g in range(1, EXPORTER_GROUP_SIZE + 1) if dim % g == 0 and hidden_dim % g == 0)


def _dims(model: Model) -> tuple[int, int]:
    emb = model.tensors.get("token_embd.weight")
    gate = model.tensors.get("blk.0.ffn_gate.weight")
    dim = emb.shape[1] if emb is not None and len(emb.shape) == 2 else int(model.hparams.get("n_embd", 0))
    hidden = gate.shape[0] if gate is not None and len(gate.shape) == 2 else int(model.hparams.get("n_ff", 0))
    return dim, hidden


def _source_group_size(model: Model) -> Optional[int]:
    sizes = {t.dtype.block_size for t in model.tensors.values() if t.dtype.name == "l2c_q8"}
    return sizes.pop() if len(sizes) == 1 else None


def choose_group_size(model: Model, explicit: Optional[int]) -> int:
    """-O group_size (checked) > the source's l2c_q8 group size when valid > export.py's choice when
    it divides hidden_dim too (byte-identical output) > the largest size <= 64 dividing both."""
    dim, hidden = _dims(model)
    if dim <= 0 or hidden <= 0:
        raise UnsupportedError("llama2.c v2 needs token_embd.weight and blk.0.ffn_gate.weight to choose a group size")
    if explicit is not None:
        if dim % explicit or hidden % explicit:
            raise UsageError(f"-O group_size={explicit} does not divide both dim {dim} and hidden_dim {hidden}")
        return explicit
    source = _source_group_size(model)
    if source is not None and dim % source == 0 and hidden % source == 0:
        return source
    exporter = exporter_group_size(dim)
    return exporter if hidden % exporter == 0 else largest_group_size(dim, hidden)


def group_size_note(dim: int, hidden: int, gs: int) -> Optional[str]:
    """Say so when llama2.c's exporter would have picked a group size that breaks runq.c."""
    exporter = exporter_group_size(dim)
    if hidden % exporter == 0:
        return None
    note = (f"group size {gs}: llama2.c's exporter would use {exporter}, which does not divide hidden_dim {hidden} "
            "(runq.c would compute wrong logits)")
    if gs == largest_group_size(dim, hidden):
        note += f"; {gs} is the largest size <= {EXPORTER_GROUP_SIZE} dividing dim {dim} and hidden_dim {hidden}"
    return note


def rope_rows(seq_len: int, head_size: int, which: str) -> Iterator[np.ndarray]:
    """v0's RoPE table rows (seq_len x head_size/2) in chunks: cos or sin of the float32 angle
    t * freq_j, freq_j = 1 / 10000^(2j/head_size) in float32, evaluated in float64 and rounded.
    run.c never reads them; torch's float32 cos/sin may differ in the last bit."""
    half = head_size // 2
    exps = np.arange(0, head_size, 2, dtype=np.float32)[:half] / np.float32(head_size)
    freqs = (np.float32(1.0) / np.power(np.float32(FIXED_HPARAMS["rope_theta"]), exps)).astype(F32)
    fn = np.cos if which == "cos" else np.sin
    for start in range(0, seq_len, ROPE_CHUNK_ROWS):
        t = np.arange(start, min(seq_len, start + ROPE_CHUNK_ROWS), dtype=np.float32)
        angle = np.multiply.outer(t, freqs).astype(F32)
        yield fn(angle.astype(np.float64)).astype(F32)


def _pre_cast(t: Tensor) -> Tensor:
    """The tensor a planned cast reads from (export.py compares the weights before quantizing)."""
    while isinstance(t.source, Derived) and t.source.op == "cast" and len(t.source.inputs) == 1:
        t = t.source.inputs[0]
    return t


def values_equal(a: Tensor, b: Tensor) -> bool:
    """torch.equal on the values: same shape, every element equal (0.0 == -0.0, NaN != NaN)."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    if a.n_rows == 0:
        return True
    # small chunks: untied matrices differ in their first rows, and mapped pages are dropped as we go
    step = max(1, min(a.rows_per_chunk(COMPARE_CHUNK_BYTES), b.rows_per_chunk(COMPARE_CHUNK_BYTES)))
    try:
        for start in range(0, a.n_rows, step):
            stop = min(a.n_rows, start + step)
            same = np.array_equal(a.f32(start, stop), b.f32(start, stop))
            a.source.release_rows(start, stop)
            b.source.release_rows(start, stop)
            if not same:
                return False
        return True
    finally:
        a.source.release()
        b.source.release()


def _write_q80(f: Any, t: Tensor, progress: Callable[[int], None]) -> None:
    """An l2c_q8 tensor as the file's two runs: all int8 values, then all float32 scales."""
    gs = t.dtype.block_size
    numel = t.numel
    start = f.tell()
    q_pos, s_pos = start, start + numel
    for chunk in t.iter_chunks():
        blocks = chunk.reshape(-1, gs + 4)
        q = np.ascontiguousarray(blocks[:, :gs])
        s = np.ascontiguousarray(blocks[:, gs:])
        f.seek(q_pos)
        f.write(memoryview(q).cast("B"))
        q_pos += q.size
        f.seek(s_pos)
        f.write(memoryview(s).cast("B"))
        s_pos += s.size
        progress(chunk.nbytes)
    if q_pos != start + numel or s_pos != start + numel + numel // gs * 4:  # pragma: no cover - a source bug
        raise UnsupportedError(f"wrote {q_pos - start} int8 values and {s_pos - start - numel} scale bytes for "
                               f"{numel} values", tensor=t.name)
    f.seek(s_pos)


def _parse_choice(text: str, choices: tuple[int, ...]) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None  # type: ignore[assignment]
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    return value


def _parse_positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a positive integer")
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


class Llama2cFormat(Format):
    name = "llama2c"
    description = "llama2.c model.bin (v0 run.c, v1, v2 int8 runq.c) + tokenizer.bin"
    extensions = ()                 # ".bin" is also pytorch_model.bin and ggjt: --to llama2c is required
    dtypes = frozenset({"f32", "l2c_q8"})
    stored_hparams = frozenset({"n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_ctx"})
    fixed_hparams = FIXED_HPARAMS
    stores_tokenizer = True
    stores_metadata = False
    has_directory_layout = True
    writer_options = {
        "version": WriterOption("version", lambda s: _parse_choice(s, (0, 1, 2)), None,
                                "0 (run.c, the default), 1 (fp32 with a header), 2 (int8 groups, runq.c; implied by "
                                "--dtype l2c_q8)"),
        "group_size": WriterOption("group_size", _parse_positive, None,
                                   "v2 int8 group size (default: export.py's 64, halved until it divides dim; "
                                   "must also divide hidden_dim)"),
        "tokenizer": WriterOption("tokenizer", str, None,
                                  "where to write tokenizer.bin (default: beside the model file)"),
    }

    # -- sniff / read ----------------------------------------------------------------------------------
    def sniff(self, path: str, head: bytes, size: int, is_dir: bool) -> float:
        if is_dir:
            try:
                _choose_model_file(path)
            except (FormatError, OSError):
                return 0.0
            return DIR_LLAMA2C
        if os.path.basename(path) == TOKENIZER_BIN:
            return 0.0
        return sniff_file(head, size)

    def read(self, path: str, ctx: ReadContext) -> Model:
        return read_llama2c(path, ctx)

    def accepts_tensor(self, canonical: str) -> bool:
        return _NAME_RE.match(canonical) is not None

    # -- planning --------------------------------------------------------------------------------------
    def output_dtypes(self, model: Model, ctx: WriteContext) -> frozenset[str]:
        if ctx.options.get("version") in (0, 1):
            return frozenset({"f32"})
        return self.dtypes

    def dtype_request(self, model: Model, request: Optional[str], ctx: WriteContext) -> Optional[str]:
        version = ctx.options.get("version")
        explicit = ctx.options.get("group_size")
        base, _, size = (request or "").lower().partition("@")
        if explicit is not None and version in (0, 1):
            raise UsageError(f"-O group_size applies to version 2 (int8) only, not version {version}")
        if base == "l2c_q8" or (request is None and (version == 2 or explicit is not None)):
            if version in (0, 1):
                raise UnsupportedError(f"llama2.c v{version} stores float32 only; l2c_q8 needs version 2 "
                                       "(-O version=2)")
            if size:
                if explicit is not None and int(size) != explicit:
                    raise UsageError(f"--dtype {request} and -O group_size={explicit} disagree")
                explicit = int(size)
            return f"l2c_q8@{choose_group_size(model, explicit)}"
        if request is not None and version == 2:
            raise UnsupportedError(f"llama2.c v2 stores l2c_q8 int8 groups (and float32 norms), not {request}")
        return request

    def plan_losses(self, model: Model, ctx: WriteContext) -> list[Loss]:
        losses: list[Loss] = []
        version = _resolved_version(model, ctx)
        if version == 2:
            note = _group_note(model)
            if note:
                losses.append(Loss("llama2c", "group_size", note, WARNING))
        shared = _shared(model, ctx)
        if shared and "output.weight" in model.tensors:
            losses.append(Loss("llama2c", "output.weight", "equals token_embd.weight by value: stored once as a "
                               "shared classifier, as llama2.c's exporter does (reads back tied)", WARNING))
        if model.tokenizer is not None:
            losses.extend(tokenizer_losses(model.tokenizer, _n_vocab(model)))
        return losses

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, model: Model, path: str, ctx: WriteContext) -> None:
        version = _resolved_version(model, ctx)
        if ctx.as_directory:
            model_path = os.path.join(path, MODEL_BIN)
            default_tok = os.path.join(path, TOKENIZER_BIN)
            final_dir = ctx.final_path
        else:
            model_path = path
            final_dir = os.path.dirname(ctx.final_path)
            default_tok = None
        header = _header_for(model, version, _shared(model, ctx))
        with open(model_path, "wb") as f:
            f.write(header.pack())
            _write_body(f, model, header, ctx.progress)
            size = f.tell()
        if size != header.expected_size():  # pragma: no cover - a writer bug, never user input
            raise UnsupportedError(f"wrote {size} bytes but the header implies {header.expected_size()}")
        model.history.append(Step("llama2c", f"wrote llama2.c v{version}, "
                                  f"{'shared' if header.shared else 'unshared'} classifier"
                                  + (f", int8 group size {header.group_size}" if version == 2 else "")))
        if version == 2:
            note = _group_note(model)
            if note:
                model.history.append(Step("note", note))
        if model.tokenizer is not None:
            tokenizer_losses(model.tokenizer, header.vocab_size)  # raises when it cannot be written
            option = ctx.options.get("tokenizer")
            final_tok = os.path.abspath(option) if option else os.path.join(final_dir, TOKENIZER_BIN)
            if final_tok == os.path.abspath(ctx.final_path):
                raise UsageError(f"the tokenizer.bin path {final_tok} is the model output itself")
            if option is None and default_tok is not None:
                tok_path = default_tok
            else:
                tok_path = ctx.sidecar(final_tok)
            with open(tok_path, "wb") as f:
                f.write(tokenizer_bin_bytes(model.tokenizer))


def _n_vocab(model: Model) -> int:
    emb = model.tensors.get("token_embd.weight")
    return emb.shape[0] if emb is not None and emb.shape else int(model.hparams.get("n_vocab", 0))


def _resolved_version(model: Model, ctx: WriteContext) -> int:
    version = ctx.options.get("version")
    if version is not None:
        return int(version)
    return 2 if any(t.dtype.name == "l2c_q8" for t in model.tensors.values()) else 0


def _group_note(model: Model) -> Optional[str]:
    """The note when the written group size is not the one llama2.c's exporter would pick."""
    dim, hidden = _dims(model)
    return group_size_note(dim, hidden, _check_v2_tensors(model))


def _shared(model: Model, ctx: WriteContext) -> bool:
    """Shared classifier: no output.weight, or one equal to the embedding by value (cached per plan)."""
    key = "_llama2c_shared"
    if key not in ctx.options:
        out = model.tensors.get("output.weight")
        emb = model.tensors.get("token_embd.weight")
        ctx.options[key] = out is None or (emb is not None and values_equal(_pre_cast(emb), _pre_cast(out)))
    return bool(ctx.options[key])


def _check_v2_tensors(model: Model) -> int:
    """Every matrix l2c_q8 with one group size, every vector f32; returns the group size."""
    sizes = set()
    for t in model.tensors.values():
        if len(t.shape) == 2:
            if t.dtype.name != "l2c_q8":
                raise UnsupportedError(f"llama2.c v2 stores every matrix as l2c_q8 int8 groups; this one is "
                                       f"{t.dtype.label}: pass --dtype l2c_q8 to quantize (or -O version=0)",
                                       tensor=t.name)
            sizes.add(t.dtype.block_size)
        elif t.dtype.name != "f32":
            raise UnsupportedError(f"llama2.c stores vectors as f32, not {t.dtype.label}", tensor=t.name)
    if len(sizes) > 1:
        raise UnsupportedError(f"llama2.c v2 has one group size per file; the matrices use {sorted(sizes)}: "
                               "pass --dtype l2c_q8 (or -O group_size=N) to re-quantize")
    return sizes.pop() if sizes else EXPORTER_GROUP_SIZE


def _header_for(model: Model, version: int, shared: bool) -> Header:
    hp = model.hparams
    dim, hidden = _dims(model)
    n_layers = table("llama").block_count(model.tensors)
    for key in ("n_head", "n_head_kv"):
        if key not in hp:
            raise UnsupportedError(f"hparam {key} is unknown; give it with --hparam {key}=N")
    header = Header(version=version, dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=int(hp["n_head"]),
                    n_kv_heads=int(hp["n_head_kv"]), vocab_size=_n_vocab(model),
                    seq_len=int(hp.get("n_ctx") or DEFAULT_SEQ_LEN), shared=shared,
                    group_size=_check_v2_tensors(model) if version == 2 else 0)
    for name, value in (("dim", header.dim), ("n_heads", header.n_heads), ("n_kv_heads", header.n_kv_heads),
                        ("n_layers", n_layers), ("seq_len", header.seq_len)):
        if value <= 0:
            raise UnsupportedError(f"{name} {value} must be positive")
    if header.dim % header.n_heads or header.n_heads % header.n_kv_heads or header.head_size % 2:
        raise UnsupportedError(f"dim {header.dim}, n_heads {header.n_heads} and n_kv_heads {header.n_kv_heads} do "
                               "not give whole heads of an even size")
    for name, shape in header.shapes().items():
        t = model.tensors.get(name)
        if t is None:
            raise UnsupportedError("llama2.c needs this tensor", tensor=name)
        if tuple(t.shape) != shape:
            raise UnsupportedError(f"shape {tuple(t.shape)} does not fit llama2.c's layout, which needs {shape}",
                                   tensor=name)
        want = "l2c_q8" if (version == 2 and len(shape) == 2) else "f32"
        if t.dtype.name != want:
            raise UnsupportedError(f"llama2.c v{version} stores this tensor as {want}, not {t.dtype.label}",
                                   tensor=name)
    return header


def _write_body(f: Any, model: Model, header: Header, progress: Callable[[int], None]) -> None:
    for name in header.body_order():
        if name == "rope":
            for which in ("cos", "sin"):
                for rows in rope_rows(header.seq_len, header.head_size, which):
                    f.write(memoryview(np.ascontiguousarray(rows, dtype=F32)).cast("B"))
            continue
        t = model.tensors[name]
        if t.dtype.name == "l2c_q8":
            _write_q80(f, t, progress)
        else:
            write_tensor(f, t, progress)


@hookimpl
def register_formats(register: Callable[[object], None]) -> None:
    register(Llama2cFormat)
