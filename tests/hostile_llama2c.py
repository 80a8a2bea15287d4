"""Malformed llama2.c inputs and the exact refusal each one must get (importable by fuzz tests).

Every case is a directory layout: ``files`` maps file names to bytes; the test reads ``target``
(a file name, or "" for the directory) and expects a FormatError whose text is
``<path of culprit>: [offset N: ]<message>``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

MAGIC = struct.pack("<I", 0x616B3432)
INT_MAX = 2**31 - 1
#: a tiny valid configuration: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
TINY = (8, 16, 1, 2, 1, 4, 4)


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, bytes]
    target: str                 # file read ("" = the directory)
    culprit: str                # file named in the error
    offset: Optional[int]
    message: str

    def expected(self, root: str) -> str:
        import os

        where = f"offset {self.offset}: " if self.offset is not None else ""
        return f"{os.path.join(root, self.culprit) if self.culprit else root}: {where}{self.message}"


def v0_size(cfg: tuple[int, ...], shared: bool = True) -> int:
    d, h, L, nh, nkv, v, s = cfg
    kvd = d * nkv // nh
    return 28 + 4 * (v * d + L * (2 * d + 2 * d * d + 2 * kvd * d + 3 * h * d) + d + s * (d // nh) + (0 if shared else v * d))


def v1_size(cfg: tuple[int, ...], shared: bool = True) -> int:
    return v0_size(cfg, shared) - 28 + 256 - 4 * cfg[6] * (cfg[0] // cfg[3])


def v0_file(cfg: tuple[int, ...] = TINY, body: Optional[int] = None) -> bytes:
    """A v0 header and ``body`` bytes of float32 data (default: exactly what the header implies)."""
    head = struct.pack("<7i", *cfg)
    shared = cfg[5] > 0
    n = (v0_size((*cfg[:5], abs(cfg[5]), cfg[6]), shared) - 28) if body is None else body
    rng = np.random.default_rng(0)
    return head + rng.standard_normal(max(0, n) // 4).astype("<f4").tobytes()[:n]


def v12_header(version: int, cfg: tuple[int, ...], shared: int = 1, group_size: Optional[int] = None) -> bytes:
    head = MAGIC + struct.pack("<i", version) + struct.pack("<7i", *cfg) + struct.pack("<B", shared)
    if group_size is not None:
        head += struct.pack("<i", group_size)
    return head + b"\0" * (256 - len(head))


def tokenizer_bytes(tokens: list[bytes], max_len: Optional[int] = None, lengths: Optional[list[int]] = None) -> bytes:
    out = [struct.pack("<I", max(len(t) for t in tokens) if max_len is None else max_len)]
    for i, t in enumerate(tokens):
        out.append(struct.pack("<fI", -float(i), len(t) if lengths is None else lengths[i]))
        out.append(t)
    return b"".join(out)


GOOD_TOKENS = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" a"]


def model_cases() -> list[Case]:
    good = v0_file()
    size = len(good)
    cases = [
        Case("short_v0", {"m.bin": b"\x01" * 10}, "m.bin", "m.bin", None,
             "file of 10 bytes is too short for the 28-byte llama2.c header"),
        Case("zero_dim", {"m.bin": v0_file((0, *TINY[1:]), 64)}, "m.bin", "m.bin", 0, "dim 0 must be positive"),
        Case("negative_hidden", {"m.bin": v0_file((8, -16, *TINY[2:]), 64)}, "m.bin", "m.bin", 4,
             "hidden_dim -16 must be positive"),
        Case("negative_layers", {"m.bin": v0_file((8, 16, -1, *TINY[3:]), 64)}, "m.bin", "m.bin", 8,
             "n_layers -1 must be positive"),
        Case("zero_kv_heads", {"m.bin": v0_file((8, 16, 1, 2, 0, 4, 4), 64)}, "m.bin", "m.bin", 16,
             "n_kv_heads 0 must be positive"),
        Case("zero_vocab", {"m.bin": v0_file((*TINY[:5], 0, 4), 64)}, "m.bin", "m.bin", 20,
             "vocab_size 0 must be nonzero (its sign flags a shared classifier)"),
        Case("negative_seq_len", {"m.bin": v0_file((*TINY[:6], -4), 64)}, "m.bin", "m.bin", 24,
             "seq_len -4 must be positive"),
        Case("heads_not_dividing", {"m.bin": v0_file((10, 16, 1, 4, 1, 4, 4), 64)}, "m.bin", "m.bin", 12,
             "n_heads 4 does not divide dim 10"),
        Case("kv_not_dividing", {"m.bin": v0_file((8, 16, 1, 2, 3, 4, 4), 64)}, "m.bin", "m.bin", 16,
             "n_kv_heads 3 does not divide n_heads 2"),
        Case("odd_head", {"m.bin": v0_file((6, 16, 1, 2, 1, 4, 4), 64)}, "m.bin", "m.bin", 12,
             "head size 3 (dim 6 / n_heads 2) is odd; RoPE rotates pairs"),
        Case("truncated_v0", {"m.bin": good[:-4]}, "m.bin", "m.bin", None,
             f"llama2.c v0 header implies {size} bytes, file has {size - 4}"),
        Case("trailing_v0", {"m.bin": good + b"\0" * 4}, "m.bin", "m.bin", None,
             f"llama2.c v0 header implies {size} bytes, file has {size + 4}"),
        # header sizes that overflow 32/64-bit arithmetic: Python ints, compared with the file size
        Case("overflow_v0", {"m.bin": v0_file((1 << 30, INT_MAX, INT_MAX, 1 << 29, 1 << 29, -INT_MAX, INT_MAX), 8)},
             "m.bin", "m.bin", None,
             f"llama2.c v0 header implies {v0_size((1 << 30, INT_MAX, INT_MAX, 1 << 29, 1 << 29, INT_MAX, INT_MAX), False)}"
             " bytes, file has 36"),
        Case("wrong_version", {"m.bin": MAGIC + struct.pack("<i", 3) + b"\0" * 248}, "m.bin", "m.bin", 4,
             "unsupported llama2.c version 3 (known: 1 and 2 after the magic; version 0 files have no magic)"),
        Case("negative_version", {"m.bin": MAGIC + struct.pack("<i", -1) + b"\0" * 248}, "m.bin", "m.bin", 4,
             "unsupported llama2.c version -1 (known: 1 and 2 after the magic; version 0 files have no magic)"),
        # a v1 file whose magic is damaged is taken for v0, whose header then makes no sense
        Case("wrong_magic", {"m.bin": b"25ka" + v12_header(1, TINY)[4:] + b"\0" * (v1_size(TINY) - 256)}, "m.bin",
             "m.bin", 12, f"n_heads 16 does not divide dim {int.from_bytes(b'25ka', 'little')}"),
        Case("short_v1", {"m.bin": MAGIC + struct.pack("<i", 1) + struct.pack("<7i", *TINY)}, "m.bin", "m.bin", None,
             "file of 36 bytes is too short for the 256-byte llama2.c v1 header"),
        Case("bad_shared_flag", {"m.bin": v12_header(1, TINY, shared=2)}, "m.bin", "m.bin", 36,
             "shared_classifier byte 2 must be 0 or 1"),
        Case("v1_negative_vocab", {"m.bin": v12_header(1, (*TINY[:5], -4, 4))}, "m.bin", "m.bin", 28,
             "vocab_size -4 must be positive"),
        Case("truncated_v1", {"m.bin": v12_header(1, TINY) + b"\0" * (v1_size(TINY) - 256 - 1)}, "m.bin", "m.bin",
             None, f"llama2.c v1 header implies {v1_size(TINY)} bytes, file has {v1_size(TINY) - 1}"),
        Case("v2_zero_group", {"m.bin": v12_header(2, TINY, group_size=0)}, "m.bin", "m.bin", 37,
             "group_size 0 must be positive"),
        Case("v2_negative_group", {"m.bin": v12_header(2, TINY, group_size=-64)}, "m.bin", "m.bin", 37,
             "group_size -64 must be positive"),
        Case("v2_group_not_dividing_dim", {"m.bin": v12_header(2, TINY, group_size=3)}, "m.bin", "m.bin", 37,
             "group_size 3 does not divide dim 8"),
        Case("overflow_v2", {"m.bin": v12_header(2, (1 << 30, INT_MAX, INT_MAX, 1 << 29, 1 << 29, INT_MAX, INT_MAX),
                                                 group_size=2)}, "m.bin", "m.bin", None,
             f"llama2.c v2 header implies {v2_size((1 << 30, INT_MAX, INT_MAX, 1 << 29, 1 << 29, INT_MAX, INT_MAX), 2)}"
             " bytes, file has 256"),
    ]
    return cases


def v2_size(cfg: tuple[int, ...], gs: int, shared: bool = True) -> int:
    d, h, L, nh, nkv, v, s = cfg
    kvd = d * nkv // nh
    numel = v * d + L * (2 * d * d + 2 * kvd * d + 3 * h * d) + (0 if shared else v * d)
    return 256 + 4 * (2 * L * d + d) + numel + 4 * (numel // gs)


def tokenizer_cases() -> list[Case]:
    model = {"model.bin": v0_file()}
    full = tokenizer_bytes(GOOD_TOKENS)
    two = tokenizer_bytes(GOOD_TOKENS[:2], max_len=6)
    huge = tokenizer_bytes(GOOD_TOKENS[:1]) + struct.pack("<fI", 0.0, 0xFFFFFFFF) + b"xx"
    over = tokenizer_bytes(GOOD_TOKENS, max_len=5)
    return [
        Case("tok_empty", {**model, "tokenizer.bin": b""}, "", "tokenizer.bin", None,
             "file of 0 bytes is too short for the 4-byte max_token_length"),
        Case("tok_too_few", {**model, "tokenizer.bin": two}, "", "tokenizer.bin", len(two),
             "tokenizer.bin ends after 2 tokens; the model's vocab_size is 4"),
        Case("tok_truncated_entry", {**model, "tokenizer.bin": full[:-1]}, "", "tokenizer.bin", len(full) - 2 - 4,
             f"token 3: length 2 runs past the end of the file ({len(full) - 1} bytes)"),
        Case("tok_huge_length", {**model, "tokenizer.bin": huge}, "", "tokenizer.bin", 4 + 8 + 5 + 4,
             f"token 1: length 4294967295 runs past the end of the file ({len(huge)} bytes)"),
        Case("tok_over_max_length", {**model, "tokenizer.bin": over}, "", "tokenizer.bin", 4 + 8 + 5 + 8 + 5 + 4,
             "token 2: length 6 exceeds max_token_length 5"),
    ]


def all_cases() -> list[Case]:
    return model_cases() + tokenizer_cases()


# ==================================================================================================
# small valid inputs (the fuzz seeds), more cases, and the corpus / fuzz hooks
# ==================================================================================================

def _floats(n_bytes: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).standard_normal(n_bytes // 4).astype("<f4").tobytes()


def v1_file(cfg: tuple[int, ...] = TINY) -> bytes:
    return v12_header(1, cfg) + _floats(v1_size(cfg) - HEADER)


def v2_file(cfg: tuple[int, ...] = TINY, group_size: int = 8) -> bytes:
    """A v2 file: float32 norms, then per matrix its int8 values and float32 scales (random bytes
    for the values, scales near 0.01 so every value is finite)."""
    body = bytearray(np.random.default_rng(2).integers(-127, 128, v2_size(cfg, group_size) - HEADER,
                                                       dtype=np.int8).tobytes())
    d, h, L, nh, nkv, v, s = cfg
    norms = 4 * (2 * L * d + d)
    body[:norms] = _floats(norms)
    kvd = d * nkv // nh
    pos = norms
    for numel in [v * d] + [d * d] * L + [kvd * d] * L * 2 + [d * d] * L + [h * d] * L * 3:
        pos += numel
        scales = np.full(numel // group_size, 0.01, "<f4").tobytes()
        body[pos:pos + len(scales)] = scales
        pos += len(scales)
    return v12_header(2, cfg, group_size=group_size) + bytes(body)


HEADER = 256


def header_int_fields(data: bytes) -> list[tuple[int, int]]:
    """The header integers: v0's 7 int32, or v1/v2's magic, version, 7 int32, flag byte and group size."""
    if data[:4] == MAGIC:
        return [(0, 4), (4, 4)] + [(8 + 4 * i, 4) for i in range(7)] + [(36, 1), (37, 4)]
    return [(4 * i, 4) for i in range(7)]


def tokenizer_int_fields(data: bytes) -> list[tuple[int, int]]:
    """max_token_length and every entry's score and length, as far as the lengths lead."""
    fields = [(0, 4)]
    pos = 4
    while pos + 8 <= len(data) and len(fields) < 4096:
        fields += [(pos, 4), (pos + 4, 4)]
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    return fields


