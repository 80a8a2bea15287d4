#!/usr/bin/env python3
"""Train the tiny "pydoc-llama" demo model from scratch on CPU.

This example script produces the small but real Llama checkpoint that mconv
uses as its demo / test model.  It is the only place in the project that uses
PyTorch; the ``mconv`` package itself never imports this file.

What it does, step by step:

1. **Corpus.**  Collects the docstrings (module, class, function) of the Python
   standard library of the running interpreter.  The ``.py`` files under
   ``sysconfig.get_paths()["stdlib"]`` are *parsed* with :mod:`ast`, never
   imported, so nothing is executed.  Test suites, IDLE, ``site-packages``,
   ``lib2to3``, demos and ``ensurepip`` are skipped.  Files are visited in
   sorted order, docstrings in source order; each is cleaned with
   :func:`inspect.cleandoc` (via ``ast.get_docstring``), trailing whitespace
   is stripped, and exact duplicates are kept only once.  The corpus therefore
   depends only on the Python version, which is recorded together with a
   sha256 of the corpus text.
2. **Tokenizer.**  Trains a 512-piece SentencePiece BPE model in-process with
   the Llama layout: ``<unk>``=0, ``<s>``=1, ``</s>``=2, byte pieces
   ``<0x00>``..``<0xFF>`` = ids 3..258, ``byte_fallback``, identity
   normalisation, dummy prefix, no whitespace squashing.
3. **Model.**  A plain-torch Llama (RMSNorm, RoPE in Meta's interleaved-pair
   layout, grouped-query attention, SwiGLU, untied classifier) whose parameter
   names are exactly those of Meta's ``consolidated.00.pth`` checkpoints.
4. **Training.**  AdamW + warmup/cosine schedule on random 128-token windows of
   the first 95 % of the token stream; the last 5 % is held out for
   validation.  Fixed seed, two threads, fixed step count.
5. **Output** (default ``examples/build/pydoc-llama-train/``):

   - ``model.safetensors``  weights in bfloat16, Meta names
   - ``params.json``        Meta-style hyper-parameters
   - ``tokenizer.model``    SentencePiece model
   - ``TRAINING.md``        record of corpus, settings, losses, sample
   - ``reference_logits.npy`` float32 logits (T, 512) for ``<s> Return the``
     computed in float32 from the *bf16-rounded* weights
   - ``model_f32.pt``       full-precision float32 weights (before bf16
     rounding), ``torch.save(state_dict)``; for cross-checks, not committed

Rerun (about five minutes on two CPU cores)::

    /work/venvs/dev/bin/python examples/train_demo.py
    /work/venvs/dev/bin/python examples/train_demo.py --steps 200 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import math
import os
import platform
import re
import shlex
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import safetensors
import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

DEFAULT_OUT = Path(__file__).resolve().parent / "build" / "pydoc-llama-train"
DEFAULT_SEED = 1337
DEFAULT_STEPS = 1500
NUM_THREADS = 2
PROMPT = "Return the"
EXTRA_PROMPTS = ("Create a", "If the", "This module")

# Directory names that are never descended into while collecting docstrings.
SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "site-packages",
        "dist-packages",
        "lib2to3",
        "turtledemo",
        "ensurepip",
    }
)


# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    docs: list[str]
    text: str
    n_files: int
    python_version: str
    sha256: str


def stdlib_source_files(root: Path) -> list[Path]:
    """All ``.py`` files below ``root`` outside skipped directories, sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")
        ]
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def iter_docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of ``node`` and its nested classes/functions, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)  # inspect.cleandoc
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        yield from iter_docstrings(child)


def normalise_docstring(doc: str) -> str:
    """Strip trailing spaces per line and collapse runs of blank lines."""
    lines = [line.rstrip() for line in doc.expandtabs(8).split("\n")]
    text = "\n".join(lines).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text)


def build_corpus() -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: dict[str, None] = {}  # ordered set: first occurrence wins
    n_files = 0
    for path in stdlib_source_files(root):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue
        n_files += 1
        for doc in iter_docstrings(tree):
            doc = normalise_docstring(doc)
            if doc:
                docs.setdefault(doc, None)
    doc_list = list(docs)
    text = "\n\n".join(doc_list)
    return Corpus(
        docs=doc_list,
        text=text,
        n_files=n_files,
        python_version=platform.python_version(),
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

TOKENIZER_OPTIONS: dict[str, object] = dict(
    model_type="bpe",
    vocab_size=512,
    character_coverage=1.0,
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    normalization_rule_name="identity",
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    input_sentence_size=0,  # use every sentence: no sampling
    shuffle_input_sentence=False,
    max_sentence_length=16384,
    num_threads=1,
    minloglevel=2,
)


def train_tokenizer(corpus: Corpus, seed: int) -> bytes:
    """Train the BPE model on the corpus lines; return the serialized model."""
    lines = [line for doc in corpus.docs for line in doc.split("\n") if line.strip()]
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, **TOKENIZER_OPTIONS
    )
    model = buf.getvalue()
    check_llama_layout(spm.SentencePieceProcessor(model_proto=model))
    return model


