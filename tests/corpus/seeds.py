"""Fuzz seeds: small valid inputs, how to mutate them, and what "reading" them exercises.

A :class:`Seed` builds a valid input and names the one file in it that gets mutated (the input
itself, or a sidecar such as config.json beside it).  Mutations are lists of operations drawn by
hypothesis (``OPS``): byte flips, truncation, splices, copies of a chunk elsewhere, overwrites of
the integer fields of a binary header (``Seed.int_fields``), and structured edits that replace the
k-th value of a JSON text with a hostile literal (``Seed.retoken``; safetensors keeps its length
prefix right so the edit reaches the header parser).

:func:`exercise` reads the mutated input through the registered format, touches every tensor's
bytes and decoded values, the tokenizer and the architecture check; any exception other than
MconvError is a bug.

A new format adds seeds from ``tests/hostile_<name>.py`` by exposing ``fuzz_seeds() -> list[Seed]``.
:func:`mutator` turns a seed's file bytes into a function from a mutation list to new file bytes.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from corpus.builders import INDEX_NAME, meta_params, sp_model_bytes, valid_file, valid_hf_dir

IntFields = Callable[[bytes], Sequence[tuple[int, int]]]
Retoken = Callable[[bytes, int, bytes], Optional[bytes]]
#: layer(file bytes) -> (the payload to mutate, repack(payload) -> file bytes)
Layer = Callable[[bytes], tuple[bytes, Callable[[bytes], bytes]]]


def _no_fields(data: bytes) -> Sequence[tuple[int, int]]:
    return ()


@dataclass(frozen=True)
class Seed:
    #: the registered format whose reader reads ``build``'s input
    format: str
    name: str
    #: build(empty_dir) -> (path handed to the reader, path of the file to mutate)
    build: Callable[[str], tuple[str, str]]
    #: (offset, size) of little-endian integer fields of the file to mutate, given its bytes
    int_fields: IntFields = field(default=_no_fields)
    #: retoken(data, k, literal): data with its k-th (mod count) value token replaced, or None
    retoken: Optional[Retoken] = None
    #: mutate a payload inside the file instead of the file itself (a zip member, whose sizes and
    #: CRC-32 the repack keeps right so the mutation reaches the member's own parser);
    #: int_fields and retoken then apply to the payload
    layer: Optional[Layer] = None
    #: third-party plugins (corpus/plugins.py) that must be loaded to read it
    plugins: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.format}/{self.name}"


# ==================================================================================================
# structured edits
# ==================================================================================================

#: a JSON number, string, or literal
JSON_TOKEN = re.compile(rb'-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|"(?:[^"\\]|\\.)*"|true|false|null')


def json_retoken(data: bytes, k: int, literal: bytes) -> Optional[bytes]:
    tokens = list(JSON_TOKEN.finditer(data))
    if not tokens:
        return None
    m = tokens[k % len(tokens)]
    return data[:m.start()] + literal + data[m.end():]


def safetensors_int_fields(data: bytes) -> Sequence[tuple[int, int]]:
    return [(0, 8)]


def safetensors_retoken(data: bytes, k: int, literal: bytes) -> Optional[bytes]:
    """Edit the JSON header and fix the u64 length in front of it."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        return None
    header = json_retoken(data[8:8 + n], k, literal)
    if header is None:
        return None
    return struct.pack("<Q", len(header)) + header + data[8 + n:]


# ==================================================================================================
# built-in seeds
# ==================================================================================================

def _same(build: Callable[[str], str]) -> Callable[[str], tuple[str, str]]:
    def b(d: str) -> tuple[str, str]:
        path = build(d)
        return path, path
    return b


def _beside(build: Callable[[str], str], name: str) -> Callable[[str], tuple[str, str]]:
    def b(d: str) -> tuple[str, str]:
        root = build(d)
        return root, os.path.join(root, name)
    return b


def builtin_seeds() -> list[Seed]:
    hf = lambda **kw: (lambda d: valid_hf_dir(os.path.join(d, "m"), **kw))  # noqa: E731
    return [
        Seed("safetensors", "file", _same(valid_file), safetensors_int_fields, safetensors_retoken),
        Seed("safetensors", "shard", _beside(hf(shards=2), "model-00002-of-00002.safetensors"),
             safetensors_int_fields, safetensors_retoken),
        Seed("safetensors", "index", _beside(hf(shards=2), INDEX_NAME), retoken=json_retoken),
        Seed("safetensors", "config.json", _beside(hf(), "config.json"), retoken=json_retoken),
        Seed("safetensors", "params.json", _beside(hf(params=meta_params()), "params.json"), retoken=json_retoken),
        Seed("safetensors", "tokenizer.model", _beside(hf(sp=sp_model_bytes()), "tokenizer.model")),
    ]


def collect_seeds() -> list[Seed]:
    """Built-in seeds plus those of every ``tests/hostile_*.py`` exposing ``fuzz_seeds()``."""
    from corpus.make_corpus import hostile_modules

    seeds = builtin_seeds()
    for mod in hostile_modules():
        if hasattr(mod, "fuzz_seeds"):
            seeds.extend(mod.fuzz_seeds())
    ids = [s.id for s in seeds]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        raise ValueError(f"fuzz seeds defined twice: {dups}")
    return seeds


# ==================================================================================================
# mutations
# ==================================================================================================

INTERESTING_INTS = (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 100, 127, 128, 255, 256, 1023, 1024, 4095, 4096,
                    2**15 - 1, 2**15, 2**16 - 1, 2**16, 2**24, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**62,
                    2**63 - 1, 2**63, 2**64 - 1, -1, -2, -(2**31), -(2**63))

