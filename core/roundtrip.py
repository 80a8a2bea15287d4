"""``mconv roundtrip IN --via FORMAT``: A -> B -> A' in a temporary directory, then compare A' with A.

Both legs go through the same ``write_model`` as ``translate`` (same plans, same loss semantics);
the second leg writes A's own format with no ``--dtype``.  When both plans are lossless, A' must hold
the same tensors (same names and shapes; same bytes, or the same values when a dtype was widened
exactly), the same hparams and tokenizer, and give bit-equal logits.  Otherwise tensor differences
are reported and the logits must stay within the tolerance of the loosest cast (core/validate.py).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from .convert import open_model, write_model
from .errors import UsageError
from .format import Format
from .hparams import load_time_values, same_hparam
from .ir import Model
from .registry import get_registry
from .validate import (Report, TOLERANCES, Tolerance, default_tokens, loosest, same_values,
                       tolerance_for_plan, validate)


@dataclass
class TensorDiff:
    name: str
    detail: str


@dataclass
class RoundtripResult:
    lossless: bool
    plan_lines: list[tuple[str, list[str]]]
    tensors_total: int
    tensors_same: int
    tensor_diffs: list[TensorDiff] = field(default_factory=list)
    hparam_diffs: list[str] = field(default_factory=list)
    tokenizer: str = "same"
    report: Optional[Report] = None

    @property
    def ok(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        out = []
        if self.lossless:
            if self.tensor_diffs:
                out.append(f"{len(self.tensor_diffs)} tensor(s) changed")
            if self.hparam_diffs:
                out.append(f"{len(self.hparam_diffs)} hparam(s) changed")
            if self.tokenizer not in ("same", "none"):
                out.append(f"the tokenizer {self.tokenizer}")
        if self.report is not None:
            out.extend(self.report.failures())
        return out

    def verdict(self) -> str:
        fails = self.failures()
        if fails:
            kind = "lossless" if self.lossless else "lossy"
            return f"DIFFER ({kind} round trip): " + "; ".join(fails)
        return "ok: lossless round trip" if self.lossless else "ok: lossy round trip within tolerance"

    def lines(self) -> list[str]:
        out = []
        for title, plan in self.plan_lines:
            out.append(title)
            out.extend(f"  {line}" for line in plan)
        out.append(f"tensors: {self.tensors_same}/{self.tensors_total} hold the same values")
        out.extend(f"  {d.name}: {d.detail}" for d in self.tensor_diffs)
        out.append("hparams: same" if not self.hparam_diffs else "hparams: differ")
        out.extend(f"  {h}" for h in self.hparam_diffs)
        out.append(f"tokenizer: {self.tokenizer}")
        if self.report is not None:
            out.append(f"logits: {self.report.summary()}")
            out.append(f"tolerance {self.report.tolerance.describe()}")
        out.append(self.verdict())
        return out


def _output_path(tmp: str, stem: str, fmt: Format, like: Optional[str]) -> str:
    """A file name with the format's suffix, or a directory layout when ``like`` is a directory or
    the format has no suffix."""
    if like is not None and os.path.isdir(like) and fmt.has_directory_layout:
        return os.path.join(tmp, stem) + "/"
    if like is not None and not os.path.isdir(like):
        suffix = os.path.splitext(like)[1]
        if suffix:
            return os.path.join(tmp, stem + suffix)
    if fmt.extensions:
        return os.path.join(tmp, stem + fmt.extensions[0])
    if fmt.has_directory_layout:
        return os.path.join(tmp, stem) + "/"
    return os.path.join(tmp, stem + ".bin")


def compare_tensors(a: Model, b: Model) -> tuple[int, list[TensorDiff]]:
    same = 0
    diffs = []
    for name, ta in a.tensors.items():
        tb = b.tensors.get(name)
        if tb is None:
            diffs.append(TensorDiff(name, "missing after the round trip"))
            continue
        if tuple(ta.shape) != tuple(tb.shape):
            diffs.append(TensorDiff(name, f"shape {tuple(ta.shape)} -> {tuple(tb.shape)}"))
            continue
        if ta.dtype == tb.dtype and np.array_equal(ta.raw(), tb.raw()):
            same += 1
            continue
        va, vb = ta.f32(), tb.f32()
        if same_values(ta.dtype, tb.dtype) and np.array_equal(va.view(np.uint32), vb.view(np.uint32)):
            same += 1
            continue
        with np.errstate(invalid="ignore"):
            delta = float(np.nanmax(np.abs(va.astype(np.float64) - vb.astype(np.float64)))) if va.size else 0.0
        diffs.append(TensorDiff(name, f"{ta.dtype.name} -> {tb.dtype.name}, max |Δ| {delta:.4g}"))
    for name in b.tensors:
        if name not in a.tensors:
            diffs.append(TensorDiff(name, "appeared in the round trip"))
    return same, diffs


def roundtrip(model: Model, in_path: str, via: Format, *, dtype: Optional[str] = None,
              options: Optional[Mapping[str, str]] = None, allow_lossy: bool = False,
              tokens: Optional[Sequence[int]] = None) -> RoundtripResult:
    src = get_registry().format(model.format)
    if not src.can_write:
        raise UsageError(f"format {src.name} cannot be written, so {in_path} cannot be rebuilt")
    with tempfile.TemporaryDirectory(prefix="mconv-roundtrip-") as tmp:
        b_path = _output_path(tmp, "via", via, None)
        r1 = write_model(model, b_path, via, dtype=dtype, options=options, allow_lossy=allow_lossy, quiet=True)
        b = open_model(b_path, via.name, hparams=load_time_values(via, model))
        try:
            a2_path = _output_path(tmp, "back", src, in_path)
            r2 = write_model(b, a2_path, src, allow_lossy=allow_lossy, quiet=True)
        finally:
            b.close()
        a2 = open_model(a2_path, src.name, hparams=load_time_values(src, model))
        try:
            lossless = r1.plan.lossless and r2.plan.lossless
            same, diffs = compare_tensors(model, a2)
            hp = [f"{k}: {model.hparams.get(k)!r} -> {a2.hparams.get(k)!r}"
                  for k in sorted(set(model.hparams) | set(a2.hparams))
                  if not same_hparam(model.hparams.get(k), a2.hparams.get(k))]
            if model.tokenizer is None:
                tok = "none" if a2.tokenizer is None else "appeared"
            elif a2.tokenizer is None:
                tok = "dropped"
            else:
                tok = "same" if model.tokenizer.same_as(a2.tokenizer) else "differs"
            tol: Tolerance = TOLERANCES["lossless"] if lossless else loosest(
                [tolerance_for_plan(r1.plan), tolerance_for_plan(r2.plan)])
            if tokens is None:
                bos = model.tokenizer.bos_id if model.tokenizer is not None else 1
                tokens = default_tokens(int(model.hparams["n_vocab"]), bos=bos)
            report = validate(model, a2, tokens, tol)
        finally:
            a2.close()
    plans = [(f"{model.format} -> {via.name}:", r1.plan.report() or ["lossless"]),
             (f"{via.name} -> {src.name}:", r2.plan.report() or ["lossless"])]
    return RoundtripResult(lossless, plans, len(model.tensors), same, diffs, hp, tok, report)
