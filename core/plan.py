"""Capabilities -> loss report.  ``make_plan`` decides every tensor's stored dtype for a target
format and lists what the conversion changes or drops, applying DESIGN.md's loss semantics:

* no ``--dtype``: keep each dtype, or widen losslessly where the target lacks it;
* value-changing steps (a narrowing cast, quantization, a dropped tensor or tokenizer, an hparam no
  loader of the target can recover) are refused without ``--allow-lossy``; an explicit ``--dtype``
  consents to its own cast;
* an hparam the target cannot store but its loaders take at load time is a warning naming the flag.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional


from .dtypes import DType, exact_widenings, get_dtype
from .errors import FormatError, LossyConversionError, MconvError, UnsupportedError
from .format import Format, WriteContext
from .hparams import same_hparam
from .ir import Model, Step, Tensor, cast
from .quant import policy

LOSSY = "lossy"          # refused without --allow-lossy
CONSENTED = "consented"  # value-changing, but asked for with --dtype
WARNING = "warning"      # nothing changes, but a loader needs to be told something

#: metadata key recording tensors widened losslessly only because the target lacked their dtype
#: (JSON {tensor: original dtype}); core/convert.open_model narrows them back exactly
WIDENED_KEY = "mconv.widened"

#: hparams every reader can recover from tensor shapes (core/hparams.infer_from_shapes)
SHAPE_DERIVED = frozenset({"n_vocab", "n_embd", "n_ff", "n_layer"})


@dataclass(frozen=True)
class Loss:
    kind: str        # "dtype" | "tensor" | "tokenizer" | "hparam" | "metadata" | format-specific
    subject: str
    detail: str
    severity: str

    def line(self) -> str:
        tag = {LOSSY: "LOSS", CONSENTED: "cast", WARNING: "note"}[self.severity]
        return f"{tag}: {self.kind} {self.subject}: {self.detail}"


@dataclass
class Plan:
    model: Model
    target: Format
    losses: list[Loss] = field(default_factory=list)
    casts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: (from, to) casts that narrow a tensor back to the dtype an earlier write widened it from
    restored: set[tuple[str, str]] = field(default_factory=set)

    @property
    def lossless(self) -> bool:
        return not any(loss.severity in (LOSSY, CONSENTED) for loss in self.losses)

    def report(self) -> list[str]:
        lines = []
        for (src, dst), names in sorted(self.casts.items()):
            src_t, dst_t = get_dtype(src), get_dtype(dst)
            how = ("widened losslessly" if dst in exact_widenings(src_t)
                   else "restored: widened by an earlier write" if (src, dst) in self.restored
                   else _requant(src_t, dst_t).strip(" ()") or "converted")
            lines.append(f"dtype: {len(names)} tensor(s) {src} -> {dst} ({how})")
        # per-tensor casts asked for with --dtype are summed up above
        lines.extend(loss.line() for loss in self.losses if not (loss.kind == "dtype" and loss.severity == CONSENTED))
        return lines


def _target_dtype(model: Model, t: Tensor, fmt: Format, request: Optional[str],
                  allowed: frozenset[str]) -> tuple[DType, Optional[Loss]]:
    output_allowed = allowed
    allowed = allowed & fmt.dtypes_for(t)
    if request is not None:
        wanted = policy.choose_dtype(model, t, request)
        if wanted is not None:
            if wanted.name not in output_allowed:
                raise UnsupportedError(f"format {fmt.name} cannot store {wanted.name} "
                                       f"(it stores {', '.join(sorted(output_allowed))})")
            if wanted.name not in allowed:
                # the output stores this type, but not for this tensor: take its nearest exact widening
                wanted = next((get_dtype(n) for n in exact_widenings(wanted) if n in allowed), wanted)
            if wanted == t.dtype or wanted.name in exact_widenings(t.dtype):
                return wanted, None
            return wanted, Loss("dtype", t.name, f"{t.dtype.label} -> {wanted.label}{_requant(t.dtype, wanted)}",
                                CONSENTED)
    if t.dtype.name in allowed:
        return t.dtype, None
    for name in exact_widenings(t.dtype):
        if name in allowed:
            return get_dtype(name), None
    fallback = "f32" if (t.dtype.is_float or t.dtype.is_quantized) else "i64" if "i64" in allowed else "i32"
    if fallback not in allowed:
        raise UnsupportedError(f"format {fmt.name} cannot store {t.dtype.name} tensors", tensor=t.name)
    return get_dtype(fallback), Loss("dtype", t.name, f"{t.dtype.name} -> {fallback}: {fmt.name} has no "
                                     f"{t.dtype.name} and no type that holds its values exactly", LOSSY)


def _widened_record(model: Model) -> dict[str, str]:
    raw = model.metadata.get(WIDENED_KEY)
    if raw is None:
        return {}
    try:
        record = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in record.items()):
        raise FormatError(f"metadata {WIDENED_KEY} is not a JSON object of tensor -> dtype")
    return record


def _original_dtype(t: Tensor, record: dict[str, str], request: Optional[str]) -> Optional[DType]:
    """The dtype ``t`` had before an earlier write widened it, when it can be narrowed back exactly
    (never under an explicit --dtype, which decides by itself)."""
    label = record.get(t.name)
    if label is None or request is not None:
        return None
    try:
        original = get_dtype(label)
    except MconvError:
        raise FormatError(f"metadata {WIDENED_KEY}: unknown dtype {label!r}", tensor=t.name)
    return original if t.dtype.name in exact_widenings(original) else None


def _requant(src: DType, dst: DType) -> str:
    """A note for a cast between two quantized types: it goes through float32 and changes values."""
    if src.is_quantized and dst.is_quantized:
        return f" (re-quantized: dequantized from {src.label}, quantized to {dst.label}; values change)"
    return ""


def make_plan(model: Model, fmt: Format, ctx: WriteContext, dtype: Optional[str] = None,
              allow_lossy: bool = False) -> Plan:
    if dtype is not None:
        policy.is_request_quantizing(dtype)  # unknown names raise here
    losses: list[Loss] = []
    casts: dict[tuple[str, str], list[str]] = defaultdict(list)
    widened: dict[str, str] = {}
    previous = _widened_record(model)
    restored: set[tuple[str, str]] = set()
    tensors: dict[str, Tensor] = {}
    request = fmt.dtype_request(model, dtype, ctx)
    allowed = fmt.output_dtypes(model, ctx)
    for t in model.tensors.values():
        if not fmt.accepts_tensor(t.name):
            losses.append(Loss("tensor", t.name, f"{fmt.name} has no place for it; dropped", LOSSY))
            continue
        target, loss = _target_dtype(model, t, fmt, request, allowed)
        original = _original_dtype(t, previous, request)
        if original is not None and original.name in allowed & fmt.dtypes_for(t):
            restored.add((t.dtype.label, original.label))
            target, loss = original, None
        if loss is not None:
            losses.append(loss)
        if loss is None and target.name in exact_widenings(t.dtype):
            widened[t.name] = t.dtype.label
        elif original is not None and target == t.dtype:
            widened[t.name] = original.label  # still widened: keep remembering
        if target != t.dtype:
            casts[(t.dtype.label, target.label)].append(t.name)
            t = cast(t, target)
        tensors[t.name] = t

    if model.tokenizer is not None and not fmt.stores_tokenizer:
        losses.append(Loss("tokenizer", f"({len(model.tokenizer)} tokens)", f"{fmt.name} cannot store it; dropped",
                           LOSSY))
    for key, value in sorted(model.hparams.items()):
        if fmt.stored_hparams is None or key in fmt.stored_hparams:
            continue
        if key in fmt.fixed_hparams:
            fixed = fmt.fixed_hparams[key]
            if not same_hparam(value, fixed):
                losses.append(Loss("hparam", key, f"{value!r} cannot be stored; every {fmt.name} loader assumes "
                                   f"{fixed!r}", LOSSY))
        elif key in fmt.load_time_hparams:
            losses.append(Loss("hparam", key, f"{value!r} is not stored in {fmt.name}; loaders need "
                               f"{fmt.load_time_hparams[key]}", WARNING))
        elif key not in SHAPE_DERIVED:
            losses.append(Loss("hparam", key, f"{value!r} cannot be stored in {fmt.name} and cannot be "
                               "recovered from the tensors", LOSSY))
    if model.metadata and not fmt.stores_metadata:
        losses.append(Loss("metadata", f"({len(model.metadata)} keys)", f"{fmt.name} cannot store free metadata",
                           WARNING))

    planned = model.derive(tensors)
    planned.metadata.pop(WIDENED_KEY, None)
    if widened and fmt.stores_metadata:
        # remember what was widened only to fit this format, so a later write to a format that has
        # the original dtype narrows it back (exactly: every value came from that dtype)
        planned.metadata[WIDENED_KEY] = json.dumps(widened, sort_keys=True)
    for (src, dst), names in casts.items():
        planned.history.append(Step("cast", f"{len(names)} tensor(s) {src} -> {dst}"))
    losses.extend(fmt.plan_losses(planned, ctx))
    refused = [loss for loss in losses if loss.severity == LOSSY]
    if refused and not allow_lossy:
        detail = "; ".join(f"{loss.kind} {loss.subject}: {loss.detail}" for loss in refused[:5])
        more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
        raise LossyConversionError(f"converting to {fmt.name} would lose information: {detail}{more}; "
                                   "pass --allow-lossy to accept")
    for loss in losses:
        if loss.severity != WARNING:
            planned.history.append(Step("loss", f"{loss.kind} {loss.subject}: {loss.detail}"))
    return Plan(planned, fmt, losses, dict(casts), restored)

