"""Small valid inputs, built byte by byte from their specs (not with mconv's writers, so a writer bug
cannot hide a reader bug), and the packers the malformed-input recipes bend.

Everything here is deterministic: fixed seeds, sorted keys, no timestamps.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

#: a llama small enough to build in microseconds: head size 4, GQA 4:2, one block
TINY: dict[str, Any] = dict(n_vocab=32, n_embd=16, n_layer=1, n_head=4, n_head_kv=2, n_ff=24, n_ctx=64,
                            norm_eps=1e-5, rope_theta=10000.0)

#: bytes per element of each safetensors dtype string
ST_DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                 "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

#: config.json (HF) and params.json (Meta) keys of each canonical hparam
HF_KEYS = dict(n_vocab="vocab_size", n_embd="hidden_size", n_layer="num_hidden_layers",
               n_head="num_attention_heads", n_head_kv="num_key_value_heads", n_ff="intermediate_size",
               n_ctx="max_position_embeddings", norm_eps="rms_norm_eps", rope_theta="rope_theta")
META_KEYS = dict(n_vocab="vocab_size", n_embd="dim", n_layer="n_layers", n_head="n_heads",
                 n_head_kv="n_kv_heads", n_ff="hidden_dim", n_ctx="max_seq_len", norm_eps="norm_eps",
                 rope_theta="rope_theta")

#: marks a key to delete in hf_config()/meta_params() overrides
DROP = object()

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class StTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def write_bytes(path: str, data: bytes | str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def write_json(path: str, value: Any) -> str:
    return write_bytes(path, json.dumps(value, indent=1, sort_keys=True))


# -- safetensors -----------------------------------------------------------------------------------

def st_header(tensors: Sequence[StTensor], metadata: Optional[Mapping[str, str]] = None) -> tuple[dict[str, Any], bytes]:
    """(header dict, data buffer) with the tensors laid out contiguously in the given order."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + len(t.data)]}
        pos += len(t.data)
    return header, b"".join(t.data for t in tensors)


def pack_safetensors(header: Mapping[str, Any] | str | bytes, data: bytes = b"", *,
                     size: Optional[int] = None, pad: bool = True) -> bytes:
    """``u64 N`` + N bytes of header + data.  ``header`` may be raw text/bytes (malformed on
    purpose); ``size`` overrides N; ``pad`` adds the reference writer's trailing spaces."""
    if isinstance(header, Mapping):
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    elif isinstance(header, str):
        blob = header.encode("utf-8")
    else:
        blob = bytes(header)
    if pad:
        blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob) if size is None else size) + blob + data


def hf_tensors(hp: Mapping[str, Any] = TINY, seed: int = 0) -> list[StTensor]:
    """Every llama tensor of ``hp`` under its HF name, f32, in canonical order (values arbitrary
    but finite; the HF q/k layout is a row permutation, which random values do not care about)."""
    from mconv.core.arch.llama import expected_shapes
    from mconv.core.names import table

    names = table("llama")
    rng = np.random.default_rng(seed)
    out = []
    for canonical, shape in expected_shapes(dict(hp)).items():
        values = rng.standard_normal(shape).astype("<f4")
        out.append(StTensor(names.from_canonical(canonical, "hf") or canonical, "F32", tuple(shape), values.tobytes()))
    return out


def hf_config(hp: Mapping[str, Any] = TINY, **changes: Any) -> dict[str, Any]:
    """config.json of ``hp``; ``changes`` replace keys by their config.json name (DROP deletes)."""
    cfg: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                           **{HF_KEYS[k]: v for k, v in hp.items()}}
    return _apply(cfg, changes)


def meta_params(hp: Mapping[str, Any] = TINY, **changes: Any) -> dict[str, Any]:
    """params.json of ``hp`` as Meta writes it (vocab_size -1, no hidden_dim); ``changes`` as above."""
    params = {META_KEYS[k]: v for k, v in hp.items() if k not in ("n_ff", "n_ctx")}
    params["vocab_size"] = -1
    params["multiple_of"] = 8
    return _apply(params, changes)