def _dir(files: dict[str, bytes]) -> "Callable[[str], str]":
    import os

    def build(d: str) -> str:
        root = os.path.join(d, "m")
        os.makedirs(root)
        for name, blob in files.items():
            with open(os.path.join(root, name), "wb") as f:
                f.write(blob)
        return root
    return build


def _sparse(cfg: tuple[int, ...], tokenizer: int = 0) -> "Callable[[str], str]":
    """A v0 model.bin of ``cfg`` whose body is a hole (sparse: its size costs no disk) and, if
    ``tokenizer``, a tokenizer.bin of that many empty tokens, a hole too."""
    import os

    def build(d: str) -> str:
        root = os.path.join(d, "m")
        os.makedirs(root)
        with open(os.path.join(root, "model.bin"), "wb") as f:
            f.write(struct.pack("<7i", *cfg))
            f.truncate(v0_size(cfg))
        if tokenizer:
            with open(os.path.join(root, "tokenizer.bin"), "wb") as f:
                f.truncate(4 + 8 * tokenizer)
        return root
    return build


def extra_cases() -> list[Case]:
    """v1/v2 faults not covered above, and tokenizer.bin sizes."""
    full = tokenizer_bytes(GOOD_TOKENS)
    model = {"model.bin": v0_file()}
    return [
        Case("v2_truncated", {"m.bin": v2_file()[:-3]}, "m.bin", "m.bin", None,
             f"llama2.c v2 header implies {v2_size(TINY, 8)} bytes, file has {v2_size(TINY, 8) - 3}"),
        Case("v2_trailing", {"m.bin": v2_file() + b"\0"}, "m.bin", "m.bin", None,
             f"llama2.c v2 header implies {v2_size(TINY, 8)} bytes, file has {v2_size(TINY, 8) + 1}"),
        Case("v1_zero_heads", {"m.bin": v12_header(1, (8, 16, 1, 0, 1, 4, 4))}, "m.bin", "m.bin", 20,
             "n_heads 0 must be positive"),
        Case("v1_trailing", {"m.bin": v1_file() + b"\0" * 4}, "m.bin", "m.bin", None,
             f"llama2.c v1 header implies {v1_size(TINY)} bytes, file has {v1_size(TINY) + 4}"),
        Case("tok_length_over_int32", {**model, "tokenizer.bin": full[:4 + 8 + 5] + struct.pack("<fI", 0.0, 1 << 31)},
             "", "tokenizer.bin", 4 + 8 + 5 + 4,
             f"token 1: length {1 << 31} runs past the end of the file ({4 + 8 + 5 + 8} bytes)"),
        Case("tok_short_max_length", {**model, "tokenizer.bin": b"\x05\x00"}, "", "tokenizer.bin", None,
             "file of 2 bytes is too short for the 4-byte max_token_length"),
    ]


