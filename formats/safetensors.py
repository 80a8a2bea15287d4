"""safetensors: single files, HF sharded checkpoints, and HF model directories.

Layout of one file: ``u64 N`` (little-endian), N bytes of JSON header, then the data buffer.  The
header maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative
to the data buffer) plus an optional ``"__metadata__"`` of string -> string.  The reference reader
refuses headers over 100 MB, data that is not exactly covered by the tensors (contiguous from 0, no
gaps, no overlap, the last one ending at the file end), and spans that differ from shape x dtype size;
so does this one, and it also refuses duplicate names.

Writing produces the Hugging Face convention (names and q/k in the rotate-half layout), since that is
what every safetensors consumer expects: a single file, or with OUT/ an HF directory with a complete
``config.json``, tokenizer files, and ``model-0000i-of-0000n.safetensors`` shards + index above
``-O shard_size``.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Any, Callable, Optional


from mconv.plugins import (
    DIR_SAFETENSORS,
    DIR_SAFETENSORS_INDEX,
    FileSlice,
    Format,
    FormatError,
    Model,
    ReadContext,
    Step,
    Tensor,
    UnsupportedError,
    WriteContext,
    WriterOption,
    get_dtype,
    hookimpl,
    jsonable,
    merge_shards,
    parse_bool,
    parse_size,
    read_sentencepiece_file,
    read_weight_map,
    resolve,
    sentencepiece_bytes,
    sidecar_hparams,
    table,
    tokenizer_from_json,
    tokenizer_to_json,
    write_tensor,
)

#: the reference implementation's MAX_HEADER_SIZE
MAX_HEADER_BYTES = 100_000_000
#: JSON values (commas + brackets outside strings, counted before parsing) a header may hold: bounds
#: the memory the parse takes (up to ~300 bytes a value, so ~300 MB) whatever the header says; a
#: tensor entry takes 7, so about 140k tensors a file (a string, however long, is one value)
MAX_HEADER_VALUES = 1_000_000
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
#: dimensions of a tensor (numpy's limit)
MAX_DIMS = 64
#: a shape whose non-zero dimensions span this many bytes or more is refused (int64 sizes)
MAX_TENSOR_BYTES = 2**63
INDEX_NAME = "model.safetensors.index.json"
SHARD_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")

#: safetensors dtype string <-> mconv dtype name (the closed list; anything else is refused)
DTYPES: dict[str, str] = {
    "F64": "f64", "F32": "f32", "F16": "f16", "BF16": "bf16",
    "I64": "i64", "I32": "i32", "I16": "i16", "I8": "i8",
    "U64": "u64", "U32": "u32", "U16": "u16", "U8": "u8", "BOOL": "bool",
    "F8_E4M3": "f8_e4m3", "F8_E5M2": "f8_e5m2",
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: torch_dtype in config.json for the dominant float dtype
TORCH_DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64"}

META_FORMAT = "format"
META_HPARAMS = "mconv.hparams"
META_TOKENIZER = "mconv.tokenizer"
META_METADATA = "mconv.metadata"


# ==================================================================================================
# reading
# ==================================================================================================

def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"header names {k!r} twice")
        out[k] = v
    return out


def parse_header(path: str) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensor entries in data order, __metadata__, data start) of one file, fully validated."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"file of {size} bytes is too short for the 8-byte header size", path=path)
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise FormatError(f"header size {n} exceeds the {MAX_HEADER_BYTES}-byte limit", path=path, offset=0)
        if n > size - 8:
            raise FormatError(f"header size {n} runs past the end of the file ({size} bytes)", path=path, offset=0)
        raw = f.read(n)
    # outside strings, every JSON value after the first in an array or object needs a comma, and
    # every container a bracket: an upper bound on the values json.loads would build
    structure = JSON_STRING.sub(b"", raw)
    values = structure.count(b",") + structure.count(b"[") + structure.count(b"{") + 1
    del structure
    if values > MAX_HEADER_VALUES:
        raise FormatError(f"header holds up to {values} JSON values; mconv reads at most {MAX_HEADER_VALUES}",
                          path=path, offset=8)
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            raise FormatError("header is not a JSON object", path=path, offset=8)
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except FormatError as e:
        raise e.at(path=path, offset=8)
    except UnicodeDecodeError as e:
        raise FormatError(f"header is not UTF-8 ({e.reason} at byte {e.start})", path=path, offset=8 + e.start)
    except json.JSONDecodeError as e:
        raise FormatError(f"header is not valid JSON ({e.msg} at byte {e.pos})", path=path, offset=8 + e.pos)
    except RecursionError:
        raise FormatError("header JSON nests too deeply", path=path, offset=8)
    except ValueError as e:  # int() refuses literals of over 4300 digits
        raise FormatError(f"header is not valid JSON ({e})", path=path, offset=8)
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object", path=path, offset=8)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError("__metadata__ must map strings to strings", path=path, offset=8)
    data_start = 8 + n
    data_len = size - data_start
    entries = []
    for name, entry in header.items():
        entries.append(_check_entry(path, name, entry))
    entries.sort(key=lambda e: (e["begin"], e["end"]))
    pos = 0
    for e in entries:
        if e["begin"] != pos:
            what = "overlaps the previous tensor" if e["begin"] < pos else f"leaves a gap after offset {pos}"
            raise FormatError(f"data_offsets {[e['begin'], e['end']]} {what}", path=path, tensor=e["name"],
                              offset=data_start + e["begin"])
        pos = e["end"]
    if pos != data_len:
        raise FormatError(f"tensors cover {pos} bytes of data but the file holds {data_len}", path=path,
                          offset=data_start + pos)
    return {e["name"]: e for e in entries}, metadata, data_start


def _brief(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_entry(path: str, name: str, entry: Any) -> dict[str, Any]:
    def bad(msg: str) -> FormatError:
        return FormatError(msg, path=path, tensor=name)

    if not name:
        raise bad("empty tensor name")
    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    unknown = set(entry) - {"dtype", "shape", "data_offsets"}
    if unknown:
        raise bad(f"unknown field(s) {sorted(unknown)}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad("dtype missing or not a string")
    if dtype not in DTYPES:
        raise bad(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"shape {_brief(shape)} is not a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise bad(f"shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
        raise bad(f"data_offsets {_brief(offsets)} is not a pair of non-negative integers")
    begin, end = offsets
    if end < begin:
        raise bad(f"data_offsets {offsets} end before they begin")
    dt = get_dtype(DTYPES[dtype])
    elems = 1
    for d in shape:
        elems *= d
    if elems * dt.type_size != end - begin:
        raise bad(f"shape {shape} of {dtype} needs {elems * dt.type_size} bytes but data_offsets span {end - begin}")
    # an empty tensor may still claim absurd dimensions ([0, 2**64]); numpy cannot even describe
    # its rows, so the non-zero dimensions times the element size must fit an int64 (as in the
    # reference implementation, whose sizes are usize)
    nonzero = dt.type_size
    for d in shape:
        nonzero *= d or 1
    if nonzero >= MAX_TENSOR_BYTES:
        raise bad(f"shape {shape} is too large")
    return {"name": name, "dtype": dt, "shape": tuple(shape), "begin": begin, "end": end}


def _file_tensors(path: str, ctx: ReadContext) -> tuple[dict[str, Tensor], dict[str, str]]:
    entries, metadata, data_start = parse_header(path)
    mapped = ctx.cache.get(path)
    tensors = {}
    for name, e in entries.items():
        shape = e["shape"]
        dt = e["dtype"]
        cols = shape[-1] if shape else 1
        rows = 1
        for d in shape[:-1]:
            rows *= d
        tensors[name] = Tensor(name, shape, dt, FileSlice(mapped, data_start + e["begin"], rows, dt.row_bytes(cols)))
    return tensors, metadata


def _directory_files(directory: str) -> list[str]:
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    model_files = [f for f in files if f.startswith("model")]
    chosen = model_files or files
    if not chosen:
        raise FormatError("no .safetensors file in this directory", path=directory)
    if len(chosen) > 1 and not all(SHARD_RE.match(f) for f in chosen):
        raise FormatError(f"several .safetensors files and no {INDEX_NAME}: {', '.join(chosen)}; pass one file",
                          path=directory)
    return [os.path.join(directory, f) for f in chosen]


def read_safetensors(path: str, ctx: ReadContext) -> Model:
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    index_path = os.path.join(directory, INDEX_NAME)
    index_map: Optional[dict[str, str]] = None
    if os.path.isdir(path) and os.path.isfile(index_path):
        files, index_map = read_weight_map(index_path)
    else:
        files = _directory_files(path) if os.path.isdir(path) else [path]
    parts = []
    metadata: dict[str, str] = {}
    for f in files:
        if not os.path.isfile(f):
            what = "shard listed in the index" if index_map is not None else "file"
            # a FIFO or a device would block or never end; a dangling link is missing
            raise FormatError(f"{what} is {'missing' if not os.path.exists(f) else 'not a regular file'}", path=f)
        tensors, meta = _file_tensors(f, ctx)
        parts.append((f, tensors))
        for k, v in meta.items():
            metadata.setdefault(k, v)
    raw = merge_shards(parts, index_map, index_path)

    names = table("llama")
    convention = ctx.names or names.detect_convention(raw, ("hf", "meta", "gguf"))[0]
    tensors = names.canonical_tensors(raw, convention)[0]

    model = Model(arch="llama", hparams={}, tensors=tensors, format="safetensors",
                  files=tuple(os.path.abspath(f) for f in files), cache=ctx.cache)
    layers: list[tuple[str, dict[str, Any]]] = []
    if META_HPARAMS in metadata:
        stored = _metadata_json(metadata, META_HPARAMS, files[0])
        layers.append(("safetensors metadata", names.canonical_hparams(stored, f"__metadata__[{META_HPARAMS!r}]")))
    layers.extend(sidecar_hparams(directory, names))
    resolve(model, names, layers, ctx.hparams)

    for name, t in list(tensors.items()):
        tensors[name] = names.to_canonical_layout(t, convention, model.hparams)
    model.metadata = _free_metadata(metadata, files[0])
    model.history.append(Step("names", f"{convention} naming convention"))
    model.tokenizer = _read_tokenizer(metadata, directory, files[0])
    extra = [os.path.join(directory, f) for f in ("config.json", "params.json", "tokenizer.model", INDEX_NAME)
             if os.path.isfile(os.path.join(directory, f))]
    model.files = model.files + tuple(os.path.abspath(f) for f in extra)
    return model


def _metadata_json(metadata: dict[str, str], key: str, path: str) -> Any:
    """The JSON value mconv stored under ``__metadata__[key]``."""
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise FormatError(f"__metadata__[{key!r}] is not JSON: {e.msg}", path=path)
    except RecursionError:
        raise FormatError(f"__metadata__[{key!r}] is not JSON: it nests too deeply", path=path)
    except ValueError as e:  # int() refuses literals of over 4300 digits
        raise FormatError(f"__metadata__[{key!r}] is not JSON: {e}", path=path)


def _free_metadata(metadata: dict[str, str], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in metadata.items() if not k.startswith("mconv.") and k != META_FORMAT}
    if META_METADATA in metadata:
        stored = _metadata_json(metadata, META_METADATA, path)
        if not isinstance(stored, dict):
            raise FormatError(f"__metadata__[{META_METADATA!r}] is not a JSON object", path=path)
        out.update(stored)
    return out


def _read_tokenizer(metadata: dict[str, str], directory: str, path: str):  # type: ignore[no-untyped-def]
    if META_TOKENIZER in metadata:
        try:
            return tokenizer_from_json(_metadata_json(metadata, META_TOKENIZER, path))
        except FormatError as e:
            raise e.at(path=path)
    sp_path = os.path.join(directory, "tokenizer.model")
    if os.path.isfile(sp_path):
        return read_sentencepiece_file(sp_path)
    return None


# ==================================================================================================
# writing
# ==================================================================================================

def _hf_tensors(model: Model) -> list[Tensor]:
    """Model tensors renamed and re-laid-out in the HF convention (extras keep their names)."""
    names = table(model.arch)
    out = []
    for t in model.tensors.values():
        hf_name = names.from_canonical(t.name, "hf") or t.name
        out.append(names.from_canonical_layout(t, "hf", model.hparams).with_name(hf_name))
    return out


def _header(tensors: list[Tensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    pos = 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype.name], "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
        pos += t.nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # the reference writer pads the header with spaces so the data buffer starts 8-byte aligned
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob


def write_file(path: str, tensors: list[Tensor], metadata: dict[str, str], progress: Callable[[int], None]) -> None:
    with open(path, "wb") as f:
        f.write(_header(tensors, metadata))
        for t in tensors:
            write_tensor(f, t, progress)


def _file_metadata(model: Model, with_tokenizer: bool) -> dict[str, str]:
    meta = {META_FORMAT: "pt", META_HPARAMS: json.dumps(jsonable(model.hparams), sort_keys=True)}
    if model.metadata:
        meta[META_METADATA] = json.dumps(jsonable(model.metadata), sort_keys=True)
    if with_tokenizer and model.tokenizer is not None:
        meta[META_TOKENIZER] = json.dumps(tokenizer_to_json(model.tokenizer), separators=(",", ":"))
    return meta


def _shards(tensors: list[Tensor], shard_size: int) -> list[list[Tensor]]:
    shards: list[list[Tensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def hf_config(model: Model) -> dict[str, Any]:
    hp = model.hparams
    tok = model.tokenizer
    float_bytes: dict[str, int] = {}
    for t in model.tensors.values():
        if t.dtype.name in TORCH_DTYPE:
            float_bytes[t.dtype.name] = float_bytes.get(t.dtype.name, 0) + t.nbytes
    dominant = max(float_bytes, key=lambda k: float_bytes[k]) if float_bytes else "f32"
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hp["n_embd"],
        "intermediate_size": hp["n_ff"],
        "num_hidden_layers": hp["n_layer"],
        "num_attention_heads": hp["n_head"],
        "num_key_value_heads": hp["n_head_kv"],
        "head_dim": hp["n_embd"] // hp["n_head"],
        "hidden_act": "silu",
        "rms_norm_eps": hp["norm_eps"],
        "rope_theta": hp["rope_theta"],
        "rope_scaling": None,
        "max_position_embeddings": hp["n_ctx"],
        "vocab_size": hp["n_vocab"],
        "tie_word_embeddings": "output.weight" not in model.tensors,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": TORCH_DTYPE[dominant],
        "bos_token_id": tok.bos_id if tok is not None and tok.bos_id is not None else 1,
        "eos_token_id": tok.eos_id if tok is not None and tok.eos_id is not None else 2,
    }
    if tok is not None and tok.pad_id is not None:
        cfg["pad_token_id"] = tok.pad_id
    return cfg


def _token_text(tok: Any, ident: Optional[int]) -> Optional[str]:
    if ident is None:
        return None
    return tok.tokens[ident].decode("utf-8", errors="replace")


def tokenizer_files(model: Model) -> dict[str, bytes]:
    """tokenizer.model, tokenizer_config.json and special_tokens_map.json for an HF directory."""
    tok = model.tokenizer
    if tok is None:
        return {}
    sp = sentencepiece_bytes(tok)
    if sp is None:
        return {}
    specials = {k: v for k, v in (("bos_token", _token_text(tok, tok.bos_id)),
                                  ("eos_token", _token_text(tok, tok.eos_id)),
                                  ("unk_token", _token_text(tok, tok.unk_id)),
                                  ("pad_token", _token_text(tok, tok.pad_id))) if v is not None}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True if tok.add_bos is None else tok.add_bos,
        "add_eos_token": False if tok.add_eos is None else tok.add_eos,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model.hparams.get("n_ctx", 2048),
        "sp_model_kwargs": {},
        "pad_token": None,
        **specials,
    }
    dump = lambda v: (json.dumps(v, indent=2, ensure_ascii=False) + "\n").encode("utf-8")  # noqa: E731
    return {"tokenizer.model": sp, "tokenizer_config.json": dump(config), "special_tokens_map.json": dump(specials)}


def write_directory(model: Model, directory: str, ctx: WriteContext) -> None:
    tensors = _hf_tensors(model)
    shard_size: int = ctx.options["shard_size"]
    shards = _shards(tensors, shard_size)
    tok_files = tokenizer_files(model)
    meta = _file_metadata(model, with_tokenizer=model.tokenizer is not None and not tok_files)
    if len(shards) == 1:
        write_file(os.path.join(directory, "model.safetensors"), tensors, meta, ctx.progress)
    else:
        weight_map = {}
        n = len(shards)
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{n:05d}.safetensors"
            write_file(os.path.join(directory, fname), shard, meta, ctx.progress)
            weight_map.update({t.name: fname for t in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        _write_bytes(os.path.join(directory, INDEX_NAME), (json.dumps(index, indent=2) + "\n").encode())
    cfg = hf_config(model)
    _write_bytes(os.path.join(directory, "config.json"), (json.dumps(cfg, indent=2) + "\n").encode())
    if ctx.options["generation_config"]:
        gen = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"], "_from_model_config": True}
        _write_bytes(os.path.join(directory, "generation_config.json"), (json.dumps(gen, indent=2) + "\n").encode())
    for fname, blob in tok_files.items():
        _write_bytes(os.path.join(directory, fname), blob)


def _write_bytes(path: str, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)


class SafetensorsFormat(Format):
    name = "safetensors"
    extensions = (".safetensors",)
    description = "safetensors file, HF sharded checkpoint or HF model directory"
    dtypes = frozenset(DTYPES.values())
    has_directory_layout = True
    writer_options = {
        "shard_size": WriterOption("shard_size", parse_size, 5 * 10**9,
                                   "directory output: start a new shard above this many bytes (e.g. 5GB, 500MiB)"),
        "generation_config": WriterOption("generation_config", parse_bool, True,
                                          "directory output: also write generation_config.json"),
    }

    def sniff(self, path: str, head: bytes, size: int, is_dir: bool) -> float:
        if is_dir:
            try:
                entries = os.listdir(path)
            except OSError:
                return 0.0
            if INDEX_NAME in entries:
                return DIR_SAFETENSORS_INDEX
            return DIR_SAFETENSORS if any(e.endswith(".safetensors") for e in entries) else 0.0
        if len(head) < 9:
            return 0.0
        (n,) = struct.unpack("<Q", head[:8])
        # a JSON header that starts with '{' and fits in the file and in the reference limit
        if head[8:9] == b"{" and 0 < n <= min(MAX_HEADER_BYTES, size - 8):
            return 1.0 if path.endswith(".safetensors") else 0.9
        return 0.0

    def read(self, path: str, ctx: ReadContext) -> Model:
        return read_safetensors(path, ctx)

    def write(self, model: Model, path: str, ctx: WriteContext) -> None:
        for t in model.tensors.values():
            if t.dtype.name not in DTYPE_NAMES:
                raise UnsupportedError(f"safetensors cannot store {t.dtype.name}", tensor=t.name)
        if ctx.as_directory:
            write_directory(model, path, ctx)
        else:
            write_file(path, _hf_tensors(model), _file_metadata(model, with_tokenizer=True), ctx.progress)


@hookimpl
def register_formats(register: Callable[[object], None]) -> None:
    register(SafetensorsFormat)
