"""The sampler picks the ids llama2.c run.c picks from the same logits and seed.

Two oracles: a C program written here from run.c's documented algorithm (xorshift64*, float32
softmax with libm expf, glibc qsort over {prob, index} pairs), compiled with gcc when present; and a
scalar Python transliteration (one float32 operation at a time) that needs nothing."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from mconv.core.sampler import MASK64, Sampler, XorShift

F32 = np.float32

C_SAMPLER = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { float prob; int index; } Cand;
static unsigned long long state;

static unsigned int next_u32(void) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (unsigned int)((state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float next_f32(void) { return (next_u32() >> 8) / 16777216.0f; }

static int by_prob_desc(const void *pa, const void *pb) {
    const Cand *a = pa, *b = pb;
    if (a->prob > b->prob) return -1;
    if (a->prob < b->prob) return 1;
    return 0;
}

static int pick(float *x, int n, float temperature, float topp, Cand *buf) {
    if (temperature == 0.0f) {
        int best = 0;
        for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
        return best;
    }
    for (int i = 0; i < n; i++) x[i] /= temperature;
    float mx = x[0];
    for (int i = 1; i < n; i++) if (x[i] > mx) mx = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    for (int i = 0; i < n; i++) x[i] /= sum;
    float coin = next_f32();
    if (topp <= 0 || topp >= 1) {
        float cdf = 0.0f;
        for (int i = 0; i < n; i++) { cdf += x[i]; if (coin < cdf) return i; }
        return n - 1;
    }
    const float cutoff = (1.0f - topp) / (n - 1);
    int m = 0;
    for (int i = 0; i < n; i++) if (x[i] >= cutoff) { buf[m].index = i; buf[m].prob = x[i]; m++; }
    qsort(buf, m, sizeof(Cand), by_prob_desc);
    float cum = 0.0f;
    int last = m - 1;
    for (int i = 0; i < m; i++) { cum += buf[i].prob; if (cum > topp) { last = i; break; } }
    float r = coin * cum, cdf = 0.0f;
    for (int i = 0; i <= last; i++) { cdf += buf[i].prob; if (r < cdf) return buf[i].index; }
    return buf[last].index;
}

int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb");
    int n, rows; float temperature, topp;
    if (fread(&n, 4, 1, f) != 1 || fread(&rows, 4, 1, f) != 1 || fread(&temperature, 4, 1, f) != 1 ||
        fread(&topp, 4, 1, f) != 1 || fread(&state, 8, 1, f) != 1) return 2;
    float *x = malloc(sizeof(float) * n);
    Cand *buf = malloc(sizeof(Cand) * n);
    for (int r = 0; r < rows; r++) {
        if (fread(x, 4, n, f) != (size_t)n) return 3;
        printf("%d\n", pick(x, n, temperature, topp, buf));
    }
    printf("state %llu\n", state);
    return 0;
}
"""


def scalar_sample(logits: np.ndarray, temperature: float, topp: float, rng: XorShift) -> int:
    """run.c's sample() one float32 operation at a time (stable sort = glibc's merge-sort qsort)."""
    x = [F32(v) for v in logits]
    n = len(x)
    t, p = F32(temperature), F32(topp)
    if t == 0:
        best = 0
        for i in range(1, n):
            if x[i] > x[best]:
                best = i
        return best
    x = [v / t for v in x]
    mx = max(x)
    e = [F32(np.exp(np.float64(v - mx))) for v in x]
    total = F32(0)
    for v in e:
        total = F32(total + v)
    probs = [v / total for v in e]
    coin = F32(rng.u32() >> 8) / F32(16777216.0)
    if p <= 0 or p >= 1:
        cdf = F32(0)
        for i, v in enumerate(probs):
            cdf = F32(cdf + v)
            if coin < cdf:
                return i
        return n - 1
    cutoff = (F32(1) - p) / F32(n - 1)
    cand = sorted([(v, i) for i, v in enumerate(probs) if v >= cutoff], key=lambda c: -c[0])
    cum, last = F32(0), len(cand) - 1
    for i, (v, _) in enumerate(cand):
        cum = F32(cum + v)
        if cum > p:
            last = i
            break
    r = coin * cum
    cdf = F32(0)
    for i in range(last + 1):
        cdf = F32(cdf + cand[i][0])
        if r < cdf:
            return cand[i][1]
    return cand[last][1]


def _logit_rows(n: int, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((rows, n)).astype(np.float32) * np.float32(3.0)
    out[1::3] = np.round(out[1::3] * 2) / 2          # many equal probabilities: the sort's tie order matters
    out[2::5, :] = 0.25                              # a flat row
    out[3::7, 5] = 40.0                              # one certain token
    return out


SETTINGS = [(0.0, 0.9), (1.0, 0.9), (0.8, 0.5), (1.3, 0.95), (1.0, 0.0), (0.7, 1.0), (1.0, 0.999)]


def test_xorshift_matches_run_c_formula() -> None:
    r = XorShift(42)
    s = 42
    for _ in range(1000):
        s ^= s >> 12
        s = (s ^ (s << 25)) & MASK64
        s ^= s >> 27
        assert r.u32() == ((s * 0x2545F4914F6CDD1D) % 2**64) >> 32
    assert 0 <= float(XorShift(7).f32()) < 1


@pytest.mark.parametrize("temperature,topp", SETTINGS)
def test_sampler_matches_scalar_transliteration(temperature: float, topp: float) -> None:
    rows = _logit_rows(300, 24, seed=int(temperature * 10 + topp * 100))
    s = Sampler(temperature, topp, seed=1234)
    ref = XorShift(1234)
    got = [s.sample(r) for r in rows]
    want = [scalar_sample(r, temperature, topp, ref) for r in rows]
    assert got == want
    assert s.rng.state == ref.state


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not available")
@pytest.mark.parametrize("n", [512, 32000])
def test_sampler_matches_c_program(tmp_path, n: int) -> None:
    src = tmp_path / "sampler.c"
    src.write_text(C_SAMPLER)
    exe = tmp_path / "sampler"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-lm"], check=True, capture_output=True)
    rows = _logit_rows(n, 40 if n < 10000 else 12, seed=n)
    for temperature, topp in SETTINGS:
        seed = 987654321 + int(temperature * 100)
        blob = tmp_path / "in.bin"
        with open(blob, "wb") as f:
            f.write(np.array([n, len(rows)], np.int32).tobytes())
            f.write(np.array([temperature, topp], np.float32).tobytes())
            f.write(np.array([seed], np.uint64).tobytes())
            f.write(rows.tobytes())
        out = subprocess.run([str(exe), str(blob)], check=True, capture_output=True, text=True).stdout.split("\n")
        want = [int(x) for x in out[:len(rows)]]
        s = Sampler(temperature, topp, seed=seed)
        got = [s.sample(r) for r in rows]
        assert got == want, (temperature, topp)
        assert out[len(rows)] == f"state {s.rng.state}"


def test_greedy_takes_first_maximum_and_draws_no_coin() -> None:
    s = Sampler(0.0, 0.9, seed=5)
    assert s.sample(np.array([1.0, 3.0, 3.0, 2.0], np.float32)) == 1
    assert s.rng.state == 5


def test_seed_zero_means_time() -> None:
    assert Sampler(1.0, 0.9, seed=0).seed > 0
    assert Sampler(1.0, 0.9, seed=None).seed > 0
