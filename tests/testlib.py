"""Shared test helpers: random llama models (fixed seeds), a small SentencePiece tokenizer trained
in-process, and CLI runners.  Importable from every test module (pytest ``pythonpath = tests``)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from mconv.core.arch.llama import expected_shapes
from mconv.plugins import Model, Tokenizer, get_dtype, table, tensor_from_array, tokenizer_from_sentencepiece

#: a tiny GQA model: 8 query heads, 2 kv heads, head size 4; n_vocab fits sp_tokenizer()
GQA = dict(n_vocab=384, n_embd=32, n_layer=2, n_head=8, n_head_kv=2, n_ff=88, n_ctx=128, norm_eps=1e-5,
           rope_theta=10000.0)
#: a tiny MHA model with a non-default theta and eps
MHA = dict(n_vocab=80, n_embd=48, n_layer=2, n_head=4, n_head_kv=4, n_ff=128, n_ctx=96, norm_eps=1e-6,
           rope_theta=500000.0)


def random_weights(hparams: dict[str, Any], seed: int = 0, tied: bool = False) -> dict[str, np.ndarray]:
    """Canonical name -> float32 values in canonical order, scaled like a trained model (norms near 1,
    matrices ~1/sqrt(in))."""
    rng = np.random.default_rng(seed)
    out = {}
    shapes = expected_shapes(hparams)
    for name in table("llama").canonical_order(shapes):
        shape = shapes[name]
        if tied and name == "output.weight":
            continue
        if len(shape) == 1:
            out[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    return out


def random_model(hparams: Optional[dict[str, Any]] = None, dtype: str = "f32", seed: int = 0, tied: bool = False,
                 tokenizer: Optional[Tokenizer] = None) -> Model:
    """An in-memory IR model with random weights stored as ``dtype`` (1-D tensors too)."""
    hp = dict(GQA if hparams is None else hparams)
    dt = get_dtype(dtype)
    tensors = {n: tensor_from_array(n, a, dt) for n, a in random_weights(hp, seed, tied).items()}
    origin = {k: "test" for k in hp}
    return Model("llama", hp, tensors, tokenizer=tokenizer, hparam_origin=origin, format="memory")


# -- tokenizer ------------------------------------------------------------------------------------------

def corpus_text() -> str:
    """Deterministic English-ish text that ships with Python: the docstrings of a few modules."""
    import ast
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    parts = []
    for mod in ("argparse.py", "textwrap.py", "string.py", "fractions.py", "json/__init__.py", "heapq.py"):
        with open(os.path.join(stdlib, mod), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc)
    return "\n".join(parts) + "\nnon-ASCII: café naïve — “quotes” ü\n"


_SP_CACHE: dict[int, bytes] = {}


def sentencepiece_model(vocab_size: int = 384) -> bytes:
    """A BPE SentencePiece model with byte fallback in the Llama layout (unk 0, bos 1, eos 2,
    ids 3..258 = <0x00>..<0xFF>), trained in-process; cached per vocab size."""
    if vocab_size not in _SP_CACHE:
        import sentencepiece as spm

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus_text().splitlines()), model_writer=model, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
            num_threads=1, minloglevel=2, split_digits=True, allow_whitespace_only_pieces=True,
            max_sentencepiece_length=16, shuffle_input_sentence=False)
        _SP_CACHE[vocab_size] = model.getvalue()
    return _SP_CACHE[vocab_size]


def sp_tokenizer(vocab_size: int = 384) -> Tokenizer:
    return tokenizer_from_sentencepiece(sentencepiece_model(vocab_size))


# -- CLI ------------------------------------------------------------------------------------------------

@dataclass
class Result:
    rc: int
    out: str
    err: str


def cli(*args: str) -> Result:
    """Run ``mconv`` in-process (fast); stdout/stderr captured."""
    from mconv.core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return Result(rc, out.getvalue(), err.getvalue())


def cli_subprocess(*args: str, env: Optional[dict[str, str]] = None, timeout: float = 300,
                   preexec: Any = None) -> Result:
    """Run ``python -m mconv.core`` in a child process (exit codes, signals, resource limits)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-m", "mconv.core", *map(str, args)], capture_output=True, text=True,
                       env=full_env, timeout=timeout, preexec_fn=preexec)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_same_tensors(a: Model, b: Model, names: Optional[Sequence[str]] = None) -> None:
    """Same names, shapes, dtypes and stored bytes."""
    names = list(a.tensors) if names is None else list(names)
    assert list(a.tensors) == list(b.tensors) if names is None else True
    for n in names:
        ta, tb = a.tensors[n], b.tensors[n]
        assert (ta.shape, ta.dtype) == (tb.shape, tb.dtype), (n, ta.shape, ta.dtype, tb.shape, tb.dtype)
        assert np.array_equal(ta.raw(), tb.raw()), n
