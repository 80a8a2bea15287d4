"""Text generation as llama2.c run.c's ``generate`` does it, on the reference executor.

The prompt is encoded with BOS first (no prompt: BOS alone).  ``steps`` counts positions, prompt
included, as run.c's ``-n`` does (0 or more than n_ctx: n_ctx).  The prompt's pieces are printed as
they are fed, then tokens are sampled until ``steps`` positions have run, or BOS is sampled (run.c's
stop: BOS delimits sequences), or EOS is sampled.  Unlike run.c, the prompt runs as one batch, whose
last position gives the first sampled token's logits; every later token runs alone against the KV
cache.  Token ids are the ones run.c picks from the same logits and seed (core/sampler.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import UsageError
from .executor import Session
from .ir import Model
from .sampler import Sampler
from .textcodec import TextCodec


@dataclass
class Generation:
    prompt_tokens: list[int]
    tokens: list[int]              # sampled ids (without a final BOS/EOS that stopped generation)
    stop: str                      # "steps", "bos", "eos"
    prompt_seconds: float
    sample_seconds: float
    seed: int

    @property
    def prompt_rate(self) -> float:
        return len(self.prompt_tokens) / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def sample_rate(self) -> float:
        return len(self.tokens) / self.sample_seconds if self.sample_seconds > 0 else 0.0


def clamp_steps(steps: int, model: Model) -> int:
    n_ctx = model.hparams.get("n_ctx")
    if steps < 0:
        raise UsageError(f"-n must be 0 or more, got {steps}")
    if isinstance(n_ctx, int) and n_ctx > 0 and (steps == 0 or steps > n_ctx):
        return n_ctx
    return steps if steps > 0 else 256


def generate(model: Model, prompt: Optional[str], steps: int, sampler: Sampler,
             emit: Callable[[str], None] = lambda s: None, session: Optional[Session] = None) -> Generation:
    if model.tokenizer is None:
        raise UsageError("the model has no tokenizer; run needs one to encode the prompt and print text")
    codec = TextCodec(model.tokenizer)
    ids = codec.encode(prompt or "", bos=True)
    if not ids:
        raise UsageError("the vocabulary has no BOS token to start from; give a --prompt")
    steps = clamp_steps(steps, model)
    session = session or Session(model)
    session.preload()
    decoder = codec.decoder()
    n_vocab = len(model.tokenizer)

    def show(prev: int, tok: int) -> None:
        if 0 <= tok < n_vocab:
            text = decoder.feed(prev, tok)
            if text:
                emit(text)

    # run.c prints each forced prompt token at the position that feeds it
    forced = min(len(ids) - 1, steps)
    for i in range(forced):
        show(ids[i], ids[i + 1])
    sampled: list[int] = []
    stop = "steps"
    prompt_s = sample_s = 0.0
    if steps >= len(ids):
        t0 = time.perf_counter()
        logits = session.forward(ids, last_only=True)[-1]
        prompt_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pos, prev = len(ids) - 1, ids[-1]
        while True:
            nxt = sampler.sample(logits)
            pos += 1
            if nxt == codec.bos_id:
                stop = "bos"
                break
            if codec.eos_id is not None and nxt == codec.eos_id:
                stop = "eos"
                break
            sampled.append(nxt)
            show(prev, nxt)
            prev = nxt
            if pos >= steps:
                break
            logits = session.forward([nxt], last_only=True)[-1]
        sample_s = time.perf_counter() - t0
    tail = decoder.flush()
    if tail:
        emit(tail)
    return Generation(ids, sampled, stop, prompt_s, sample_s, sampler.seed)
