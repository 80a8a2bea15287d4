"""llama2.c run.c's sampler, float32 arithmetic step for step, so the same logits and seed give the
same token ids as run.c.

* RNG: xorshift64* — state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
  u32 = (state * 0x2545F4914F6CDD1D mod 2^64) >> 32; f32 = (u32 >> 8) / 16777216.0f.  One coin is
  drawn per sampled token (not for greedy decoding).
* temperature 0: argmax, the first maximum on ties.
* else logits / temperature (float32), softmax in float32 (max subtracted, exp, sequential sum,
  divide), then
  - top-p <= 0 or >= 1: multinomial — the first i with coin < cdf_i (sequential float32 cdf), else n-1;
  - otherwise nucleus: candidates with p >= (1 - topp) / (n - 1), sorted by probability descending
    (run.c's qsort; glibc's qsort is a stable merge sort, so equal probabilities keep index order),
    truncated after the first prefix whose cumulative probability exceeds topp, then the first i with
    coin * cumulative < cdf_i, else the last kept candidate.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

F32 = np.float32
MASK64 = (1 << 64) - 1


class XorShift:
    """run.c's ``random_u32`` / ``random_f32`` over a 64-bit state."""

    def __init__(self, seed: int) -> None:
        self.state = int(seed) & MASK64

    def u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & MASK64) >> 32

    def f32(self) -> np.float32:
        return F32(self.u32() >> 8) / F32(16777216.0)


def default_seed() -> int:
    """run.c's default: (unsigned int) time(NULL)."""
    return int(time.time()) & 0xFFFFFFFF


def softmax_f32(x: np.ndarray) -> np.ndarray:
    """run.c's softmax: float32 throughout, the sum accumulated left to right.  exp is evaluated in
    float64 and rounded, which is what glibc's expf returns (it is correctly rounded but for
    cases within 0.002 ulp of a tie)."""
    x = np.asarray(x, dtype=F32)
    e = np.exp((x - x.max()).astype(np.float64)).astype(F32)
    total = np.cumsum(e, dtype=F32)[-1]
    return e / total


def _first_below(coin: np.float32, cdf: np.ndarray) -> Optional[int]:
    hit = np.flatnonzero(coin < cdf)
    return int(hit[0]) if hit.size else None


def sample_mult(probs: np.ndarray, coin: np.float32) -> int:
    i = _first_below(coin, np.cumsum(probs, dtype=F32))
    return len(probs) - 1 if i is None else i


def sample_topp(probs: np.ndarray, topp: np.float32, coin: np.float32) -> int:
    n = len(probs)
    if n < 2:
        return 0
    cutoff = (F32(1.0) - topp) / F32(n - 1)
    cand = np.flatnonzero(probs >= cutoff)
    if cand.size == 0:  # run.c would read before its buffer; cannot happen for 0 < topp < 1
        return int(np.argmax(probs))
    order = cand[np.argsort(-probs[cand], kind="stable")]
    sorted_p = probs[order]
    cum = np.cumsum(sorted_p, dtype=F32)
    over = np.flatnonzero(cum > topp)
    last = int(over[0]) if over.size else cand.size - 1
    r = coin * cum[last]
    i = _first_below(r, cum[:last + 1])
    return int(order[last if i is None else i])


class Sampler:
    def __init__(self, temperature: float = 1.0, topp: float = 0.9, seed: Optional[int] = None) -> None:
        self.temperature = F32(temperature)
        self.topp = F32(topp)
        self.seed = default_seed() if not seed else int(seed)
        self.rng = XorShift(self.seed)

    def sample(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=F32).reshape(-1)
        if self.temperature == F32(0.0):
            return int(np.argmax(logits))
        probs = softmax_f32(logits / self.temperature)
        coin = self.rng.f32()
        if self.topp <= 0 or self.topp >= 1:
            return sample_mult(probs, coin)
        return sample_topp(probs, self.topp, coin)