def _apply(d: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in changes.items():
        if v is DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def mconv_metadata(hp: Mapping[str, Any] = TINY, tokenizer: bool = True) -> dict[str, str]:
    """The ``__metadata__`` mconv writes: hparams (and the tokenizer) as JSON strings."""
    meta = {"format": "pt", "mconv.hparams": json.dumps(dict(hp), sort_keys=True)}
    if tokenizer:
        from mconv.core.tokenizers import tokenizer_from_sentencepiece, tokenizer_to_json

        meta["mconv.tokenizer"] = json.dumps(tokenizer_to_json(tokenizer_from_sentencepiece(sp_model_bytes())),
                                             separators=(",", ":"))
    return meta


def valid_file(d: str, name: str = "model.safetensors", *, metadata: Optional[Mapping[str, str]] = None,
               tokenizer: bool = True) -> str:
    """A self-contained safetensors model (hparams and tokenizer in ``__metadata__``)."""
    meta = mconv_metadata(tokenizer=tokenizer) if metadata is None else metadata
    header, data = st_header(hf_tensors(), meta)
    return write_bytes(os.path.join(d, name), pack_safetensors(header, data))


def valid_hf_dir(d: str, *, config: Optional[Mapping[str, Any]] = None, params: Optional[Mapping[str, Any]] = None,
                 sp: Optional[bytes] = None, shards: int = 1) -> str:
    """An HF-style directory: model.safetensors (or ``shards`` shards + index) without mconv
    metadata, config.json (unless ``params`` is given instead) and optionally tokenizer.model."""
    os.makedirs(d, exist_ok=True)
    tensors = hf_tensors()
    if shards == 1:
        header, data = st_header(tensors, {"format": "pt"})
        write_bytes(os.path.join(d, "model.safetensors"), pack_safetensors(header, data))
    else:
        weight_map = {}
        per = -(-len(tensors) // shards)
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = tensors[i * per:(i + 1) * per]
            header, data = st_header(part, {"format": "pt"})
            write_bytes(os.path.join(d, fname), pack_safetensors(header, data))
            weight_map.update({t.name: fname for t in part})
        write_json(os.path.join(d, INDEX_NAME), {"metadata": {"total_size": sum(len(t.data) for t in tensors)},
                                                 "weight_map": weight_map})
    if params is not None:
        write_json(os.path.join(d, "params.json"), params)
    else:
        write_json(os.path.join(d, "config.json"), hf_config() if config is None else config)
    if sp is not None:
        write_bytes(os.path.join(d, "tokenizer.model"), sp)
    return d


# -- sentencepiece ---------------------------------------------------------------------------------

def sp_model_bytes(n_pieces: int = TINY["n_vocab"]) -> bytes:
    """A SentencePiece BPE ModelProto in the Llama layout (unk 0, bos 1, eos 2), built field by
    field rather than trained, so it is tiny and identical everywhere."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    normal = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581t", "\u2581th", "\u2581the"]
    for i, (piece, kind) in enumerate(specials + [(p, 1) for p in normal][: n_pieces - len(specials)]):
        sp = proto.pieces.add()
        sp.piece = piece
        sp.score = 0.0 if kind != 1 else -float(i)
        sp.type = kind
    spec = proto.trainer_spec
    spec.model_type = 2
    spec.vocab_size = len(proto.pieces)
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = True
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def deterministic_bytes(n: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def tree_digest(root: str) -> dict[str, tuple[int, str]]:
    """relative path -> (size, sha256) of every file under ``root`` (``root`` itself if a file);
    FIFOs, devices and links are listed by kind, never opened."""
    import hashlib
    import stat

    def one(path: str) -> tuple[int, str]:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return (0, "link:" + os.readlink(path))
        if not stat.S_ISREG(st.st_mode):
            return (0, f"kind:{stat.S_IFMT(st.st_mode)}")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return (st.st_size, h.hexdigest())

    if not os.path.isdir(root) or os.path.islink(root):
        return {".": one(root)} if os.path.lexists(root) else {}
    out = {}
    for base, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(base, name)
            if name in dirs and not os.path.islink(path):
                out[os.path.relpath(path, root) + "/"] = (0, "dir")
            else:
                out[os.path.relpath(path, root)] = one(path)
    return out


