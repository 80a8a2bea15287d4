"""Prove that two models compute the same function: run both on the same tokens with the reference
executor and compare their logits position by position.

Tolerances come from ONE table, keyed by the loosest dtype a comparison involves.  ``mconv validate``
does not know which of A and B was converted from the other, so it looks at dtypes alone: two models
whose tensors pair up with equal dtypes must give bit-equal logits (the executor is deterministic:
same f32 weights, same hparams, same arithmetic); otherwise the looser dtype of each pair counts (f16
against f32: the f16 row, whichever side holds it) and the loosest pair picks the row.
``translate --validate`` and ``roundtrip`` know the direction from their plans: a lossless plan (exact
widenings such as f16 -> f32 or q8_0 -> f32 included) demands bit-equal logits.  ``--tolerance ROW``
overrides the choice (e.g. to compare an f32 file that went through q4_0 and back with its source).

Exit codes: a comparison beyond tolerance raises :class:`ModelsDiffer` (the CLI exits 1) when it runs
inside ``translate --validate``; ``mconv validate``/``roundtrip`` print their report and return 1.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from .dtypes import DType, exact_widenings
from .errors import ModelsDiffer, UsageError, ValidationError
from .hparams import load_time_values, same_hparam
from .ir import Model


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the logits of B against A: max |Δ| <= max_rel * max |logit of A| (0 = bit-equal),
    the cosine of every position's logit vectors >= min_cosine, and the share of positions whose
    top-1 token agrees >= min_top1."""

    name: str
    max_rel: float
    min_cosine: float
    min_top1: float
    what: str = ""

    @property
    def exact(self) -> bool:
        return self.max_rel == 0.0

    def describe(self) -> str:
        if self.exact:
            return f"{self.name}: bit-equal logits (max |Δ| = 0)"
        return (f"{self.name}: max |Δ| <= {self.max_rel:g} x max |logit|, cosine >= {self.min_cosine:g}, "
                f"top-1 agreement >= {self.min_top1:.0%}")


#: THE tolerance table.  Rows are ordered from strictest to loosest; the loosest row a comparison
#: involves applies.  The bounds leave about 2x room over the worst cases measured with 32 tokens on
#: the trained demo llama and on random llamas like the tests' (2-6 layers; random weights are the
#: worst case: no structure absorbs the noise), with ggml-style f16/bf16/q8_0/q5_0/q4_0 rounding
#: simulated on every matrix — worst (max |Δ| / max |logit|, cosine, top-1): f16 (0.0017, 0.999998,
#: 0.97), bf16 (0.013, 0.99984, 0.97), q8_0 (0.043, 0.9984, 0.91), q5_0 (0.30, 0.947, 0.59), q4_0
#: (0.56, 0.75, 0.38).  Wrong conversions (q/k layout, swapped or transposed matrices, wrong theta)
#: measured cosines below 0.45.  The quantized rows are a sanity check; the lossless row is the proof.
TOLERANCES: dict[str, Tolerance] = {t.name: t for t in (
    Tolerance("lossless", 0.0, 1.0, 1.0, "same values: equal dtypes, or a lossless plan"),
    Tolerance("f16", 0.01, 0.9999, 0.75, "IEEE half: 11-bit significand"),
    Tolerance("bf16", 0.05, 0.999, 0.75, "bfloat16: 8-bit significand"),
    Tolerance("q8_0", 0.10, 0.995, 0.70, "8-bit blocks of 32 (also l2c_q8)"),
    Tolerance("q6_k", 0.20, 0.98, 0.60, "6-bit k-quant"),
    Tolerance("q5", 0.50, 0.90, 0.50, "5-bit blocks: q5_0 q5_1 q5_k"),
    Tolerance("q4", 1.00, 0.60, 0.25, "4-bit blocks: q4_0 q4_1 q4_k"),
    Tolerance("f8", 1.50, 0.50, 0.20, "float8 e4m3 / e5m2"),
    Tolerance("q3_k", 1.50, 0.50, 0.20, "3-bit k-quant"),
    Tolerance("q2_k", 2.00, 0.30, 0.10, "2-bit k-quant"),
)}

#: dtype name -> row of the table (dtypes not listed: f32/f64 are lossless; other quantized types q4)
DTYPE_ROW: dict[str, str] = {
    "f16": "f16", "bf16": "bf16", "q8_0": "q8_0", "l2c_q8": "q8_0", "q6_k": "q6_k",
    "q5_0": "q5", "q5_1": "q5", "q5_k": "q5", "q4_0": "q4", "q4_1": "q4", "q4_k": "q4",
    "f8_e4m3": "f8", "f8_e5m2": "f8", "q3_k": "q3_k", "q2_k": "q2_k",
}
_ORDER = list(TOLERANCES)


def row_for_dtype(dt: DType) -> Tolerance:
    name = DTYPE_ROW.get(dt.name)
    if name is None:
        name = "q4" if dt.is_quantized else "lossless"
    return TOLERANCES[name]


