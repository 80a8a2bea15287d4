"""Building the IR tokenizer from a SentencePiece ``tokenizer.model`` (the source of truth for
Llama vocabularies), and writing one back."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any, Optional

import numpy as np

from .errors import FormatError
from .ir import Tokenizer
from .limits import MAX_TOKENS

#: a tokenizer.model larger than this is refused (Llama 2's is 500 KB, Gemma's 4 MB)
MAX_SP_MODEL_BYTES = 64 << 20
#: pieces a tokenizer.model may hold (Gemma has 262144): counted on the wire before parsing, since
#: 64 MiB of empty pieces would take gigabytes once parsed
MAX_SP_PIECES = MAX_TOKENS


def read_sentencepiece_file(path: str) -> Tokenizer:
    try:
        size = os.path.getsize(path)
        if size > MAX_SP_MODEL_BYTES:
            raise FormatError(f"tokenizer.model of {size} bytes exceeds the {MAX_SP_MODEL_BYTES >> 20} MiB limit",
                              path=path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=path)
    try:
        return tokenizer_from_sentencepiece(data)
    except FormatError as e:
        raise e.at(path=path)


def tokenizer_from_sentencepiece(data: bytes) -> Tokenizer:
    """Pieces, scores and types straight from the model proto (types use GGUF's enum, which is
    SentencePiece's: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte)."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb

    if count_pieces(data, MAX_SP_PIECES) > MAX_SP_PIECES:
        raise FormatError(f"not a SentencePiece model mconv reads: more than {MAX_SP_PIECES} pieces")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise FormatError(f"not a SentencePiece model: {e}")
    if not proto.pieces:
        raise FormatError("not a SentencePiece model: it has no pieces")
    # protobuf hands out a piece that is not valid UTF-8 as bytes instead of str: keep its bytes
    tokens = tuple(p.piece if isinstance(p.piece, bytes) else p.piece.encode("utf-8") for p in proto.pieces)
    scores = np.array([p.score for p in proto.pieces], dtype=np.float32)
    types = np.array([p.type for p in proto.pieces], dtype=np.int32)
    spec = proto.trainer_spec
    model_kind = {1: "llama", 2: "llama"}.get(spec.model_type, "llama")  # UNIGRAM=1, BPE=2: both SPM

    def special(i: int) -> Optional[int]:
        return i if 0 <= i < len(tokens) else None

    return Tokenizer(
        model=model_kind,
        tokens=tokens,
        scores=scores,
        token_types=types,
        bos_id=special(spec.bos_id),
        eos_id=special(spec.eos_id),
        unk_id=special(spec.unk_id),
        pad_id=special(spec.pad_id),
        add_bos=None,
        add_eos=None,
        sp_model=bytes(data),
    )


def count_pieces(data: bytes, limit: int) -> int:
    """How many ``pieces`` (ModelProto field 1) the top level of a serialized model holds, counting
    stops past ``limit``.  A walk over the wire format (key varint, then a length-delimited body, a
    varint, or 4/8 fixed bytes); malformed data ends the count, and is left to the parser."""
    pos, end, count = 0, len(data), 0

    def varint(pos: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = data[pos]  # IndexError past the end
            value |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80 or shift > 63:
                return value, pos
            shift += 7

    try:
        while pos < end:
            key, pos = varint(pos)
            wire = key & 7
            if wire == 2:
                length, pos = varint(pos)
                pos += length
            elif wire == 0:
                _, pos = varint(pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                break
            if key == (1 << 3) | 2:
                count += 1
                if count > limit:
                    break
    except IndexError:
        pass
    return count


def sentencepiece_bytes(tok: Tokenizer) -> Optional[bytes]:
    """The tokenizer.model to write: the source's own bytes when it had one (DESIGN: a written
    tokenizer.model is the source's bytes); otherwise one rebuilt from a SentencePiece-style
    vocabulary (GGUF "llama", llama2.c, ggjt); None for other tokenizer kinds."""
    if tok.sp_model is not None:
        return tok.sp_model
    if tok.model != "llama":
        return None
    return sentencepiece_from_tokenizer(tok)


def sentencepiece_from_tokenizer(tok: Tokenizer) -> bytes:
    """A SentencePiece model proto for an SPM vocabulary: BPE when the pieces carry merge ranks
    (scores <= 0 for normal pieces, as Llama's), byte fallback when there are <0xHH> pieces,
    Llama's normaliser settings (identity, dummy prefix, whitespace escaped as U+2581)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for piece, score, kind in zip(tok.tokens, tok.scores.tolist(), tok.token_types.tolist()):
        sp = proto.pieces.add()
        sp.piece = piece.decode("utf-8", errors="replace")
        sp.score = score
        sp.type = kind if kind in (1, 2, 3, 4, 5, 6) else 1
    normal = tok.scores[tok.token_types == 1]
    spec = proto.trainer_spec
    spec.model_type = 2 if normal.size == 0 or bool(np.all(normal <= 0)) else 1
    spec.vocab_size = len(tok.tokens)
    spec.byte_fallback = bool(np.any(tok.token_types == 6))
    spec.unk_id = tok.unk_id if tok.unk_id is not None else -1
    spec.bos_id = tok.bos_id if tok.bos_id is not None else -1
    spec.eos_id = tok.eos_id if tok.eos_id is not None else -1
    spec.pad_id = tok.pad_id if tok.pad_id is not None else -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


# -- JSON form (safetensors __metadata__["mconv.tokenizer"], npz __mconv__.json) ---------------------

def tokenizer_to_json(tok: Tokenizer) -> dict[str, Any]:
    """A JSON-able dict that round-trips the IR tokenizer exactly (scores as float64 repr keep every
    float32 bit, including -0.0; tokens that are not UTF-8 go as base64)."""
    tokens: list[Any] = []
    for t in tok.tokens:
        try:
            tokens.append(t.decode("utf-8"))
        except UnicodeDecodeError:
            tokens.append({"b64": base64.b64encode(t).decode("ascii")})
    return {
        "model": tok.model,
        "tokens": tokens,
        "scores": [float(s) for s in tok.scores.tolist()],
        "token_types": [int(x) for x in tok.token_types.tolist()],
        "bos_id": tok.bos_id, "eos_id": tok.eos_id, "unk_id": tok.unk_id, "pad_id": tok.pad_id,
        "add_bos": tok.add_bos, "add_eos": tok.add_eos,
        "merges": list(tok.merges) if tok.merges is not None else None,
        "sp_model": base64.b64encode(tok.sp_model).decode("ascii") if tok.sp_model is not None else None,
    }


def tokenizer_from_json(data: Any) -> Tokenizer:
    """Inverse of :func:`tokenizer_to_json`, validating every field (the JSON comes from a file)."""
    if not isinstance(data, dict):
        raise FormatError("tokenizer: expected a JSON object")
    try:
        raw_tokens = data["tokens"]
        if not isinstance(raw_tokens, list):
            raise FormatError("tokenizer: tokens must be a list")
        tokens = []
        for t in raw_tokens:
            if isinstance(t, str):
                tokens.append(t.encode("utf-8", errors="surrogateescape"))
            elif isinstance(t, dict) and isinstance(t.get("b64"), str):
                tokens.append(base64.b64decode(t["b64"], validate=True))
            else:
                raise FormatError("tokenizer: a token is neither a string nor {\"b64\": ...}")
        n = len(tokens)
        wide = np.asarray(data.get("scores") or [0.0] * n, dtype=np.float64)
        big = np.isfinite(wide) & (np.abs(wide) > np.finfo(np.float32).max)
        if big.any():   # (inf and nan are kept: mconv writes the float32 scores it read)
            raise FormatError(f"tokenizer: score {float(wide[big][0])!r} does not fit a float32")
        scores = wide.astype(np.float32)
        types = np.asarray(data.get("token_types") or [1] * n, dtype=np.int32)
        if scores.shape != (n,) or types.shape != (n,):
            raise FormatError(f"tokenizer: {n} tokens but {scores.size} scores and {types.size} token types")

        def ident(key: str) -> Optional[int]:
            v = data.get(key)
            if v is None:
                return None
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
                raise FormatError(f"tokenizer: {key} {v!r} is not a token id below {n}")
            return v

        def flag(key: str) -> Optional[bool]:
            v = data.get(key)
            if v is not None and not isinstance(v, bool):
                raise FormatError(f"tokenizer: {key} must be true, false or null")
            return v

        merges = data.get("merges")
        if merges is not None and (not isinstance(merges, list) or not all(isinstance(m, str) for m in merges)):
            raise FormatError("tokenizer: merges must be a list of strings")
        sp = data.get("sp_model")
        model = data.get("model", "llama")
        if not isinstance(model, str):
            raise FormatError("tokenizer: model must be a string")
        return Tokenizer(
            model=model, tokens=tuple(tokens), scores=scores, token_types=types,
            bos_id=ident("bos_id"), eos_id=ident("eos_id"), unk_id=ident("unk_id"), pad_id=ident("pad_id"),
            add_bos=flag("add_bos"), add_eos=flag("add_eos"),
            merges=tuple(merges) if merges is not None else None,
            sp_model=base64.b64decode(sp, validate=True) if isinstance(sp, str) else None,
        )
    except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as e:
        raise FormatError(f"tokenizer: malformed ({type(e).__name__}: {e})")