def fuzz_seeds() -> list:
    from corpus.seeds import Seed

    def in_dir(files: dict[str, bytes], target: str) -> "Callable[[str], tuple[str, str]]":
        import os

        def build(d: str) -> tuple[str, str]:
            root = _dir(files)(d)
            return root, os.path.join(root, target)
        return build

    tok = tokenizer_bytes(GOOD_TOKENS + [b"<0x0A>"])
    return [
        Seed("llama2c", "v0", in_dir({"model.bin": v0_file(), "tokenizer.bin": tok}, "model.bin"),
             header_int_fields),
        Seed("llama2c", "v0-unshared", in_dir({"model.bin": v0_file((*TINY[:5], -TINY[5], TINY[6]))}, "model.bin"),
             header_int_fields),
        Seed("llama2c", "v1", in_dir({"model.bin": v1_file(), "tokenizer.bin": tok}, "model.bin"), header_int_fields),
        Seed("llama2c", "v2", in_dir({"model.bin": v2_file()}, "model.bin"), header_int_fields),
        Seed("llama2c", "tokenizer.bin", in_dir({"model.bin": v0_file(), "tokenizer.bin": tok}, "tokenizer.bin"),
             tokenizer_int_fields),
    ]


def corpus_cases() -> list:
    """Every case (model files and tokenizer.bin counted apart), read with --from llama2c, with its
    exact message."""
    import os

    from corpus.make_corpus import Case as CorpusCase

    def build(case: Case) -> "Callable[[str], tuple[str, str]]":
        def b(d: str) -> tuple[str, str]:
            root = _dir(case.files)(d)
            return (os.path.join(root, case.target) if case.target else root), case.expected(root)
        return b

    cases = [CorpusCase("tokenizer.bin" if c.name.startswith("tok_") else "llama2c", c.name, build(c), c.message,
                        read_args=("--from", "llama2c")) for c in all_cases() + extra_cases()]
    # sizes a file can claim cheaply (holes) but that would cost a Python object per token or tensor
    from mconv.core.limits import MAX_TENSORS, MAX_TOKENS

    n_vocab, n_layers = MAX_TOKENS + 1, (MAX_TENSORS - 3) // 9 + 1
    cases.append(CorpusCase("tokenizer.bin", "tok_vocab_over_limit", _sparse((2, 2, 1, 1, 1, n_vocab, 1), n_vocab),
                            f"tokenizer.bin: {n_vocab} tokens exceed mconv's limit of {MAX_TOKENS} per vocabulary",
                            read_args=("--from", "llama2c")))
    cases.append(CorpusCase("llama2c", "v0_layers_over_limit", _sparse((2, 2, n_layers, 1, 1, 4, 1)),
                            f"model.bin: offset 8: {9 * n_layers + 3} tensors exceed mconv's limit of {MAX_TENSORS} "
                            "per file", read_args=("--from", "llama2c")))
    return cases