def check_llama_layout(sp: spm.SentencePieceProcessor) -> None:
    assert sp.vocab_size() == 512, sp.vocab_size()
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    for b in range(256):
        assert sp.id_to_piece(3 + b) == f"<0x{b:02X}>", (b, sp.id_to_piece(3 + b))
        assert sp.is_byte(3 + b)


def encode_corpus(sp: spm.SentencePieceProcessor, corpus: Corpus) -> torch.Tensor:
    """Token stream: ``<s> doc </s>`` for every docstring, concatenated."""
    ids: list[int] = []
    for doc_ids in sp.encode(corpus.docs):
        ids.append(sp.bos_id())
        ids.extend(doc_ids)
        ids.append(sp.eos_id())
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    vocab_size: int = 512
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 256
    hidden_dim: int = 352

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_seq_len, head_dim // 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of the last dim (Meta interleaved layout).

    x: (B, T, H, head_dim); cos/sin: (T, head_dim // 2).
    Equivalent to treating each pair as the complex number x[2i] + j*x[2i+1]
    and multiplying it by exp(j * pos * theta^(-2i/head_dim)).
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        n_rep = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(n_rep, dim=1)  # query head h -> kv head h // n_rep
        v = v.repeat_interleave(n_rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self) -> None:
        """GPT-2 style init: N(0, 0.02), residual projections scaled down."""
        resid_std = 0.02 / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=resid_std)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seqlen = tokens.shape[1]
        assert seqlen <= self.args.max_seq_len
        cos, sin = self.rope_cos[:seqlen], self.rope_sin[:seqlen]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.output(self.norm(h)).float()


