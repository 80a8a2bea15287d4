#!/usr/bin/env python3
"""The malformed-input corpus: recipes, not blobs.

Each :class:`Case` is a name, a builder that writes a hostile input into an empty directory (and
returns the path to hand to mconv), and a substring of the one-line error mconv must give for it.
A builder may instead return ``(path, message)``: then the error line must be exactly
``mconv: error: <message>`` (the hostile modules of the formats know their exact offsets).
``tests/test_corpus.py`` builds every case into a temporary directory and runs ``mconv translate CASE
OUT.safetensors`` and ``mconv inspect CASE`` on it in memory- and time-limited subprocesses; both
must end with exactly one ``mconv: error: ...`` line containing the substring, exit code 2, no
traceback, no output and no temporary file.

Built-in recipes cover what exists today (safetensors, config.json, params.json, tokenizer.model,
and generic input paths).  Another format contributes cases from ``tests/hostile_<name>.py`` by
exposing ``corpus_cases() -> list[Case]`` (see ``corpus/__init__.py``); :func:`collect_cases`
imports every such module.

As a script::

    python tests/corpus/make_corpus.py OUTDIR [--format F]... [--list] [--run]

writes each case under ``OUTDIR/<format>/<name>/`` plus ``OUTDIR/manifest.json`` (case id, input
path, commands, expected message); ``--run`` also runs them like the test does and prints a summary.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import struct
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

if __name__ == "__main__":  # run as a script: make tests/ importable like pytest's pythonpath does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from corpus.builders import (  # noqa: E402
    DROP,
    INDEX_NAME,
    TINY,
    StTensor,
    deterministic_bytes,
    hf_config,
    hf_tensors,
    meta_params,
    mconv_metadata,
    pack_safetensors,
    sp_model_bytes,
    st_header,
    valid_file,
    valid_hf_dir,
    write_bytes,
    write_json,
)

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("translate", "inspect")


@dataclass(frozen=True)
class Case:
    #: what is malformed: a reader's name ("safetensors") or a sidecar ("config.json"); summaries count by it
    format: str
    #: unique within ``format``, usable as a directory name
    name: str
    #: build(empty_dir) writes the input under empty_dir and returns the path mconv opens (or that
    #: path and the exact message)
    build: Callable[[str], "str | tuple[str, str]"]
    #: substring of the ``mconv: error:`` line every command must print
    expect: str
    #: the commands that must refuse it (``inspect`` reads without the architecture check, so a
    #: file whose only fault is a tensor set that does not fit its hparams is refused by translate only)
    commands: tuple[str, ...] = COMMANDS
    #: read options placed before the input, e.g. ("--from", "safetensors") to reach a reader that
    #: would not sniff the file
    read_args: tuple[str, ...] = ()
    #: the translate output's file name (inside an empty directory of its own)
    output: str = "OUT.safetensors"
    #: third-party plugins (corpus/plugins.py) the run must load, e.g. ("npz",)
    plugins: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.format}/{self.name}"

    def argv(self, command: str, input_path: str, output_path: str) -> list[str]:
        if command == "translate":
            return ["translate", *self.read_args, input_path, output_path]
        return [command, *self.read_args, input_path]


# ==================================================================================================
# builder helpers
# ==================================================================================================

Builder = Callable[[str], str]


def _file(name: str, content: bytes | str | Callable[[], bytes | str]) -> Builder:
    def build(d: str) -> str:
        return write_bytes(os.path.join(d, name), content() if callable(content) else content)
    return build


def _st_raw(header: bytes | str, data: bytes = b"", size: Optional[int] = None, pad: bool = True) -> Builder:
    return _file("model.safetensors", lambda: pack_safetensors(header, data, size=size, pad=pad))


def _model_header(tokenizer: bool = False) -> tuple[dict[str, Any], bytes]:
    return st_header(hf_tensors(), mconv_metadata(tokenizer=tokenizer))


def _st_model(mutate: Callable[[dict[str, Any], bytes], Any], tokenizer: bool = False) -> Builder:
    """The tiny model's header (self-contained: mconv.hparams in __metadata__), bent by
    ``mutate(header, data)``, which edits the header in place or returns (header_or_text, data)."""
    def build(d: str) -> str:
        header, data = _model_header(tokenizer)
        res = mutate(header, data)
        if res is not None:
            header, data = res
        return write_bytes(os.path.join(d, "model.safetensors"), pack_safetensors(header, data))
    return build


def _entries(header: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for k, v in header.items() if k != "__metadata__"]


def _first(field: str, value: Any) -> Callable[[dict[str, Any], bytes], None]:
    def mutate(header: dict[str, Any], data: bytes) -> None:
        entry = _entries(header)[0]
        if value is DROP:
            del entry[field]
        else:
            entry[field] = value
    return mutate


def _meta(key: str, value: str) -> Callable[[dict[str, Any], bytes], None]:
    def mutate(header: dict[str, Any], data: bytes) -> None:
        header["__metadata__"][key] = value
    return mutate


def _tok_json(**changes: Any) -> str:
    from mconv.core.tokenizers import tokenizer_from_sentencepiece, tokenizer_to_json

    tok = tokenizer_to_json(tokenizer_from_sentencepiece(sp_model_bytes()))
    for k, v in changes.items():
        if v is DROP:
            tok.pop(k)
        else:
            tok[k] = v
    return json.dumps(tok)


def _shift(index: int, delta: int) -> Callable[[dict[str, Any], bytes], None]:
    """Move tensor ``index`` (in data order) by ``delta`` bytes, keeping its span."""
    def mutate(header: dict[str, Any], data: bytes) -> None:
        entry = _entries(header)[index]
        b, e = entry["data_offsets"]
        entry["data_offsets"] = [b + delta, e + delta]
    return mutate


def _hf_dir(config: Optional[Mapping[str, Any]] = None, params: Optional[Mapping[str, Any]] = None,
            config_text: Optional[bytes | str] = None, params_text: Optional[bytes | str] = None,
            sp: Optional[bytes | Callable[[str], None]] = None, shards: int = 1,
            edit: Optional[Callable[[str], None]] = None) -> Builder:
    """An HF-style directory (see builders.valid_hf_dir) with one sidecar replaced."""
    def build(d: str) -> str:
        root = os.path.join(d, "model")
        valid_hf_dir(root, config=config, params=params, shards=shards,
                     sp=sp if isinstance(sp, bytes) else None)
        if config_text is not None:
            write_bytes(os.path.join(root, "config.json"), config_text)
        if params_text is not None:
            os.remove(os.path.join(root, "config.json"))
            write_bytes(os.path.join(root, "params.json"), params_text)
        if callable(sp):
            sp(os.path.join(root, "tokenizer.model"))
        if edit is not None:
            edit(root)
        return root
    return build


def _deep_json(depth: int = 100_000) -> str:
    return '{"a": ' + "[" * depth + "]" * depth + "}"


def _big_json(size: int = (16 << 20) + 16) -> bytes:
    return b'{"pad": "' + b" " * size + b'"}'


def _huge_int(digits: int = 5000) -> str:
    return "9" * digits


# ==================================================================================================
# safetensors
# ==================================================================================================

ST = ("--from", "safetensors")
# a header entry that is fine on its own: one f32 of 4 bytes
ONE = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def _two_shard_edit(fn: Callable[[str, dict[str, Any]], None]) -> Callable[[str], None]:
    """Edit the index of a two-shard directory: fn(root, index)."""
    def edit(root: str) -> None:
        path = os.path.join(root, INDEX_NAME)
        with open(path) as f:
            index = json.load(f)
        fn(root, index)
        write_json(path, index)
    return edit


def _index_shard(value: Any, tensor: str = "model.embed_tokens.weight") -> Callable[[str], None]:
    """The index names ``value`` as the shard of ``tensor`` (which lives in shard 1)."""
    def fn(root: str, index: dict[str, Any]) -> None:
        index["weight_map"][tensor] = value
    return _two_shard_edit(fn)


def _index_replace(text: bytes | str) -> Callable[[str], None]:
    def edit(root: str) -> None:
        write_bytes(os.path.join(root, INDEX_NAME), text)
    return edit


def _shard_path(root: str, i: int, n: int = 2) -> str:
    return os.path.join(root, f"model-{i:05d}-of-{n:05d}.safetensors")


def _replace_shard(i: int, make: Callable[[str], None]) -> Callable[[str], None]:
    def edit(root: str) -> None:
        path = _shard_path(root, i)
        os.remove(path)
        make(path)
    return edit


def _tensor_in_both_shards(root: str) -> None:
    """Shard 2 gets a copy of shard 1's first tensor as well."""
    first = hf_tensors()[0]
    path = _shard_path(root, 2)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    tensors = [StTensor(first.name, first.dtype, first.shape, first.data)]
    for name, e in header.items():
        b, end = e["data_offsets"]
        tensors.append(StTensor(name, e["dtype"], tuple(e["shape"]), data[b:end]))
    h, d = st_header(tensors, meta)
    write_bytes(path, pack_safetensors(h, d))


