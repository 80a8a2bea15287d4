"""Text <-> token ids for ``mconv run`` and ``mconv validate --prompt``.

Encoding: with the source's SentencePiece ``tokenizer.model`` (``Tokenizer.sp_model``) the
sentencepiece library encodes; otherwise llama2.c run.c's ``encode`` over the IR vocabulary:

1. BOS; then, when the text is not empty, the dummy-prefix token (run.c looks up " ", which is
   "▁" in the IR's SentencePiece spelling);
2. the UTF-8 text split into codepoints (a lead byte starts one, up to 3 continuation bytes follow);
   each codepoint that is a token is one, others fall back to their bytes' ``<0xHH>`` tokens;
3. repeatedly merge the adjacent pair whose concatenation is a token with the highest score (the
   first such pair on ties; scores must exceed -1e10), until no pair merges.

run.c spells the vocabulary as llama2.c's tokenizer.bin does (" " for "▁", BOS/EOS as "\\n<s>\\n" and
"\\n</s>\\n"); the lookups here use that spelling, so text is encoded as run.c encodes it, and control
tokens are never produced from text.

Decoding (streamed): "▁" is a space, ``<0xHH>`` tokens are raw bytes, control tokens print nothing,
and one leading space is stripped from the piece after BOS (as run.c and SentencePiece do).  Bytes
pass through an incremental UTF-8 decoder, so a character split over byte tokens prints whole;
ASCII control bytes other than whitespace are dropped, as run.c's ``safe_printf`` drops them.
"""

from __future__ import annotations

import codecs
import re
from typing import Optional

import numpy as np

from .errors import UsageError, ValidationError
from .ir import TOKEN_CONTROL, Tokenizer

SPACE = "\u2581".encode("utf-8")       # "▁"
BYTE_TOKEN = re.compile(rb"<0x([0-9A-Fa-f]{2})>")
#: run.c starts the best merge score at -1e10 (a float)
_NO_SCORE = float(np.float32(-1e10))


class TextCodec:
    def __init__(self, tok: Tokenizer) -> None:
        if tok.model != "llama":
            raise UsageError(f"text is encoded for SentencePiece-style (llama) vocabularies; this model's "
                             f"tokenizer is {tok.model!r}")
        self.tok = tok
        self.bos_id = tok.bos_id if tok.bos_id is not None else (1 if len(tok) > 1 else None)
        self.eos_id = tok.eos_id
        self.scores = [float(s) for s in np.asarray(tok.scores, dtype=np.float32).tolist()]
        types = np.asarray(tok.token_types).tolist()
        # run.c's spelling: tokenizer.bin has " " where SentencePiece has "▁"; controls never match text
        self.runc_pieces: list[bytes] = [t.replace(SPACE, b" ") for t in tok.tokens]
        self.lookup: dict[bytes, int] = {}
        for i, piece in enumerate(self.runc_pieces):
            if types[i] != TOKEN_CONTROL:
                self.lookup.setdefault(piece, i)
        self.byte_ids: dict[int, int] = {}
        for i, t in enumerate(tok.tokens):
            m = BYTE_TOKEN.fullmatch(t)
            if m:
                self.byte_ids.setdefault(int(m.group(1), 16), i)
        self.types = types
        self.pieces = [self._display(i, types[i]) for i in range(len(tok))]
        self._sp = None
        if tok.sp_model is not None:
            import sentencepiece as spm

            try:
                self._sp = spm.SentencePieceProcessor(model_proto=tok.sp_model)
            except (RuntimeError, OSError) as e:
                raise ValidationError(f"the model's tokenizer.model cannot be loaded: {e}")

    def _display(self, i: int, kind: int, strip_space: bool = False) -> bytes:
        p = self.runc_pieces[i]
        if strip_space and p.startswith(b" "):
            p = p[1:]
        if kind == TOKEN_CONTROL:
            return b""
        m = BYTE_TOKEN.fullmatch(p)
        if m:
            return bytes([int(m.group(1), 16)])
        return p

    # -- encoding -------------------------------------------------------------------------------------
    @property
    def uses_sentencepiece(self) -> bool:
        return self._sp is not None

    def encode(self, text: str, bos: bool = True) -> list[int]:
        head = [self.bos_id] if bos and self.bos_id is not None else []
        if self._sp is not None:
            return head + [int(i) for i in self._sp.encode(text)]
        return head + self.encode_runc(text)

    def encode_runc(self, text: str) -> list[int]:
        """llama2.c run.c's encode of ``text`` (without BOS)."""
        data = text.encode("utf-8", errors="surrogateescape")
        ids: list[int] = []
        if data:
            prefix = self.lookup.get(b" ")
            if prefix is not None:
                ids.append(prefix)
        i = 0
        while i < len(data):
            j = i + 1
            # a codepoint: this byte plus following continuation bytes, at most 4 bytes in all
            while j < len(data) and (data[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            cp = data[i:j]
            tid = self.lookup.get(cp)
            if tid is not None:
                ids.append(tid)
            else:
                for byte in cp:
                    ids.append(self._byte_id(byte))
            i = j
        pieces = [self.runc_pieces[t] for t in ids]
        while len(ids) > 1:
            best, best_id, best_idx = _NO_SCORE, -1, -1
            for k in range(len(ids) - 1):
                tid = self.lookup.get(pieces[k] + pieces[k + 1])
                if tid is not None and self.scores[tid] > best:
                    best, best_id, best_idx = self.scores[tid], tid, k
            if best_idx < 0:
                break
            ids[best_idx:best_idx + 2] = [best_id]
            pieces[best_idx:best_idx + 2] = [self.runc_pieces[best_id]]
        return ids

    def _byte_id(self, byte: int) -> int:
        tid = self.byte_ids.get(byte)
        if tid is None:
            if self.tok.unk_id is None:
                raise UsageError(f"the text has byte 0x{byte:02X}, which the vocabulary cannot encode "
                                 "(no <0xHH> byte tokens and no <unk>)")
            return self.tok.unk_id
        return tid

    # -- decoding -------------------------------------------------------------------------------------
    def piece(self, prev: Optional[int], token: int) -> bytes:
        if prev is not None and prev == self.bos_id:
            p = self._display(token, self.types[token], strip_space=True)
        else:
            p = self.pieces[token]
        if len(p) == 1 and p[0] < 0x80 and not (0x20 <= p[0] < 0x7F or p in b" \t\n\v\f\r"):
            return b""
        return p

    def decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def decode(self, tokens: list[int]) -> str:
        d = self.decoder()
        out = [d.feed(prev, t) for prev, t in zip([None, *tokens[:-1]], tokens)]
        return "".join(out) + d.flush()


class StreamDecoder:
    """Pieces -> text as tokens arrive; a UTF-8 sequence split over byte tokens prints once complete."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, prev: Optional[int], token: int) -> str:
        return self._utf8.decode(self.codec.piece(prev, token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