def loosest(rows: Iterable[Tolerance]) -> Tolerance:
    return max(rows, key=lambda t: _ORDER.index(t.name) if t.name in _ORDER else len(_ORDER),
               default=TOLERANCES["lossless"])


def same_values(a: DType, b: DType) -> bool:
    """Whether casting from ``a`` to ``b`` keeps every value."""
    return a == b or b.name in exact_widenings(a)


def tolerance_for_models(a: Model, b: Model) -> Tolerance:
    """The loosest row over the tensors the two models share (see the module docstring)."""
    rows = []
    for name, ta in a.tensors.items():
        tb = b.tensors.get(name)
        if tb is None or ta.dtype == tb.dtype:
            continue
        rows.append(loosest([row_for_dtype(ta.dtype), row_for_dtype(tb.dtype)]))
    return loosest(rows)


def tolerance_for_plan(plan: Any) -> Tolerance:
    """A lossless plan must reproduce the logits bit for bit; otherwise the loosest cast decides."""
    if plan.lossless:
        return TOLERANCES["lossless"]
    from .dtypes import get_dtype

    rows = [row_for_dtype(get_dtype(dst)) for (src, dst) in plan.casts
            if not same_values(get_dtype(src), get_dtype(dst))]
    return loosest(rows)


def tolerance_by_name(name: str) -> Tolerance:
    key = name.lower()
    if key in TOLERANCES:
        return TOLERANCES[key]
    from .dtypes import get_dtype

    try:
        return row_for_dtype(get_dtype(key))
    except Exception:
        raise UsageError(f"unknown tolerance {name!r} (rows: {', '.join(TOLERANCES)}; or a dtype name)")


def table_lines() -> list[str]:
    lines = [f"{'row':<9} {'max |Δ| / max |logit|':>22} {'cosine >=':>10} {'top-1 >=':>9}  dtypes"]
    for t in TOLERANCES.values():
        dts = sorted(d for d, r in DTYPE_ROW.items() if r == t.name) or ["equal dtypes; lossless plans"]
        bound = "0 (bit-equal)" if t.exact else f"{t.max_rel:g}"
        lines.append(f"{t.name:<9} {bound:>22} {t.min_cosine:>10g} {t.min_top1:>9.0%}  {' '.join(dts)}")
    return lines


# ==================================================================================================
# report
# ==================================================================================================

@dataclass(frozen=True)
class Position:
    index: int
    token: int
    max_abs: float
    cosine: float
    top1_a: int
    top1_b: int


@dataclass
class Report:
    tokens: list[int]
    positions: list[Position]
    tolerance: Tolerance
    scale: float                    # max |logit of A|
    max_abs: float
    min_cosine: float
    top1_agree: int
    notes: list[str] = field(default_factory=list)

    @property
    def top1_rate(self) -> float:
        return self.top1_agree / max(1, len(self.positions))

    @property
    def bound(self) -> float:
        return self.tolerance.max_rel * self.scale

    def failures(self) -> list[str]:
        t = self.tolerance
        out = []
        if t.exact:
            if self.max_abs != 0.0 or not math.isfinite(self.max_abs):
                out.append(f"logits are not bit-equal (max |Δ| {self.max_abs:.3g})")
            return out
        if not self.max_abs <= self.bound:
            out.append(f"max |Δ| {self.max_abs:.4g} > {self.bound:.4g}")
        if not self.min_cosine >= t.min_cosine:
            out.append(f"cosine {self.min_cosine:.7f} < {t.min_cosine:g}")
        if not self.top1_rate >= t.min_top1:
            out.append(f"top-1 agreement {self.top1_rate:.0%} < {t.min_top1:.0%}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        rel = self.max_abs / self.scale if self.scale > 0 else 0.0
        return (f"max |Δlogit| {self.max_abs:.4g} ({rel:.3g} of max |logit| {self.scale:.4g}), "
                f"min cosine {self.min_cosine:.7f}, top-1 agreement {self.top1_agree}/{len(self.positions)}")

    def verdict(self) -> str:
        fails = self.failures()
        return "ok: within tolerance" if not fails else "DIFFER: " + "; ".join(fails)

    def lines(self, per_position: bool = True) -> list[str]:
        out = []
        if per_position:
            out.append(f"{'pos':>5} {'token':>7} {'max |Δ|':>10} {'cosine':>10} {'top-1 A':>8} {'top-1 B':>8}")
            for p in self.positions:
                mark = "" if p.top1_a == p.top1_b else "  *"
                out.append(f"{p.index:>5} {p.token:>7} {p.max_abs:>10.3e} {p.cosine:>10.7f} {p.top1_a:>8} "
                           f"{p.top1_b:>8}{mark}")
        out.append(f"overall: {self.summary()}")
        out.append(f"tolerance {self.tolerance.describe()}")
        out.extend(f"note: {n}" for n in self.notes)
        out.append(self.verdict())
        return out


def compare_logits(la: np.ndarray, lb: np.ndarray, tokens: Sequence[int], tolerance: Tolerance) -> Report:
    if la.shape != lb.shape:
        raise ValidationError(f"logits of shape {la.shape} and {lb.shape} cannot be compared")
    a64, b64 = la.astype(np.float64), lb.astype(np.float64)
    diff = np.abs(a64 - b64)
    diff[np.isnan(diff)] = np.inf
    per_max = diff.max(axis=1)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    dots = np.einsum("ij,ij->i", a64, b64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na > 0) & (nb > 0), dots / (na * nb), np.where((na == 0) & (nb == 0), 1.0, 0.0))
    cos = np.nan_to_num(cos, nan=0.0)
    ta, tb = la.argmax(axis=1), lb.argmax(axis=1)
    positions = [Position(i, int(tokens[i]), float(per_max[i]), float(cos[i]), int(ta[i]), int(tb[i]))
                 for i in range(la.shape[0])]
    scale = float(np.nanmax(np.abs(a64))) if a64.size else 0.0
    return Report(list(map(int, tokens)), positions, tolerance, scale,
                  float(per_max.max()) if per_max.size else 0.0,
                  float(cos.min()) if cos.size else 1.0, int((ta == tb).sum()))


