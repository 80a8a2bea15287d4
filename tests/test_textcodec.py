"""Prompt encoding (llama2.c run.c's encode over the IR vocabulary, or sentencepiece) and streamed
decoding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from testlib import corpus_text, sentencepiece_model, sp_tokenizer

from mconv.core.ir import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, Tokenizer
from mconv.core.textcodec import TextCodec

TEXTS = [
    "Return the value of the attribute.",
    "café naïve — “quotes” ü",
    "日本語のテキスト 🎉 and emoji 🐍",
    "  two  leading spaces, trailing  ",
    "tabs\tand\nnewlines\r\n",
    "x",
    "Ünïcödé ñ 1234567890 3.14159",
    "<s> is not BOS </s> <unk> <0x41>",
]


@pytest.fixture(scope="module")
def sp():  # noqa: ANN201
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=sentencepiece_model())


def test_runc_encode_matches_sentencepiece(sp) -> None:  # noqa: ANN001
    codec = TextCodec(dataclasses.replace(sp_tokenizer(), sp_model=None))
    assert not codec.uses_sentencepiece
    lines = [ln for ln in corpus_text().splitlines() if ln.strip()][:150]
    for text in TEXTS + lines:
        assert codec.encode_runc(text) == sp.encode(text), text
        assert codec.encode(text) == [1] + sp.encode(text)
    assert codec.encode("") == [1]


def test_sentencepiece_path_is_used_when_the_model_has_one(sp) -> None:  # noqa: ANN001
    codec = TextCodec(sp_tokenizer())
    assert codec.uses_sentencepiece
    for text in TEXTS:
        assert codec.encode(text) == [1] + sp.encode(text)


def test_decode_streams_utf8_across_byte_tokens_and_strips_space_after_bos(sp) -> None:  # noqa: ANN001
    codec = TextCodec(sp_tokenizer())
    for text in TEXTS[:4] + TEXTS[6:7]:
        ids = codec.encode(text)
        assert codec.decode(ids) == sp.decode(ids[1:]), text
    # a 4-byte character arrives as four byte tokens: nothing prints until it is whole
    ids = codec.encode("🐍")
    assert len(ids) >= 5
    d = codec.decoder()
    parts = [d.feed(p, t) for p, t in zip([None, *ids[:-1]], ids)]
    assert parts[-1] == "🐍" and "".join(parts[:-1]) == ""


def _toy_vocab() -> Tokenizer:
    """A llama2.c-style vocabulary without a tokenizer.model: <unk> <s> </s>, bytes, pieces, merges."""
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    pieces = ["\u2581", "a", "b", "c", "ab", "\u2581a", "\u2581ab", "bc", "abc", "\u2581abc", "é", "ca"]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -10.0, -20.0, -30.0, -5.0, -8.0, -40.0, -6.0, -5.0]
    tokens += [p.encode() for p in pieces]
    types += [TOKEN_NORMAL] * len(pieces)
    return Tokenizer("llama", tuple(tokens), np.array(scores, np.float32), np.array(types, np.int32),
                     bos_id=1, eos_id=2, unk_id=0)


def test_runc_encode_rules_on_a_hand_made_vocabulary() -> None:
    codec = TextCodec(_toy_vocab())
    ids = {t.decode(): i for i, t in enumerate(codec.tok.tokens)}
    # dummy prefix "▁", then always the best-scoring pair: ▁ a b c -> ▁ a bc (-5) -> ▁ abc (-8) -> ▁abc (-40)
    assert codec.encode_runc("abc") == [ids["\u2581abc"]]
    # ▁ a b ▁ c -> ▁ ab ▁ c (-10) -> ▁ab ▁ c (-30); "b▁" and "▁c" are no tokens
    assert codec.encode_runc("ab c") == [ids["\u2581ab"], ids["\u2581"], ids["c"]]
    # equal scores (bc and ca are both -5): the leftmost pair merges
    assert codec.encode_runc("bca") == [ids["\u2581"], ids["bc"], ids["a"]]
    # "é" is a token; "ü" is not: it falls back to its two UTF-8 bytes
    assert codec.encode_runc("é") == [ids["\u2581"], ids["é"]]
    assert codec.encode_runc("ü") == [ids["\u2581"], 3 + 0xC3, 3 + 0xBC]
    assert codec.encode("") == [1]


def test_decode_rules() -> None:
    codec = TextCodec(_toy_vocab())
    ids = {t.decode(): i for i, t in enumerate(codec.tok.tokens)}
    assert codec.piece(1, ids["\u2581abc"]) == b"abc"           # space stripped after BOS
    assert codec.piece(ids["a"], ids["\u2581abc"]) == b" abc"
    assert codec.piece(None, 2) == b""                           # control tokens print nothing
    assert codec.piece(None, 3 + 0x07) == b""                    # non-printing ASCII byte dropped (run.c)
    assert codec.piece(None, 3 + 0x0A) == b"\n"
    assert codec.decode([1, ids["\u2581a"], 3 + 0xC3, 3 + 0xBC, ids["bc"]]) == "aübc"