def _mkfifo(path: str) -> None:
    os.mkfifo(path)


def safetensors_cases() -> list[Case]:
    F = "safetensors"
    big = 2**62

    def c(name: str, build: Builder, expect: str, **kw: Any) -> Case:
        kw.setdefault("read_args", ST)
        return Case(F, name, build, expect, **kw)

    header_ok, _ = _model_header()
    text_ok = json.dumps(header_ok, separators=(",", ":"))
    return [
        # -- the 8-byte size and the header bytes ------------------------------------------------
        c("empty_file", _file("model.safetensors", b""), "file of 0 bytes is too short for the 8-byte header size"),
        c("short_file", _file("model.safetensors", b"\x10\x00\x00"), "too short for the 8-byte header size"),
        c("header_size_huge", _st_raw(b"{}", size=2**64 - 1), "exceeds the 100000000-byte limit"),
        c("header_size_over_limit", _st_raw(b"{}", size=100_000_001), "exceeds the 100000000-byte limit"),
        c("header_size_past_eof", _st_raw(b"{}", size=4096), "runs past the end of the file"),
        c("header_size_zero", _st_raw(b"", pad=False), "header is not a JSON object"),
        c("header_not_json", _st_raw(b"{this is not json}"), "header is not valid JSON"),
        c("header_truncated_json", _st_raw(text_ok[: len(text_ok) // 2]), "header is not valid JSON"),
        c("header_trailing_garbage", _st_raw(text_ok + "xyz"), "header is not valid JSON (Extra data"),
        c("header_nul_bytes", _st_raw(b"\0" * 16), "header is not a JSON object"),
        c("header_array", _st_raw(b"[1, 2, 3]"), "header is not a JSON object"),
        c("header_string", _st_raw(b'"model"'), "header is not a JSON object"),
        c("header_bom", _st_raw("\ufeff" + text_ok), "header is not a JSON object"),
        c("header_not_utf8", _st_raw(b'{"\xff\xfe": 1}'), "header is not UTF-8"),
        c("header_lone_surrogate", _st_raw(b'{"\xed\xa0\x80": 1}'), "header is not UTF-8"),
        c("header_nested_deep", _st_raw(_deep_json()), "header JSON nests too deeply"),
        c("header_huge_int_literal",
          _st_raw('{"x": {"dtype": "F32", "shape": [' + _huge_int() + '], "data_offsets": [0, 4]}}', b"\0" * 4),
          "header is not valid JSON (Exceeds the limit (4300 digits)"),
        c("header_too_many_values",
          _st_raw('{"x": {"dtype": "U8", "shape": [%s], "data_offsets": [0, 1]}}' % ",".join(["1"] * 1_000_001), b"\0"),
          "header holds up to 1000008 JSON values; mconv reads at most 1000000"),
        c("header_many_long_strings_ok_but_shape_bad",
          _st_raw('{"__metadata__": {"a": "%s"}, "x": {"dtype": "U8", "shape": "[1]", "data_offsets": [0, 1]}}'
                  % (",[{" * 400_000), b"\0"), "tensor 'x': shape '[1]' is not a list of non-negative integers"),
        c("duplicate_names", _st_raw('{"x": %s, "x": %s}' % (json.dumps(ONE), json.dumps(ONE)), b"\0" * 4),
          "header names 'x' twice"),
        c("duplicate_metadata_key", _st_raw('{"__metadata__": {"k": "a", "k": "b"}, "x": %s}' % json.dumps(ONE),
                                            b"\0" * 4), "header names 'k' twice"),
        # -- one tensor entry ---------------------------------------------------------------------
        c("entry_not_object", _st_raw('{"x": [1, 2]}'), "tensor 'x': entry is not an object"),
        c("entry_unknown_field", _st_model(_first("offsets", [0, 4])), "unknown field(s) ['offsets']"),
        c("empty_name", _st_raw('{"": %s}' % json.dumps(ONE), b"\0" * 4), "empty tensor name"),
        c("dtype_unknown", _st_model(_first("dtype", "F128")), "unsupported dtype 'F128'"),
        c("dtype_lowercase", _st_model(_first("dtype", "f32")), "unsupported dtype 'f32'"),
        c("dtype_not_string", _st_model(_first("dtype", 4)), "dtype missing or not a string"),
        c("dtype_missing", _st_model(_first("dtype", DROP)), "dtype missing or not a string"),
        c("dtype_wrong_size", _st_model(_first("dtype", "F16")), "of F16 needs"),
        c("shape_not_list", _st_model(_first("shape", "32x16")), "is not a list of non-negative integers"),
        c("shape_missing", _st_model(_first("shape", DROP)), "shape None is not a list of non-negative integers"),
        c("shape_negative", _st_model(_first("shape", [-32, -16])), "is not a list of non-negative integers"),
        c("shape_bool", _st_model(_first("shape", [True, 16])), "is not a list of non-negative integers"),
        c("shape_float", _st_model(_first("shape", [32.0, 16])), "is not a list of non-negative integers"),
        c("shape_null_dim", _st_model(_first("shape", [None, 16])), "is not a list of non-negative integers"),
        c("shape_too_many_dims", _st_model(_first("shape", [1] * 65)), "shape has 65 dimensions; at most 64"),
        c("shape_long_list_message", _st_model(_first("shape", [-1] * 1000)),
          f"shape {repr([-1] * 1000)[:97]}... is not a list of non-negative integers"),
        c("shape_times_dtype_not_span", _st_model(_first("shape", [31, 16])),
          "shape [31, 16] of F32 needs 1984 bytes but data_offsets span 2048"),
        c("shape_overflow", _st_model(_first("shape", [big, big, 16])), "but data_offsets span 2048"),
        c("shape_zero_huge", _st_raw('{"x": {"dtype": "F32", "shape": [0, %d], "data_offsets": [0, 0]}}' % 2**64),
          "shape [0, 18446744073709551616] is too large"),
        c("offsets_missing", _st_model(_first("data_offsets", DROP)), "is not a pair of non-negative integers"),
        c("offsets_not_list", _st_model(_first("data_offsets", "0-2048")), "is not a pair of non-negative integers"),
        c("offsets_three", _st_model(_first("data_offsets", [0, 2048, 4096])), "is not a pair of non-negative integers"),
        c("offsets_negative", _st_model(_first("data_offsets", [-2048, 0])), "is not a pair of non-negative integers"),
        c("offsets_bool", _st_raw('{"x": {"dtype": "BOOL", "shape": [1], "data_offsets": [false, true]}}', b"\1"),
          "is not a pair of non-negative integers"),
        c("offsets_float", _st_model(_first("data_offsets", [0.0, 2048.0])), "is not a pair of non-negative integers"),
        c("offsets_reversed", _st_raw('{"x": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}', b"\0" * 4),
          "data_offsets [4, 0] end before they begin"),
        # -- the layout of the data buffer ----------------------------------------------------------
        c("offsets_overlap", _st_model(_shift(1, -4)), "overlaps the previous tensor"),
        c("offsets_gap", _st_model(_shift(1, 4)), "leaves a gap after offset"),
        c("offsets_not_from_zero", _st_model(_shift(0, 8)), "leaves a gap after offset 0"),
        c("offsets_past_eof", _st_raw('{"x": {"dtype": "F32", "shape": [%d], "data_offsets": [0, %d]}}' % (2**38, 2**40),
                                      b"\0" * 64), "tensors cover 1099511627776 bytes of data but the file holds 64"),
        c("data_truncated", _st_model(lambda h, d: (h, d[:-4])), "bytes of data but the file holds"),
        c("data_trailing", _st_model(lambda h, d: (h, d + b"\0" * 8)), "bytes of data but the file holds"),
        c("all_tensors_same_offsets", _st_model(_same_offsets), "overlaps the previous tensor"),
        # -- __metadata__ ---------------------------------------------------------------------------
        c("metadata_not_strings", _st_model(_meta("n", 1)), "__metadata__ must map strings to strings"),   # type: ignore[arg-type]
        c("metadata_nested", _st_model(_meta("n", {"a": "b"})), "__metadata__ must map strings to strings"),  # type: ignore[arg-type]
        c("metadata_list", _st_model(lambda h, d: h.update({"__metadata__": []})), "__metadata__ must map strings to strings"),
        c("metadata_string", _st_model(lambda h, d: h.update({"__metadata__": "x"})), "__metadata__ must map strings to strings"),
        c("hparams_not_json", _st_model(_meta("mconv.hparams", "{n_head: 4")), "__metadata__['mconv.hparams'] is not JSON"),
        c("hparams_deep", _st_model(_meta("mconv.hparams", _deep_json())), "__metadata__['mconv.hparams'] is not JSON: it nests too deeply"),
        c("hparams_huge_int", _st_model(_meta("mconv.hparams", '{"n_head": %s}' % _huge_int())),
          "__metadata__['mconv.hparams'] is not JSON: Exceeds the limit"),
        c("hparams_array", _st_model(_meta("mconv.hparams", "[4, 16]")), "hparams must be a JSON object"),
        c("hparams_unknown_key", _st_model(_meta("mconv.hparams", '{"n_heads": 4}')), "unknown hparam 'n_heads'"),
        c("hparams_n_head_zero", _st_model(_meta("mconv.hparams", json.dumps({**TINY, "n_head": 0}))),
          "hparam n_head = 0 from __metadata__['mconv.hparams'] is out of range (an integer from 1 to 2147483647)"),
        c("hparams_n_head_string", _st_model(_meta("mconv.hparams", json.dumps({**TINY, "n_head": "4"}))),
          "hparam n_head = '4' from __metadata__['mconv.hparams'] is not an integer"),
        c("hparams_n_head_not_dividing", _st_model(_meta("mconv.hparams", json.dumps({**TINY, "n_head": 3}))),
          "16 rows cannot be split into 3 heads of an even size"),
        c("hparams_eps_nan", _st_model(_meta("mconv.hparams", '{"norm_eps": NaN}')),
          "hparam norm_eps = nan from __metadata__['mconv.hparams'] is out of range"),
        c("tokenizer_not_json", _st_model(_meta("mconv.tokenizer", "{tokens")), "__metadata__['mconv.tokenizer'] is not JSON"),
        c("tokenizer_array", _st_model(_meta("mconv.tokenizer", "[]")), "tokenizer: expected a JSON object"),
        c("tokenizer_no_tokens", _st_model(_meta("mconv.tokenizer", _tok_json(tokens=DROP))), "tokenizer: malformed (KeyError"),
        c("tokenizer_tokens_not_list", _st_model(_meta("mconv.tokenizer", _tok_json(tokens="abc"))),
          "tokenizer: tokens must be a list"),
        c("tokenizer_bad_token", _st_model(_meta("mconv.tokenizer", _tok_json(tokens=["a", 5]))),
          "tokenizer: a token is neither a string nor"),
        c("tokenizer_bad_base64", _st_model(_meta("mconv.tokenizer", _tok_json(tokens=[{"b64": "!!"}]))),
          "tokenizer: malformed"),
        c("tokenizer_lone_surrogate", _st_model(_meta("mconv.tokenizer", _tok_json(tokens=["\ud800"]))),
          "tokenizer: malformed (UnicodeEncodeError"),
        c("tokenizer_score_count", _st_model(_meta("mconv.tokenizer", _tok_json(scores=[0.5]))),
          "tokenizer: 32 tokens but 1 scores and 32 token types"),
        c("tokenizer_scores_text", _st_model(_meta("mconv.tokenizer", _tok_json(scores=["x"] * 32))),
          "tokenizer: malformed (ValueError"),
        c("tokenizer_type_overflow", _st_model(_meta("mconv.tokenizer", _tok_json(token_types=[2**40] * 32))),
          "tokenizer: malformed (OverflowError"),
        c("tokenizer_bos_out_of_range", _st_model(_meta("mconv.tokenizer", _tok_json(bos_id=32))),
          "tokenizer: bos_id 32 is not a token id below 32"),
        c("tokenizer_bos_bool", _st_model(_meta("mconv.tokenizer", _tok_json(bos_id=True))),
          "tokenizer: bos_id True is not a token id below 32"),
        c("tokenizer_add_bos_text", _st_model(_meta("mconv.tokenizer", _tok_json(add_bos="yes"))),
          "tokenizer: add_bos must be true, false or null"),
        c("tokenizer_merges_ints", _st_model(_meta("mconv.tokenizer", _tok_json(merges=[1, 2]))),
          "tokenizer: merges must be a list of strings"),
        c("tokenizer_model_not_str", _st_model(_meta("mconv.tokenizer", _tok_json(model=3))),
          "tokenizer: model must be a string"),
        c("free_metadata_not_object", _st_model(_meta("mconv.metadata", "[1]")),
          "__metadata__['mconv.metadata'] is not a JSON object"),
        c("free_metadata_not_json", _st_model(_meta("mconv.metadata", "{")), "__metadata__['mconv.metadata'] is not JSON"),
        # -- names ------------------------------------------------------------------------------------
        c("two_names_one_tensor", _st_model(lambda h, d: _alias_first(h, d)), "two tensors map to 'token_embd.weight'"),
        c("tensor_missing", _st_model(lambda h, d: _drop_tensor(h, d, "model.layers.0.self_attn.v_proj.weight")),
          "tensor blk.0.attn_v.weight is missing", commands=("translate",)),
        c("tensor_wrong_shape", _st_model(lambda h, d: _reshape(h, "model.layers.0.mlp.down_proj.weight", [24, 16])),
          "shape (24, 16) does not match the hparams, which imply (16, 24)", commands=("translate",)),
        # -- directories and the index ----------------------------------------------------------------
        c("dir_several_files", lambda d: (valid_file(d, "a.safetensors"), valid_file(d, "b.safetensors"), d)[-1],
          "several .safetensors files and no model.safetensors.index.json"),
        c("dir_model_is_fifo", lambda d: (_mkfifo(os.path.join(d, "model.safetensors")), d)[-1],
          "model.safetensors: file is not a regular file"),
        c("dir_model_dangling_link", lambda d: (os.symlink("gone.safetensors", os.path.join(d, "model.safetensors")), d)[-1],
          "model.safetensors: file is missing"),
        c("index_not_json", _hf_dir(shards=2, edit=_index_replace("{weight_map")), "not valid JSON"),
        c("index_array", _hf_dir(shards=2, edit=_index_replace("[]")), "expected a JSON object"),
        c("index_deep", _hf_dir(shards=2, edit=_index_replace(_deep_json())), "not valid JSON: it nests too deeply"),
        c("index_too_large", _hf_dir(shards=2, edit=_index_replace(_big_json())), "JSON sidecar larger than 16 MiB"),
        c("index_no_weight_map", _hf_dir(shards=2, edit=_index_replace('{"metadata": {}}')), "weight_map missing or empty"),
        c("index_weight_map_list", _hf_dir(shards=2, edit=_index_replace('{"weight_map": ["a"]}')),
          "weight_map missing or empty"),
        c("index_parent_dir", _hf_dir(shards=2, edit=_index_shard("../model-00001-of-00002.safetensors")),
          "shard '../model-00001-of-00002.safetensors' of tensor 'model.embed_tokens.weight' is not a file name in the same directory"),
        c("index_absolute_path", _hf_dir(shards=2, edit=_index_shard("/etc/passwd")),
          "shard '/etc/passwd' of tensor 'model.embed_tokens.weight' is not a file name in the same directory"),
        c("index_subdirectory", _hf_dir(shards=2, edit=_index_shard("sub/model.safetensors")),
          "is not a file name in the same directory"),
        c("index_dot_dot", _hf_dir(shards=2, edit=_index_shard("..")), "shard '..' of tensor"),
        c("index_shard_not_string", _hf_dir(shards=2, edit=_index_shard(7)), "shard 7 of tensor"),
        c("index_missing_shard", _hf_dir(shards=2, edit=lambda r: os.remove(_shard_path(r, 2))),
          "model-00002-of-00002.safetensors: shard listed in the index is missing"),
        c("index_shard_is_directory", _hf_dir(shards=2, edit=_replace_shard(2, os.mkdir)),
          "model-00002-of-00002.safetensors: shard listed in the index is not a regular file"),
        c("index_shard_is_fifo", _hf_dir(shards=2, edit=_replace_shard(2, _mkfifo)),
          "model-00002-of-00002.safetensors: shard listed in the index is not a regular file"),
        c("index_shard_malformed", _hf_dir(shards=2, edit=_replace_shard(2, lambda p: write_bytes(p, b"\xff" * 64))),
          "model-00002-of-00002.safetensors: offset 0: header size 18446744073709551615 exceeds"),
        c("index_tensor_in_two_shards", _hf_dir(shards=2, edit=_tensor_in_both_shards),
          "tensor 'model.embed_tokens.weight': tensor appears in two shards"),
        c("index_tensor_wrong_shard", _hf_dir(shards=2, edit=_index_shard("model-00002-of-00002.safetensors")),
          "tensor 'model.embed_tokens.weight': tensor is not listed for this shard in model.safetensors.index.json"),
        c("index_tensor_in_no_shard", _hf_dir(shards=2, edit=_two_shard_edit(
            lambda r, i: i["weight_map"].update({"model.extra.weight": "model-00001-of-00002.safetensors"}))),
          "1 tensor(s) listed in model.safetensors.index.json are in no shard, e.g. 'model.extra.weight'"),
    ]


def _same_offsets(header: dict[str, Any], data: bytes) -> None:
    for e in _entries(header):
        e.update(data_offsets=[0, 64], shape=[16], dtype="F32")


def _alias_first(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    """Add a tensor literally named like the canonical form of the first HF tensor."""
    entry = _entries(header)[0]
    b, e = entry["data_offsets"]
    header["token_embd.weight"] = {**entry, "data_offsets": [len(data), len(data) + e - b]}
    return header, data + data[b:e]


def _drop_tensor(header: dict[str, Any], data: bytes, name: str) -> tuple[dict[str, Any], bytes]:
    tensors = []
    for n, e in header.items():
        if n in ("__metadata__", name):
            continue
        b, end = e["data_offsets"]
        tensors.append(StTensor(n, e["dtype"], tuple(e["shape"]), data[b:end]))
    return st_header(tensors, header.get("__metadata__"))


def _reshape(header: dict[str, Any], name: str, shape: list[int]) -> None:
    header[name]["shape"] = shape


# ==================================================================================================
# config.json and params.json (read beside a safetensors model)
# ==================================================================================================

def _sidecar_cases(fmt: str, keys: Mapping[str, str]) -> list[Case]:
    """Cases shared by config.json (HF keys) and params.json (Meta keys)."""
    meta = fmt == "params.json"
    base = meta_params if meta else hf_config
    heads, embd, kv = keys["n_head"], keys["n_embd"], keys["n_head_kv"]
    origin = f"{fmt} ({heads})"

    def with_values(**changes: Any) -> Builder:
        return _hf_dir(params=base(**changes)) if meta else _hf_dir(config=base(**changes))

    def with_text(text: bytes | str) -> Builder:
        return _hf_dir(params_text=text) if meta else _hf_dir(config_text=text)

    def c(name: str, build: Builder, expect: str, **kw: Any) -> Case:
        return Case(fmt, name, build, expect, **kw)

    return [
        c("not_json", with_text("{" + heads + ": 4}"), f"{fmt}: not valid JSON"),
        c("empty", with_text(""), f"{fmt}: not valid JSON"),
        c("json_array", with_text("[4, 16]"), f"{fmt}: expected a JSON object"),
        c("json_string", with_text('"llama"'), f"{fmt}: expected a JSON object"),
        c("json_null", with_text("null"), f"{fmt}: expected a JSON object"),
        c("not_utf8", with_text(b'{"name": "\xff\xfe"}'), f"{fmt}: not valid JSON: 'utf-8' codec can't decode"),
        c("nested_deep", with_text(_deep_json()), f"{fmt}: not valid JSON: it nests too deeply"),
        c("too_large", with_text(_big_json()), f"{fmt}: JSON sidecar larger than 16 MiB"),
        c("huge_int_literal", with_text('{"%s": %s}' % (heads, _huge_int())), f"{fmt}: not valid JSON: Exceeds the limit"),
        c("fifo_is_skipped", _hf_dir(edit=lambda r: (os.remove(os.path.join(r, "config.json")),
                                                      _mkfifo(os.path.join(r, fmt)))),
          "hparam n_head is not stored in the file or a sidecar"),
        c("n_head_string", with_values(**{heads: "4"}), f"hparam n_head = '4' from {origin} is not an integer"),
        c("n_head_bool", with_values(**{heads: True}), f"hparam n_head = True from {origin} is not an integer"),
        c("n_head_fraction", with_values(**{heads: 4.5}), f"hparam n_head = 4.5 from {origin} is not an integer"),
        c("n_head_list", with_values(**{heads: [4]}), f"hparam n_head = [4] from {origin} is not an integer"),
        c("n_head_object", with_values(**{heads: {"value": 4}}), f"from {origin} is not an integer"),
        c("n_head_nan", with_text(json.dumps(base(**{heads: float("nan")}))), f"hparam n_head = nan from {origin} is not an integer"),
        c("n_head_infinity", with_text(json.dumps(base(**{heads: float("inf")}))), f"hparam n_head = inf from {origin} is not an integer"),
        c("n_head_zero", with_values(**{heads: 0}),
          f"hparam n_head = 0 from {origin} is out of range (an integer from 1 to 2147483647)"),
        c("n_head_negative", with_values(**{heads: -4}), f"hparam n_head = -4 from {origin} is out of range"),
        c("n_head_1e30", with_values(**{heads: 10**30}), f"hparam n_head = {10**30} from {origin} is out of range"),
        c("n_head_2_31", with_values(**{heads: 2**31}), f"hparam n_head = 2147483648 from {origin} is out of range"),
        c("n_embd_not_divisible_by_n_head", with_values(**{heads: 5}), "16 rows cannot be split into 5 heads of an even size"),
        c("head_size_odd", with_values(**{heads: 16}), "16 rows cannot be split into 16 heads of an even size"),
        c("n_head_kv_not_dividing", with_values(**{kv: 3}), "8 rows cannot be split into 3 heads of an even size"),
        c("n_head_kv_zero", with_values(**{kv: 0}), f"hparam n_head_kv = 0 from {fmt} ({kv}) is out of range"),
        c("n_head_missing", with_values(**{heads: DROP}),
          "hparam n_head is not stored in the file or a sidecar and cannot be inferred from tensor shapes; "
          "give it with --hparam n_head=N"),
        c("n_head_null", with_values(**{heads: None}), "hparam n_head is not stored in the file or a sidecar"),
        c("n_embd_mismatch", with_values(**{embd: 32}),
          "shape (32, 16) does not match the hparams, which imply (32, 32)", commands=("translate",)),
        c("n_embd_not_multiple_of_n_head", with_values(**{embd: 18}),
          "n_embd 18, n_head 4 and n_head_kv 2 do not divide evenly", commands=("translate",)),
        c("n_layer_too_many", with_values(**{keys["n_layer"]: 3}), "tensor blk.1.attn_norm.weight is missing",
          commands=("translate",)),
        c("n_layer_zero", with_values(**{keys["n_layer"]: 0}), f"hparam n_layer = 0 from {fmt} ({keys['n_layer']}) is out of range"),
        # a table of 2^31 blocks' shapes would take minutes and gigabytes: the check stops at the first gap
        c("n_layer_2_31_minus_1", with_values(**{keys["n_layer"]: 2**31 - 1}),
          "tensor blk.1.attn_norm.weight is missing", commands=("translate",)),
        c("vocab_1e30", with_values(**{keys["n_vocab"]: 10**30}), f"hparam n_vocab = {10**30} from {fmt}"),
        c("vocab_negative", with_values(**{keys["n_vocab"]: -5}), f"hparam n_vocab = -5 from {fmt} ({keys['n_vocab']}) is out of range"),
        c("ctx_zero", with_values(**{keys["n_ctx"]: 0}), f"hparam n_ctx = 0 from {fmt} ({keys['n_ctx']}) is out of range"),
        c("eps_negative", with_values(**{keys["norm_eps"]: -1e-5}),
          f"hparam norm_eps = -1e-05 from {fmt} ({keys['norm_eps']}) is out of range (a finite number above 0)"),
        c("eps_zero", with_values(**{keys["norm_eps"]: 0}), f"hparam norm_eps = 0.0 from {fmt} ({keys['norm_eps']}) is out of range"),
        c("eps_string", with_values(**{keys["norm_eps"]: "1e-5"}),
          f"hparam norm_eps = '1e-5' from {fmt} ({keys['norm_eps']}) is not a number"),
        c("eps_nan", with_text(json.dumps(base(**{keys["norm_eps"]: float("nan")}))),
          f"hparam norm_eps = nan from {fmt} ({keys['norm_eps']}) is out of range"),
        c("theta_infinity", with_text(json.dumps(base(**{keys["rope_theta"]: float("inf")}))),
          f"hparam rope_theta = inf from {fmt} ({keys['rope_theta']}) is out of range"),
        c("theta_1e400", with_text(json.dumps(base()).replace('"rope_theta": 10000.0', '"rope_theta": 1e400')),
          f"hparam rope_theta = inf from {fmt} ({keys['rope_theta']}) is out of range"),
        c("theta_huge_int", with_values(**{keys["rope_theta"]: 10**400}),
          f"from {fmt} ({keys['rope_theta']}) is not a number"),
    ]


def config_cases() -> list[Case]:
    from corpus.builders import HF_KEYS

    return _sidecar_cases("config.json", HF_KEYS)


def params_cases() -> list[Case]:
    from corpus.builders import META_KEYS

    return _sidecar_cases("params.json", META_KEYS)


# ==================================================================================================
# tokenizer.model (read beside a safetensors model)
# ==================================================================================================

def _sparse(size: int) -> Callable[[str], None]:
    def make(path: str) -> None:
        with open(path, "wb") as f:
            f.truncate(size)
    return make


def _no_pieces() -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.trainer_spec.vocab_size = 32
    return proto.SerializeToString()


def tokenizer_cases() -> list[Case]:
    F = "tokenizer.model"
    good = sp_model_bytes()

    def c(name: str, sp: bytes | Callable[[str], None], expect: str) -> Case:
        return Case(F, name, _hf_dir(sp=sp), expect)

    return [
        c("empty", b"", "tokenizer.model: not a SentencePiece model: it has no pieces"),
        c("garbage", deterministic_bytes(4096), "tokenizer.model: not a SentencePiece model"),
        c("text", b"this is not a protobuf\n", "tokenizer.model: not a SentencePiece model"),
        c("truncated", good[: len(good) * 2 // 3], "tokenizer.model: not a SentencePiece model"),
        c("truncated_varint", good[:1] + b"\xff\xff\xff", "tokenizer.model: not a SentencePiece model"),
        c("invalid_wire_type", b"\x0f\x00" + good, "tokenizer.model: not a SentencePiece model"),
        c("huge_length", b"\x0a\xff\xff\xff\xff\x0f", "tokenizer.model: not a SentencePiece model"),
        c("too_many_pieces", b"\x0a\x00" * ((1 << 20) + 1),
          "tokenizer.model: not a SentencePiece model mconv reads: more than 1048576 pieces"),
        c("no_pieces", _no_pieces(), "tokenizer.model: not a SentencePiece model: it has no pieces"),
        c("too_large", _sparse((64 << 20) + 1), "tokenizer.model: tokenizer.model of 67108865 bytes exceeds the 64 MiB limit"),
    ]


# ==================================================================================================
# the input path itself
# ==================================================================================================

def input_cases() -> list[Case]:
    F = "input"

    def c(name: str, build: Builder, expect: str) -> Case:
        return Case(F, name, build, expect)

    return [
        c("missing", lambda d: os.path.join(d, "nothing.safetensors"), "nothing.safetensors: no such file or directory"),
        c("fifo", lambda d: (_mkfifo(os.path.join(d, "model.safetensors")), os.path.join(d, "model.safetensors"))[-1],
          "model.safetensors: not a regular file or directory"),
        c("device", lambda d: (os.symlink("/dev/zero", os.path.join(d, "zero.safetensors")),
                               os.path.join(d, "zero.safetensors"))[-1], "zero.safetensors: not a regular file or directory"),
        c("dangling_link", lambda d: (os.symlink("gone", os.path.join(d, "x.safetensors")),
                                      os.path.join(d, "x.safetensors"))[-1], "x.safetensors: no such file or directory"),
        c("symlink_loop", lambda d: (os.symlink("b", os.path.join(d, "a")), os.symlink("a", os.path.join(d, "b")),
                                     os.path.join(d, "a"))[-1], "a: no such file or directory"),
        c("empty_file", _file("x.dat", b""), "no format recognises this file"),
        c("random_bytes", _file("x.dat", lambda: deterministic_bytes(1024)), "no format recognises this file"),
        c("text_file", _file("x.dat", "hello, world\n"), "no format recognises this file"),
        c("empty_directory", lambda d: d, "no format recognises this directory"),
        c("directory_only_sidecars", lambda d: (write_json(os.path.join(d, "config.json"), hf_config()), d)[-1],
          "no format recognises this directory"),
    ]


# ==================================================================================================
# collection
# ==================================================================================================

#: built-in recipe tables by the format they exercise (the readers' own tables live in tests/hostile_*.py)
BUILTIN: dict[str, Callable[[], list[Case]]] = {
    "safetensors": safetensors_cases,
    "config.json": config_cases,
    "params.json": params_cases,
    "tokenizer.model": tokenizer_cases,
    "input": input_cases,
}


def hostile_modules() -> list[Any]:
    """Every ``tests/hostile_*.py`` module, imported (tests/ must be on sys.path)."""
    mods = []
    for path in sorted(glob.glob(os.path.join(TESTS_DIR, "hostile_*.py"))):
        mods.append(importlib.import_module(os.path.splitext(os.path.basename(path))[0]))
    return mods


def collect_cases(formats: Optional[Iterable[str]] = None) -> list[Case]:
    """Built-in cases plus those of every hostile module exposing ``corpus_cases()``; ids unique."""
    cases: list[Case] = []
    for make in BUILTIN.values():
        cases.extend(make())
    for mod in hostile_modules():
        if hasattr(mod, "corpus_cases"):
            for case in mod.corpus_cases():
                if not isinstance(case, Case):
                    case = Case(*case)
                cases.append(case)
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise ValueError(f"corpus case {case.id} is defined twice")
        seen.add(case.id)
    if formats is not None:
        wanted = set(formats)
        cases = [c for c in cases if c.format in wanted]
    return cases


def build_case(case: Case, root: str) -> str | tuple[str, str]:
    """Build one case in ``root/<format>/<name>/``; returns the input path, or (path, exact message)."""
    d = os.path.join(root, case.format, case.name)
    os.makedirs(d)
    return case.build(d)


def split_input(built: str | tuple[str, str]) -> tuple[str, Optional[str]]:
    """(input path, exact message or None) of what a builder returned."""
    return (built, None) if isinstance(built, str) else (built[0], built[1])


def write_corpus(root: str, cases: Sequence[Case]) -> dict[str, str | tuple[str, str]]:
    """Build every case under ``root`` and write ``root/manifest.json``; case id -> input path
    (or (input path, exact message))."""
    inputs = {case.id: build_case(case, root) for case in cases}
    manifest = [{"id": c.id, "format": c.format, "input": split_input(inputs[c.id])[0], "commands": list(c.commands),
                 "read_args": list(c.read_args), "plugins": list(c.plugins), "expect": c.expect,
                 "exact": split_input(inputs[c.id])[1]} for c in cases]
    write_json(os.path.join(root, "manifest.json"), manifest)
    return inputs


def counts(cases: Iterable[Case]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cases:
        out[c.format] = out.get(c.format, 0) + 1
    return dict(sorted(out.items()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="directory to build the corpus in (must not exist)")
    p.add_argument("--format", action="append", help="only cases of this format (repeatable)")
    p.add_argument("--list", action="store_true", help="list the cases instead of building them")
    p.add_argument("--run", action="store_true", help="also run every case through mconv and check it")
    args = p.parse_args(argv)
    os.environ.setdefault("MCONV_LOAD_PLUGINS", "")
    cases = collect_cases(args.format)
    if args.list:
        for c in cases:
            print(f"{c.id:<50} {','.join(c.commands):<18} {c.expect}")
        print(f"{len(cases)} cases: {counts(cases)}")
        return 0
    os.makedirs(args.outdir)
    inputs = write_corpus(args.outdir, cases)
    print(f"built {len(cases)} cases in {args.outdir}: {counts(cases)}")
    if not args.run:
        return 0
    from corpus.runner import run_corpus

    report = run_corpus(cases, inputs, args.outdir, os.path.join(args.outdir, "out"))
    for line in report.problems():
        print(line)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    # run the importable copy: the hostile modules build their cases with corpus.make_corpus.Case,
    # which is not this __main__ module's Case
    from corpus import make_corpus

    sys.exit(make_corpus.main())