# ==================================================================================================
# running the models
# ==================================================================================================

def check_comparable(a: Model, b: Model) -> None:
    if a.arch != b.arch:
        raise ValidationError(f"the models have different architectures ({a.arch} and {b.arch})")
    va, vb = a.hparams.get("n_vocab"), b.hparams.get("n_vocab")
    if va != vb:
        raise ValidationError(f"the models have different vocabulary sizes ({va} and {vb})")


def model_logits(model: Model, tokens: Sequence[int]) -> np.ndarray:
    from .executor import Session

    session = Session(model)
    try:
        return session.logits(tokens)
    finally:
        session.reset()
        del session


def validate(a: Model, b: Model, tokens: Sequence[int], tolerance: Optional[Tolerance] = None) -> Report:
    """Run A and B (one after the other: at most one model's f32 weights in memory) on ``tokens``."""
    check_comparable(a, b)
    tol = tolerance or tolerance_for_models(a, b)
    la = model_logits(a, tokens)
    lb = model_logits(b, tokens)
    report = compare_logits(la, lb, tokens, tol)
    for k in sorted(set(a.hparams) | set(b.hparams)):
        va, vb = a.hparams.get(k), b.hparams.get(k)
        if not same_hparam(va, vb):
            report.notes.append(f"hparam {k} differs: {va!r} vs {vb!r}")
    return report


#: validate's default input: BOS then this many ids drawn by a seeded generator over the vocabulary
DEFAULT_TOKENS = 32
DEFAULT_SEED = 0


def default_tokens(n_vocab: int, n: int = DEFAULT_TOKENS, bos: Optional[int] = 1) -> list[int]:
    """BOS (when the vocabulary has it) followed by ids from numpy's PCG64 seeded with 0: deterministic,
    and independent of any tokenizer, so every pair of models can be compared."""
    if n < 1:
        raise UsageError(f"--tokens must be at least 1, got {n}")
    rng = np.random.default_rng(DEFAULT_SEED)
    ids = [int(x) for x in rng.integers(0, n_vocab, size=n)]
    if bos is not None and 0 <= bos < n_vocab:
        ids[0] = bos
    return ids


# ==================================================================================================
# translate --validate
# ==================================================================================================

def translate_check(model: Model, fmt: Any, args: Any) -> Callable[[str, Any], None]:
    """The ``check(temp_path, plan)`` that ``write_model`` runs before committing: re-read the written
    output with ``fmt.read`` and validate it against ``model``.  Beyond tolerance it raises
    :class:`ModelsDiffer` (exit 1); the output is then removed, not committed."""

    def check(temp_path: str, plan: Any) -> None:
        from .blas import tune_threads
        from .format import ReadContext

        tune_threads()
        # hparams the target cannot store but its loaders take at load time are given at load time
        back = fmt.read(temp_path, ReadContext(hparams=load_time_values(fmt, model)))
        try:
            tokens = default_tokens(int(model.hparams["n_vocab"]),
                                    bos=model.tokenizer.bos_id if model.tokenizer is not None else 1)
            report = validate(model, back, tokens, tolerance_for_plan(plan))
        finally:
            back.close()
        out = sys.stdout
        print(f"validate: {len(tokens)} tokens, {report.summary()}", file=out)
        print(f"validate: tolerance {report.tolerance.describe()}", file=out)
        for note in report.notes:
            print(f"validate: note: {note}", file=out)
        if not report.ok:
            raise ModelsDiffer(f"the output does not compute the same model ({'; '.join(report.failures())}); "
                               "it was not written", path=getattr(args, "output", None) or os.path.basename(temp_path))
        print("validate: ok", file=out)

    return check