LITERALS = (b"0", b"-1", b"1", b"2", b"3", b"7", b"255", b"65536", b"4294967295", b"4294967296",
            b"18446744073709551615", b"18446744073709551616", b"1e999", b"-1e999", b"NaN", b"Infinity",
            b"1.5", b"-0.0", b"1e-400", b"true", b"false", b"null", b'""', b'"x"', b'"F16"', b'"BF16"',
            b'"I8"', b'"BOOL"', b'"F8_E5M2"', b'"U64"', b'"F64"', b"[]", b"{}", b"[0]", b"[0,0]", b"[1,1,1]",
            b"[-1]", b'{"a":"b"}', b'"model.safetensors"', b'"../x.safetensors"', b'"__metadata__"',
            b'"lm_head.weight"', b'"model.embed_tokens.weight"', b'"\\ud800"', b"[" * 64 + b"]" * 64,
            b"9" * 40, b"9" * 4301, b"[0,18446744073709551616]", b'"dtype"', b'"shape"', b'"data_offsets"', b'"mconv.hparams"', b'"mconv.tokenizer"')


def ops_strategy() -> Any:
    """A hypothesis strategy of mutation lists (1 to 4 operations)."""
    from hypothesis import strategies as st

    pos = st.integers(0, 2**32)
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("splice"), pos, st.integers(0, 64), st.binary(max_size=64)),
        st.tuples(st.just("copy"), pos, pos, st.integers(1, 512)),
        st.tuples(st.just("int"), st.integers(0, 64), st.sampled_from(INTERESTING_INTS), st.just(False)),
        st.tuples(st.just("int"), st.integers(0, 64), st.integers(-16, 16), st.just(True)),
        st.tuples(st.just("token"), st.integers(0, 2**16), st.sampled_from(LITERALS)),
        st.tuples(st.just("token"), st.integers(0, 2**16), st.binary(max_size=16)),
    )
    return st.lists(op, min_size=1, max_size=4)


def apply_ops(seed: Seed, data: bytes, ops: Sequence[tuple[Any, ...]]) -> bytes:
    for op in ops:
        kind, n = op[0], len(data)
        if kind == "flip" and n:
            p = op[1] % n
            data = data[:p] + bytes([data[p] ^ op[2]]) + data[p + 1:]
        elif kind == "truncate":
            data = data[: op[1] % (n + 1)]
        elif kind == "splice":
            p = op[1] % (n + 1)
            data = data[:p] + op[3] + data[p + op[2]:]
        elif kind == "copy" and n:
            src, dst = op[1] % n, op[2] % n
            chunk = data[src:src + op[3]]
            data = data[:dst] + chunk + data[dst + len(chunk):]
        elif kind == "int":
            fields = seed.int_fields(data)
            if fields:
                off, size = fields[op[1] % len(fields)]
                value = (n + op[2]) if op[3] else op[2]
                if off + size <= n:
                    data = data[:off] + (value % (1 << (8 * size))).to_bytes(size, "little") + data[off + size:]
        elif kind == "token" and seed.retoken is not None:
            edited = seed.retoken(data, op[1], op[2])
            if edited is not None:
                data = edited
    return data


def mutator(seed: Seed, original: bytes) -> Callable[[Sequence[tuple[Any, ...]]], bytes]:
    """ops -> the bytes to write to the seed's target file (through its layer, if it has one)."""
    if seed.layer is None:
        return lambda ops: apply_ops(seed, original, ops)
    payload, repack = seed.layer(original)
    return lambda ops: repack(apply_ops(seed, payload, ops))


# ==================================================================================================
# reading
# ==================================================================================================

def exercise(fmt_name: str, path: str) -> str:
    """Sniff ``path`` with every readable format, read it with ``fmt_name``, then touch every
    tensor, the tokenizer and the architecture check.  Returns "accepted", "refused" (MconvError
    from the reader) or "refused late" (MconvError while touching the data); anything else raises,
    warnings too (a RuntimeWarning of numpy would be a stray line on the user's terminal)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return _exercise(fmt_name, path)


def _exercise(fmt_name: str, path: str) -> str:
    from mconv.core.format import head_of
    from mconv.core.registry import get_registry
    from mconv.core.tokenizers import sentencepiece_bytes, tokenizer_to_json
    from mconv.plugins import MconvError, ReadContext

    reg = get_registry()
    head, size, is_dir = head_of(path)
    for entry in reg.formats.values():
        if entry.format.can_read:
            conf = entry.format.sniff(path, head, size, is_dir)
            assert isinstance(conf, (int, float)) and 0.0 <= conf <= 1.0, (entry.format.name, conf)
    ctx = ReadContext()
    try:
        model = reg.format(fmt_name).read(path, ctx)
    except MconvError:
        ctx.cache.close()
        return "refused"
    try:
        for t in model.tensors.values():
            raw = t.raw()
            assert raw.shape == (t.n_rows, t.row_bytes), (t.name, raw.shape)
            t.numpy()
        tok = model.tokenizer
        if tok is not None:
            assert len(tok.tokens) == len(tok.scores) == len(tok.token_types)
            tok.duplicates()
            tokenizer_to_json(tok)
            sentencepiece_bytes(tok)
        arch = reg.architectures.get(model.arch)
        if arch is not None and arch[0].check is not None:
            arch[0].check(model)
    except MconvError:
        return "refused late"
    finally:
        model.close()
    return "accepted"
