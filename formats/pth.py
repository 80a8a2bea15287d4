"""PyTorch checkpoints without torch: ``.pth`` / ``.pt`` / ``pytorch_model*.bin``, read safely and
written so that ``torch.load(path, weights_only=True)`` loads them.

Reading (the containers and the restricted unpickler live in _torch_file.py, _torch_zip.py and
_torch_pickle.py) accepts the checkpoint shapes people have:

* a bare state_dict (a dict or OrderedDict of tensors, nested dicts joined with '.');
* a training checkpoint: a dict with ``model`` (or ``state_dict``); llama2.c's train.py adds
  ``model_args`` (ModelArgs, Meta key names: the file's own hparams) and ``optimizer`` (skipped: its
  tensors are never read); a ``_orig_mod.`` prefix (torch.compile) is stripped;
* a TorchScript archive, whose objects' tensors are named by their attribute paths;
* a Meta directory: ``consolidated.NN.pth`` model-parallel shards + ``params.json`` +
  ``tokenizer.model``, merged lazily (FORMATS.md L(f)): ``tok_embeddings.*``, ``*.attention.wo`` and
  ``*.feed_forward.w2`` along axis 1, every other matrix along axis 0, 1-D tensors from shard 0;
* a Hugging Face directory: ``pytorch_model.bin`` or ``pytorch_model-0000i-of-0000n.bin`` (+
  ``pytorch_model.bin.index.json``) + ``config.json``, q/k un-permuted to the Meta layout.

Names are matched to the meta, hf or gguf column of the naming table (``rope.freqs`` and HF's
``rotary_emb.inv_freq`` are dropped); hparams resolve as --hparam > ``model_args`` > config.json /
params.json > tensor shapes > defaults; ``tokenizer.model`` beside the checkpoint is the tokenizer.

Writing always uses Meta names and the Meta (= canonical) q/k layout:

* ``OUT/`` -> ``consolidated.00.pth`` + ``params.json`` + ``tokenizer.model``.  params.json holds
  dim, n_layers, n_heads, n_kv_heads, vocab_size, norm_eps, ``multiple_of`` (and if needed
  ``ffn_dim_multiplier``) chosen so that Meta's FeedForward rule gives exactly n_ff, and rope_theta
  when it is not 10000 (Llama 2's ModelArgs has no such field).  n_ctx is not stored: Meta's loader
  takes it at load time (``max_seq_len``).
* a file, ``-O layout=state_dict`` (default): a bare state_dict.  It has no slot for hparams: n_head
  (and norm_eps, rope_theta, n_ctx unless they equal the defaults a reader assumes) are reported lost,
  and so is the tokenizer.
* a file, ``-O layout=checkpoint``: ``{'model': state_dict, 'model_args': {...}}`` as llama2.c's
  train.py writes (its ModelArgs keys, hidden_dim = n_ff, max_seq_len = n_ctx, dropout 0.0; rope_theta
  only when it is not 10000, so llama2.c refuses such a file instead of running it with the wrong
  RoPE).  Every hparam survives; the tokenizer does not.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

from mconv.plugins import (
    DIR_CONSOLIDATED_PTH,
    DIR_OTHER_PTH,
    DIR_PYTORCH_BIN,
    LOSSY,
    WARNING,
    Format,
    FormatError,
    Loss,
    Model,
    ReadContext,
    Step,
    Tensor,
    UnsupportedError,
    UsageError,
    WriteContext,
    WriterOption,
    check_tensor_count,
    concat,
    hookimpl,
    merge_shards,
    read_sentencepiece_file,
    read_weight_map,
    resolve,
    sentencepiece_bytes,
    sidecar_hparams,
    table,
)

from . import _torch_file, _torch_save
from ._torch_pickle import PickledOrderedDict, Record, TensorRef
from ._torch_zip import read_directory

META_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
HF_SHARD_RE = re.compile(r"^pytorch_model-(\d{5})-of-(\d{5})\.bin$")
HF_SINGLE = "pytorch_model.bin"
HF_INDEX = "pytorch_model.bin.index.json"
SIDECARS = ("config.json", "params.json", "tokenizer.model", HF_INDEX)

#: Meta model-parallel layers split along axis 1 (ParallelEmbedding, RowParallelLinear); every
#: other matrix is split along axis 0 (ColumnParallelLinear) and 1-D tensors are replicated
META_AXIS1 = tuple(re.compile(p) for p in (r"tok_embeddings\..+", r"layers\.\d+\.attention\.wo\.weight",
                                            r"layers\.\d+\.feed_forward\.w2\.weight"))
#: keys of a training checkpoint that hold the model's state_dict, by preference
MODEL_KEYS = ("model", "state_dict")
COMPILE_PREFIX = "_orig_mod."
LAYOUTS = ("state_dict", "checkpoint")

#: params.json (Meta dir) and model_args (checkpoint layout) keys, canonical -> Meta spelling
PARAMS_KEYS = {"n_embd": "dim", "n_layer": "n_layers", "n_head": "n_heads", "n_head_kv": "n_kv_heads",
               "n_vocab": "vocab_size"}
#: hparams each output layout keeps: model_args holds all of them, params.json all but n_ctx, and a bare
#: state_dict only what a reader recovers from tensor shapes (n_head_kv once n_head is given)
CHECKPOINT_HPARAMS = frozenset({*PARAMS_KEYS, "n_ff", "n_ctx", "norm_eps", "rope_theta"})
DIRECTORY_HPARAMS = CHECKPOINT_HPARAMS - {"n_ctx"}
STATE_DICT_HPARAMS = frozenset({"n_vocab", "n_embd", "n_ff", "n_layer", "n_head_kv"})
DEFAULT_THETA = 10000.0


# ==================================================================================================
# reading
# ==================================================================================================

@dataclass(frozen=True)
class _Part:
    """The tensors (raw names) and own hparams of one checkpoint file."""

    path: str
    tensors: dict[str, Tensor]
    model_args: Optional[dict[str, Any]]
    notes: list[str]


def _is_dict(x: Any) -> bool:
    return type(x) is dict or type(x) is PickledOrderedDict


def _read_part(path: str, ctx: ReadContext) -> _Part:
    loaded = _torch_file.load(path)
    obj = loaded.obj
    notes: list[str] = []
    model_args = None
    if loaded.container == "torchscript":
        if type(obj) is not Record:
            raise FormatError("TorchScript archive's data.pkl is not a module object", path=path)
        notes.append(f"{os.path.basename(path)}: TorchScript archive ({obj.qualname}); weights read as data, "
                     "code ignored")
    elif loaded.container == "legacy":
        notes.append(f"{os.path.basename(path)}: legacy (pre-zip) torch.save format")
    if _is_dict(obj):
        key = next((k for k in MODEL_KEYS if k in obj and _is_dict(obj[k])), None)
        if key is not None:
            args = obj.get("model_args")
            if args is not None:
                if not _is_dict(args):
                    raise FormatError(f"model_args is a {type(args).__name__}, not a dict", path=path)
                model_args = dict(args)
            skipped = [str(k) for k in obj if k not in (key, "model_args")]
            notes.append(f"{os.path.basename(path)}: training checkpoint, weights from {key!r}"
                         + (f"; skipped {', '.join(skipped)}" if skipped else ""))
            obj = obj[key]
    factory = _torch_file.TensorFactory(loaded, ctx.cache)
    tensors: dict[str, Tensor] = {}
    owner: dict[int, str] = {}
    stripped = False
    for name, leaf in _torch_file.walk(obj, path=path):
        if not isinstance(leaf, TensorRef):
            continue
        name = name or "tensor"   # torch.save(a_tensor)
        if name.startswith(COMPILE_PREFIX):
            name = name[len(COMPILE_PREFIX):]
            stripped = True
        if name in tensors:
            raise FormatError("two tensors have this name", path=path, tensor=name)
        tensors[name] = factory.tensor(name, leaf)
        try:
            check_tensor_count(len(tensors))
        except FormatError as e:
            raise e.at(path=path)
        first = owner.setdefault(id(leaf.storage), name)
        if first != name:
            notes.append(f"{name} shares its storage with {first}")
    if stripped:
        notes.append(f"stripped the {COMPILE_PREFIX!r} prefix of torch.compile")
    return _Part(path, tensors, model_args, notes)


def _numbered(files: list[str], rx: re.Pattern[str], what: str, directory: str) -> list[str]:
    """Shard files sorted by number, refusing gaps and disagreeing totals."""
    matched = sorted((int(m.group(1)), m) for m in map(rx.match, files) if m)
    numbers = [n for n, _ in matched]
    first = 1 if rx is HF_SHARD_RE else 0
    if numbers != list(range(first, first + len(numbers))):
        raise FormatError(f"{what} shards are not numbered {first}..{first + len(numbers) - 1} without gaps: "
                          f"{', '.join(m.group(0) for _, m in matched)}", path=directory)
    if rx is HF_SHARD_RE and any(int(m.group(2)) != len(numbers) for _, m in matched):
        raise FormatError(f"{len(numbers)} {what} shards but their names say another total", path=directory)
    return [os.path.join(directory, m.group(0)) for _, m in matched]


def _discover(path: str) -> tuple[str, list[str], Optional[dict[str, str]]]:
    """(layout, files, HF weight map) of an input: layout "meta", "hf" or "single"."""
    if not os.path.isdir(path):
        base = os.path.basename(path)
        if META_SHARD_RE.match(base) or HF_SHARD_RE.match(base):
            layout, files, wmap = _discover(os.path.dirname(os.path.abspath(path)))
            if os.path.abspath(path) in [os.path.abspath(f) for f in files]:
                return layout, files, wmap
        return "single", [path], None
    entries = sorted(os.listdir(path))
    if HF_INDEX in entries:
        files, wmap = read_weight_map(os.path.join(path, HF_INDEX))
        return "hf", files, wmap
    if any(HF_SHARD_RE.match(e) for e in entries):
        return "hf", _numbered(entries, HF_SHARD_RE, "pytorch_model-*.bin", path), None
    if HF_SINGLE in entries:
        return "hf", [os.path.join(path, HF_SINGLE)], None
    if any(META_SHARD_RE.match(e) for e in entries):
        return "meta", _numbered(entries, META_SHARD_RE, "consolidated.*.pth", path), None
    others = [e for e in entries if e.endswith((".pth", ".pt")) and os.path.isfile(os.path.join(path, e))]
    if len(others) == 1:
        return "single", [os.path.join(path, others[0])], None
    if others:
        raise FormatError(f"several checkpoint files and no Meta or HF layout: {', '.join(others)}; pass one",
                          path=path)
    raise FormatError("no consolidated.*.pth, pytorch_model*.bin, *.pth or *.pt in this directory", path=path)


def _merge_meta(parts: list[_Part]) -> tuple[dict[str, Tensor], list[str]]:
    first = parts[0]
    for p in parts[1:]:
        if set(p.tensors) != set(first.tensors):
            odd = sorted(set(p.tensors) ^ set(first.tensors))
            raise FormatError(f"shard holds other tensors than {os.path.basename(first.path)} (e.g. {odd[0]!r})",
                              path=p.path)
    out: dict[str, Tensor] = {}
    for name, t in first.tensors.items():
        pieces = [p.tensors[name] for p in parts]
        if len(t.shape) <= 1:
            for p, piece in zip(parts, pieces):
                if piece.shape != t.shape or piece.dtype != t.dtype:
                    raise FormatError(f"replicated tensor has shape {piece.shape} {piece.dtype.name} here but "
                                      f"{t.shape} {t.dtype.name} in shard 0", path=p.path, tensor=name)
            out[name] = t
        else:
            axis = 1 if any(rx.fullmatch(name) for rx in META_AXIS1) else 0
            out[name] = concat(name, pieces, axis)
    return out, [f"merged {len(parts)} model-parallel shards (Meta layout)"]


def read_pth(path: str, ctx: ReadContext) -> Model:
    layout, files, wmap = _discover(path)
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for f in files:
        if not os.path.isfile(f):
            raise FormatError("shard is missing", path=f)
    parts = [_read_part(f, ctx) for f in files]
    notes = [n for p in parts for n in p.notes]
    if layout == "meta" and len(parts) > 1:
        raw, merge_notes = _merge_meta(parts)
        notes += merge_notes
    elif layout == "hf":
        raw = merge_shards([(p.path, p.tensors) for p in parts], wmap, os.path.join(directory, HF_INDEX))
    else:
        raw = parts[0].tensors

    names = table("llama")
    convention = ctx.names or names.detect_convention(raw, ("meta", "hf", "gguf"))[0]
    tensors, ignored = names.canonical_tensors(raw, convention)
    notes.extend(f"ignored {name}" for name in ignored)

    model = Model(arch="llama", hparams={}, tensors=tensors, format="pth",
                  files=tuple(os.path.abspath(f) for f in files), cache=ctx.cache)
    layers: list[tuple[str, dict[str, Any]]] = []
    args = next((p.model_args for p in parts if p.model_args is not None), None)
    if args is not None:
        layers.append(("model_args", names.hparams_from(args, "meta", "model_args")))
    layers.extend(sidecar_hparams(directory, names))
    resolve(model, names, layers, ctx.hparams)
    for name, t in list(tensors.items()):
        tensors[name] = names.to_canonical_layout(t, convention, model.hparams)
    model.history.append(Step("names", f"{convention} naming convention"))
    model.history.extend(Step("note", n) for n in notes)
    sp_path = os.path.join(directory, "tokenizer.model")
    if os.path.isfile(sp_path):
        model.tokenizer = read_sentencepiece_file(sp_path)
    model.files += tuple(os.path.abspath(os.path.join(directory, s)) for s in SIDECARS
                         if os.path.isfile(os.path.join(directory, s)))
    return model


# ==================================================================================================
# writing
# ==================================================================================================

def _hp(model: Model, key: str) -> Any:
    if key not in model.hparams:
        raise UnsupportedError(f"hparam {key} is needed to write a Meta checkpoint; give it with --hparam {key}=N")
    return model.hparams[key]


def meta_state_dict(model: Model) -> "OrderedDict[str, Tensor]":
    """Tensors under Meta names (extras keep their own) in the Meta (canonical) q/k layout."""
    names = table(model.arch)
    out: OrderedDict[str, Tensor] = OrderedDict()
    for t in model.tensors.values():
        name = names.from_canonical(t.name, "meta") or t.name
        if name in out:
            raise UnsupportedError(f"two tensors would be named {name!r}", tensor=t.name)
        out[name] = t
    return out


def params_json(model: Model) -> dict[str, Any]:
    """Meta's params.json.  Meta's FeedForward computes hidden = int(2 * 4 * dim / 3), scaled by
    ffn_dim_multiplier, rounded up to a multiple of multiple_of: with multiple_of = n_ff any hidden in
    [1, n_ff] rounds to n_ff, and the multiplier n_ff / hidden brings a larger one into that range."""
    out: dict[str, Any] = {v: int(_hp(model, k)) for k, v in PARAMS_KEYS.items()}
    n_ff = int(_hp(model, "n_ff"))
    out["multiple_of"] = n_ff
    base = int(2 * (4 * out["dim"]) / 3)
    if base > n_ff:
        out["ffn_dim_multiplier"] = n_ff / base
    out["norm_eps"] = float(_hp(model, "norm_eps"))
    theta = float(model.hparams.get("rope_theta", DEFAULT_THETA))
    if theta != DEFAULT_THETA:
        out["rope_theta"] = theta
    return out


def model_args(model: Model) -> dict[str, Any]:
    """llama2.c ModelArgs (train.py's checkpoint['model_args'])."""
    out: dict[str, Any] = {v: int(_hp(model, k)) for k, v in PARAMS_KEYS.items()}
    out["hidden_dim"] = int(_hp(model, "n_ff"))
    out["norm_eps"] = float(_hp(model, "norm_eps"))
    out["max_seq_len"] = int(_hp(model, "n_ctx"))
    out["dropout"] = 0.0
    theta = float(model.hparams.get("rope_theta", DEFAULT_THETA))
    if theta != DEFAULT_THETA:
        out["rope_theta"] = theta
    return out


def _write_torch(path: str, archive: str, obj: Any, progress: Callable[[int], None]) -> None:
    with open(path, "wb") as f:
        _torch_save.save(f, archive, obj, progress)


def _parse_layout(text: str) -> str:
    value = text.strip().lower().replace("-", "_")
    if value not in LAYOUTS:
        raise ValueError(f"not a layout: {text!r} (choose {' or '.join(LAYOUTS)})")
    return value


class PthFormat(Format):
    name = "pth"
    extensions = (".pth", ".pt")
    description = ("PyTorch checkpoint (zip or legacy torch.save, TorchScript weights), Meta consolidated.*.pth "
                   "directory, HF pytorch_model*.bin")
    dtypes = _torch_save.WRITABLE_DTYPES
    #: the most a layout keeps (-O layout=checkpoint); plan_losses reports what the others lose
    stored_hparams = CHECKPOINT_HPARAMS
    stores_tokenizer = True
    stores_metadata = False
    has_directory_layout = True
    writer_options = {
        "layout": WriterOption("layout", _parse_layout, "state_dict",
                               "single-file output: state_dict (bare, Meta names) or checkpoint ({'model', "
                               "'model_args'} as llama2.c's train.py writes, keeping every hparam)"),
    }

    def sniff(self, path: str, head: bytes, size: int, is_dir: bool) -> float:
        if is_dir:
            try:
                entries = os.listdir(path)
            except OSError:
                return 0.0
            if HF_INDEX in entries or HF_SINGLE in entries or any(HF_SHARD_RE.match(e) for e in entries):
                return DIR_PYTORCH_BIN
            if any(META_SHARD_RE.match(e) for e in entries):
                return DIR_CONSOLIDATED_PTH
            if any(e.endswith((".pth", ".pt")) for e in entries):
                return DIR_OTHER_PTH
            return 0.0
        try:
            with open(path, "rb") as f:
                kind = _torch_file.container_kind(f.read(512))
                if kind == "zip":
                    names = read_directory(f, path, check_local=False).members
                    if any(n.endswith("/data.pkl") for n in names):
                        return 1.0
        except FormatError:
            pass
        except OSError:
            return 0.0
        if kind == "zip":
            # a damaged or foreign zip named like a checkpoint: let the reader say what is wrong with it
            return 0.5 if path.endswith((".pth", ".pt")) else 0.0
        return {"legacy": 1.0, "tar": 0.9}.get(kind or "", 0.0)

    def read(self, path: str, ctx: ReadContext) -> Model:
        return read_pth(path, ctx)

    def plan_losses(self, model: Model, ctx: WriteContext) -> list[Loss]:
        layout = ctx.options.get("layout", "state_dict")
        losses: list[Loss] = []
        tok = model.tokenizer
        if ctx.as_directory:
            kept = DIRECTORY_HPARAMS
            if tok is not None and sentencepiece_bytes(tok) is None:
                losses.append(Loss("tokenizer", f"({len(tok)} tokens)", f"a {tok.model} tokenizer has no "
                                   "tokenizer.model form; dropped", LOSSY))
        else:
            kept = CHECKPOINT_HPARAMS if layout == "checkpoint" else STATE_DICT_HPARAMS
            if tok is not None:
                losses.append(Loss("tokenizer", f"({len(tok)} tokens)", "a single .pth file has no slot for it "
                                   "(write OUT/ for a Meta directory with tokenizer.model); dropped", LOSSY))
        defaults = table(model.arch).defaults
        for key, value in sorted(model.hparams.items()):
            # keys beyond stored_hparams are reported by core's planner
            if key in kept or key not in self.stored_hparams:
                continue
            if ctx.as_directory:   # only n_ctx
                losses.append(Loss("hparam", key, f"{value!r} is not stored in params.json; Meta's loader takes "
                                   "it at load time (max_seq_len)", WARNING))
            elif defaults.get(key) != value:   # a reader assumes the default
                losses.append(Loss("hparam", key, f"{value!r} cannot be stored in a bare state_dict (use -O "
                                   f"layout=checkpoint or OUT/); a reader needs --hparam {key}={value}", LOSSY))
        return losses

    def write(self, model: Model, path: str, ctx: WriteContext) -> None:
        layout = ctx.options.get("layout", "state_dict")
        state = meta_state_dict(model)
        if ctx.as_directory:
            if layout != "state_dict":
                raise UsageError(f"-O layout={layout} applies to single-file output; a directory gets Meta's layout")
            _write_torch(os.path.join(path, "consolidated.00.pth"), "consolidated.00", state, ctx.progress)
            with open(os.path.join(path, "params.json"), "w", encoding="utf-8") as f:
                f.write(json.dumps(params_json(model)) + "\n")
            sp = sentencepiece_bytes(model.tokenizer) if model.tokenizer is not None else None
            if sp is not None:
                with open(os.path.join(path, "tokenizer.model"), "wb") as f:
                    f.write(sp)
            return
        obj: Any = state if layout == "state_dict" else {"model": state, "model_args": model_args(model)}
        _write_torch(path, _torch_save.archive_name(ctx.final_path or path), obj, ctx.progress)


@hookimpl
def register_formats(register: Callable[[object], None]) -> None:
    register(PthFormat)
