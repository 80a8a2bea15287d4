"""Malformed llama2.c inputs and the exact refusal each one must get (importable by fuzz tests).

Every case is a directory layout: ``files`` maps file names to bytes; the test reads ``target``
(a file name, or "" for the directory) and expects a FormatError whose text is
``<path of culprit>: [offset N: ]<message>``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

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
