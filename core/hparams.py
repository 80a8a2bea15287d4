"""Hyper-parameter resolution (DESIGN.md Contracts):

``--hparam K=V`` > the file's own metadata > sidecar params.json/config.json > tensor shapes >
a documented per-format default.  Every default used is recorded in the model's history.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import FormatError, UsageError
from .ir import Model, Tensor
from .names import NameTable

REQUIRED = ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff")


def parse_cli_hparams(pairs: Sequence[str], table: NameTable) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--hparam expects KEY=VALUE, got {pair!r}")
        spec = table.hparam_by_key.get(key)
        if spec is None:
            raise UsageError(f"unknown hparam {key!r} (known: {', '.join(h.key for h in table.hparams)})")
        try:
            parsed = json.loads(value) if value.strip() else value
        except ValueError:
            raise UsageError(f"--hparam {key}={value}: not a valid {spec.type}")
        try:
            out[key] = spec.coerce(parsed, "--hparam")
        except FormatError as e:
            raise UsageError(e.message)
    return out


#: a JSON sidecar (config.json, params.json, index) larger than this is refused
MAX_SIDECAR_BYTES = 16 << 20


def load_json_sidecar(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            # a read of MAX_SIDECAR_BYTES + 1 would allocate that much up front: read what the file
            # holds (and one byte more, to notice a file that grew)
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, MAX_SIDECAR_BYTES) + 1)
            if len(data) > size:
                data += f.read(MAX_SIDECAR_BYTES + 1 - len(data))
        if len(data) > MAX_SIDECAR_BYTES:
            raise FormatError("JSON sidecar larger than 16 MiB", path=path)
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise FormatError("not valid JSON: it nests too deeply", path=path)
    except ValueError as e:
        # UnicodeDecodeError, JSONDecodeError, and int() refusing a literal of over 4300 digits
        raise FormatError(f"not valid JSON: {e}", path=path)
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=path)
    if not isinstance(value, dict):
        raise FormatError("expected a JSON object", path=path)
    return value


def sidecar_hparams(directory: str, table: NameTable) -> list[tuple[str, dict[str, Any]]]:
    """hparams from config.json (HF) and params.json (Meta) in ``directory``, as (origin, values)."""
    layers = []
    for fname, convention in (("config.json", "hf"), ("params.json", "meta")):
        path = os.path.join(directory, fname)
        if os.path.isfile(path):
            values = load_json_sidecar(path)
            try:
                # Meta's "vocab_size": -1 ("the tokenizer's size") is the naming table's `unset`
                layers.append((fname, table.hparams_from(values, convention, fname)))
            except FormatError as e:
                raise e.at(path=path)
    return layers


def infer_from_shapes(tensors: Mapping[str, Tensor], table: NameTable, known: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (name, axis) in table.infer.items():
        t = tensors.get(name)
        if t is not None and len(t.shape) > axis:
            out[key] = int(t.shape[axis])
    n_layer = table.block_count(tensors)
    if n_layer:
        out["n_layer"] = n_layer
    n_head = known.get("n_head")
    q, k = tensors.get("blk.0.attn_q.weight"), tensors.get("blk.0.attn_k.weight")
    if n_head and q is not None and k is not None and q.shape and k.shape and q.shape[0]:
        kv = n_head * k.shape[0] / q.shape[0]
        if kv.is_integer() and kv >= 1:
            out["n_head_kv"] = int(kv)
    return out


def resolve(model: Model, table: NameTable, layers: Sequence[tuple[str, Mapping[str, Any]]],
            overrides: Mapping[str, Any], defaults: Optional[Mapping[str, Any]] = None,
            required: Sequence[str] = REQUIRED) -> None:
    """Fill ``model.hparams``/``hparam_origin`` from ``overrides`` > ``layers`` (in order) > shapes > defaults."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, layer in [("--hparam", overrides), *layers]:
        for k, v in layer.items():
            if k not in values and v is not None:
                values[k], origin[k] = v, where
    for k, v in infer_from_shapes(model.tensors, table, values).items():
        if k not in values:
            values[k], origin[k] = v, "tensor shapes"
    merged_defaults = dict(table.defaults)
    merged_defaults.update(defaults or {})
    for k, v in merged_defaults.items():
        if k not in values:
            values[k], origin[k] = v, f"default ({model.format or 'mconv'})"
    for k in list(values):
        model.set_hparam(k, values[k], origin[k])
    missing = [k for k in required if k not in model.hparams]
    if missing and table.recognises(model.tensors):
        raise FormatError(f"hparam {missing[0]} is not stored in the file or a sidecar and cannot be inferred "
                          f"from tensor shapes; give it with --hparam {missing[0]}=N")


def same_hparam(x: Any, y: Any) -> bool:
    """Whether two hparam values are the same.  Floats compare at float32 precision: every format and
    loader keeps them as float32 (GGUF's eps is an f32; a value read back from one is
    9.99999975e-06, not 1e-05)."""
    if isinstance(x, float) or isinstance(y, float):
        try:
            return bool(np.float32(x) == np.float32(y))
        except (TypeError, ValueError):
            return False
    return bool(x == y)


def load_time_values(fmt: Any, model: Model) -> dict[str, Any]:
    """The model's values of the hparams ``fmt`` cannot store but its loaders take at load time: what
    reading that format back must be given (as a loader would be)."""
    return {k: model.hparams[k] for k in getattr(fmt, "load_time_hparams", {}) if k in model.hparams}