def meta_param_names(args: ModelArgs) -> list[str]:
    names = ["tok_embeddings.weight", "norm.weight", "output.weight"]
    for i in range(args.n_layers):
        p = f"layers.{i}."
        names += [p + "attention_norm.weight", p + "ffn_norm.weight"]
        names += [p + f"attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")]
        names += [p + f"feed_forward.{w}.weight" for w in ("w1", "w2", "w3")]
    return names


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    seed: int = DEFAULT_SEED
    steps: int = DEFAULT_STEPS
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 60
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    eval_every: int = 100
    eval_windows: int = 48


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from lr to min_lr over the run."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def random_batch(
    stream: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(stream) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
    windows = torch.stack([stream[s : s + cfg.seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def fixed_windows(stream: torch.Tensor, seq_len: int, limit: int | None) -> torch.Tensor:
    """Non-overlapping (seq_len + 1)-token windows, evenly spread over ``stream``."""
    n = (len(stream) - 1) // seq_len
    idx = torch.arange(n) if limit is None or limit >= n else torch.linspace(0, n - 1, limit).long()
    return torch.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in idx.tolist()])


@torch.no_grad()
def evaluate(model: Transformer, windows: torch.Tensor, batch_size: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        total += loss.item()
        count += chunk[:, 1:].numel()
    model.train()
    return total / count


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


@dataclass
class TrainResult:
    train_loss: float
    val_loss: float
    seconds: float
    log: list[str]


def train(
    model: Transformer, train_stream: torch.Tensor, val_stream: torch.Tensor, cfg: TrainConfig
) -> TrainResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    val_probe = fixed_windows(val_stream, cfg.seq_len, cfg.eval_windows)
    log: list[str] = []
    running, n_running = 0.0, 0
    t0 = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = random_batch(train_stream, cfg, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running += loss.item()
        n_running += 1
        last = step == cfg.steps - 1
        if (step + 1) % cfg.eval_every == 0 or step == 0 or last:
            line = (
                f"step {step + 1:5d}/{cfg.steps}  lr {lr_at(step, cfg):.2e}  "
                f"train {running / n_running:.4f}  val {evaluate(model, val_probe):.4f}  "
                f"{time.perf_counter() - t0:6.1f}s"
            )
            print(line, flush=True)
            log.append(line)
            running, n_running = 0.0, 0
    seconds = time.perf_counter() - t0
    train_probe = fixed_windows(train_stream, cfg.seq_len, len(fixed_windows(val_stream, cfg.seq_len, None)))
    return TrainResult(
        train_loss=evaluate(model, train_probe),
        val_loss=evaluate(model, fixed_windows(val_stream, cfg.seq_len, None)),
        seconds=seconds,
        log=log,
    )


# --------------------------------------------------------------------------
# Export, reference outputs, record
# --------------------------------------------------------------------------


def params_json(args: ModelArgs) -> dict[str, object]:
    return {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "vocab_size": args.vocab_size,
        "multiple_of": args.multiple_of,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "max_seq_len": args.max_seq_len,
        "hidden_dim": args.hidden_dim,
    }


def export(model: Transformer, tokenizer: bytes, out: Path) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert sorted(state) == sorted(meta_param_names(model.args)), sorted(state)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
    save_file(bf16, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)  # safetensors creates it 0600
    torch.save(state, out / "model_f32.pt")
    (out / "params.json").write_text(json.dumps(params_json(model.args)) + "\n")
    (out / "tokenizer.model").write_bytes(tokenizer)


def load_bf16_as_f32(path: Path, args: ModelArgs) -> Transformer:
    """Fresh model holding the saved bf16 weights upcast to float32."""
    weights = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    model = Transformer(args)
    model.load_state_dict(weights, strict=True)
    return model.eval()


@torch.no_grad()
def greedy_sample(model: Transformer, prompt_ids: list[int], max_new: int, eos: int) -> list[int]:
    ids = list(prompt_ids)
    for _ in range(max_new):
        window = torch.tensor([ids[-model.args.max_seq_len :]])
        nxt = int(model(window)[0, -1].argmax())
        if nxt == eos:
            break
        ids.append(nxt)
    return ids


def write_record(
    out: Path,
    corpus: Corpus,
    n_tokens: int,
    margs: ModelArgs,
    cfg: TrainConfig,
    result: TrainResult,
    n_params: int,
    prompt_ids: list[int],
    samples: dict[str, str],
    command: str,
    total_seconds: float,
) -> None:
    other_samples = "\n\n".join(
        f"`{p}`:\n\n```\n{text}\n```" for p, text in samples.items() if p != PROMPT
    )
    tok_opts = "\n".join(f"- `{k}` = `{v!r}`" for k, v in TOKENIZER_OPTIONS.items())
    files = "\n".join(
        f"- `{p.name}`: {p.stat().st_size} bytes, sha256 `{hashlib.sha256(p.read_bytes()).hexdigest()}`"
        for p in sorted(out.iterdir())
        if p.is_file() and p.name != "TRAINING.md"
    )
    text = f"""# pydoc-llama-train: training record

A tiny Llama trained from scratch by `examples/train_demo.py`.

## Corpus

- Source: docstrings (module/class/function) of the CPython standard library,
  parsed with `ast` from the `.py` files under `sysconfig.get_paths()["stdlib"]`
  (never imported). Skipped directories: {", ".join(f"`{d}`" for d in sorted(SKIP_DIRS))}, `config-*`.
- Cleaning: `inspect.cleandoc`, trailing whitespace stripped, tabs expanded,
  3+ newlines collapsed; exact duplicates kept once; joined with blank lines.
- Python version: {corpus.python_version}
- Files parsed: {corpus.n_files}
- Docstrings: {len(corpus.docs)}
- Characters: {len(corpus.text)}
- sha256 (UTF-8 corpus text): `{corpus.sha256}`
- Tokens (`<s> doc </s>` per docstring): {n_tokens}; last {cfg.val_fraction:.0%} held out for validation

## Tokenizer

SentencePiece {spm.__version__} BPE trained in-process on the non-empty corpus lines
(Llama layout: `<unk>`=0, `<s>`=1, `</s>`=2, `<0x00>`..`<0xFF>` = 3..258):

{tok_opts}

## Model

`params.json`: `{json.dumps(params_json(margs))}`

Parameters: {n_params} (untied `output.weight`), RoPE on interleaved adjacent
pairs (Meta layout), GQA with kv head = h // (n_heads // n_kv_heads).

## Training

- torch {torch.__version__}, safetensors {safetensors.__version__}, numpy {np.__version__}, {NUM_THREADS} threads, CPU
- Seed: {cfg.seed}
- Steps: {cfg.steps}, batch {cfg.batch_size} x {cfg.seq_len} tokens
- AdamW lr {cfg.lr} (warmup {cfg.warmup_steps}, cosine to {cfg.min_lr}),
  betas {cfg.betas}, weight decay {cfg.weight_decay} (matrices only), grad clip {cfg.grad_clip}
- Wall time: {result.seconds:.1f} s training loop, {total_seconds:.1f} s whole script
- Final train loss: {result.train_loss:.4f} (float32 weights, as many fixed train windows as val windows)
- Final val loss: {result.val_loss:.4f} (all held-out windows; ln(512) = {math.log(512):.4f})

```
{chr(10).join(result.log)}
```

## Sample

Greedy decoding (stops at `</s>` or after 64 tokens), bf16 weights upcast to
float32, prompt `{PROMPT}` (ids with BOS: `{prompt_ids}`):

```
{samples[PROMPT]}
```

Other prompts, same decoding:

{other_samples}

`reference_logits.npy` holds the float32 logits, shape ({len(prompt_ids)}, {margs.vocab_size}),
for those ids computed in float32 from the bf16-rounded weights.

## Files

{files}

`model_f32.pt` holds the unrounded float32 weights (`torch.save` of the
state dict); it is a local cross-check artefact, not meant to be committed.

## Command

```
{command}
```
"""
    (out / "TRAINING.md").write_text(text)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps (default: %(default)s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = shlex.join(["python", *sys.argv])
    torch.manual_seed(opts.seed)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    t_start = time.perf_counter()

    corpus = build_corpus()
    print(
        f"corpus: Python {corpus.python_version}, {corpus.n_files} files, "
        f"{len(corpus.docs)} docstrings, {len(corpus.text)} chars, sha256 {corpus.sha256}",
        flush=True,
    )

    tokenizer = train_tokenizer(corpus, opts.seed)
    sp = spm.SentencePieceProcessor(model_proto=tokenizer)
    stream = encode_corpus(sp, corpus)
    cfg = TrainConfig(seed=opts.seed, steps=opts.steps)
    n_val = int(len(stream) * cfg.val_fraction)
    train_stream, val_stream = stream[:-n_val], stream[-n_val:]
    print(
        f"tokenizer: {sp.vocab_size()} pieces, {len(tokenizer)} bytes; tokens: {len(stream)} "
        f"({len(corpus.text) / len(stream):.2f} chars/token), train {len(train_stream)}, val {len(val_stream)}",
        flush=True,
    )

    margs = ModelArgs()
    model = Transformer(margs)
    model.init_weights()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters; training {cfg.steps} steps of {cfg.batch_size}x{cfg.seq_len}", flush=True)

    result = train(model, train_stream, val_stream, cfg)
    print(
        f"final: train loss {result.train_loss:.4f}, val loss {result.val_loss:.4f} "
        f"(ln 512 = {math.log(512):.4f}), training {result.seconds:.1f}s",
        flush=True,
    )

    out: Path = opts.out
    export(model, tokenizer, out)

    ref = load_bf16_as_f32(out / "model.safetensors", margs)
    prompt_ids = [sp.bos_id(), *sp.encode(PROMPT)]
    with torch.no_grad():
        logits = ref(torch.tensor([prompt_ids]))[0].to(torch.float32)
    np.save(out / "reference_logits.npy", logits.numpy().astype(np.float32))
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    print(f"reference logits for {PROMPT!r} ids {prompt_ids}: shape {tuple(logits.shape)}")
    for pos, row in enumerate(logits):
        top = row.topk(5)
        tops = ", ".join(f"{sp.id_to_piece(int(i))!r}:{float(v):.3f}" for v, i in zip(top.values, top.indices))
        print(f"  pos {pos} ({sp.id_to_piece(prompt_ids[pos])!r}): {row[:8].numpy()} ... top5 {tops}")

    samples: dict[str, str] = {}
    for prompt in (PROMPT, *EXTRA_PROMPTS):
        ids = greedy_sample(ref, [sp.bos_id(), *sp.encode(prompt)], max_new=64, eos=sp.eos_id())
        samples[prompt] = sp.decode(ids[1:])
        print(f"sample (greedy, bf16 weights) for {prompt!r}:\n{samples[prompt]}\n", flush=True)

    total_seconds = time.perf_counter() - t_start
    write_record(
        out, corpus, len(stream), margs, cfg, result, n_params, prompt_ids, samples, command, total_seconds
    )
    print(f"wrote {out} in {total_seconds:.1f}s total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
