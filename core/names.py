"""Naming tables (``core/arch/<arch>.yaml``): canonical (GGUF) names <-> each convention's names,
hparam keys per convention, layout transforms, and convention detection for generic containers."""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import yaml

from .errors import FormatError, PluginError
from .ir import Tensor, permute_rows

BID = "{bid}"


#: default bounds of hparam values unless a table row sets ``min``/``max``: counts are positive and
#: fit the signed 32-bit header fields of llama2.c and ggml (GGUF's u32 is wider); floats (eps,
#: theta) are finite and above zero.
INT_LIMITS = (1, 2**31 - 1)


@dataclass(frozen=True)
class HParamSpec:
    key: str
    type: str                       # "int" | "float"
    names: Mapping[str, str]        # convention -> key in that convention
    gguf_type: Optional[str] = None
    #: convention -> values that mean "not given" there
    unset: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    minimum: Optional[float] = None  # table column "min" (default: INT_LIMITS[0] for ints, > 0 for floats)
    maximum: Optional[float] = None  # table column "max" (default: INT_LIMITS[1] for ints, finite for floats)

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` (a JSON number, a numpy scalar...) as this hparam's type, within its range.
        Strings, booleans, lists and non-integral floats for an int are refused, not parsed."""
        kind = "n integer" if self.type == "int" else " number"
        try:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError
            if self.type == "int":
                if isinstance(value, (float, np.floating)) and not float(value).is_integer():
                    raise ValueError
                out: Any = int(value)
            else:
                out = float(value)
        except (TypeError, ValueError, OverflowError):
            raise FormatError(f"hparam {self.key} = {value!r} from {where} is not a{kind}")
        self.check_range(out, where)
        return out

    def check_range(self, value: Any, where: str) -> None:
        if self.type == "int":
            lo = INT_LIMITS[0] if self.minimum is None else self.minimum
            hi = INT_LIMITS[1] if self.maximum is None else self.maximum
            if not lo <= value <= hi:
                raise FormatError(f"hparam {self.key} = {value!r} from {where} is out of range "
                                  f"(an integer from {lo} to {hi})")
            return
        ok = math.isfinite(value) and (value > 0 if self.minimum is None else value >= self.minimum)
        if ok and self.maximum is not None:
            ok = value <= self.maximum
        if not ok:
            bounds = ("above 0" if self.minimum is None else f"at least {self.minimum}") + (
                "" if self.maximum is None else f" and at most {self.maximum}")
            raise FormatError(f"hparam {self.key} = {value!r} from {where} is out of range (a finite number {bounds})")


class _Column:
    """One convention's names: exact names and {bid} templates, in both directions."""

    def __init__(self, convention: str, pairs: Sequence[tuple[str, str]]) -> None:
        self.convention = convention
        self.to_canon_exact: dict[str, str] = {}
        self.from_canon_exact: dict[str, str] = {}
        self.templates: list[tuple[re.Pattern[str], str]] = []     # (pattern over own names, canonical template)
        self.canon_templates: list[tuple[re.Pattern[str], str]] = []  # (pattern over canonical, own template)
        for canonical, own in pairs:
            if (BID in canonical) != (BID in own):
                raise PluginError(f"naming table: {convention} name {own!r} and canonical {canonical!r} "
                                  "must both have {bid} or neither")
            if BID in own:
                self.templates.append((_template_regex(own), canonical))
                self.canon_templates.append((_template_regex(canonical), own))
            else:
                self.to_canon_exact[own] = canonical
                self.from_canon_exact[canonical] = own

    def to_canonical(self, name: str) -> Optional[str]:
        if name in self.to_canon_exact:
            return self.to_canon_exact[name]
        for rx, canon in self.templates:
            m = rx.fullmatch(name)
            if m:
                return canon.replace(BID, m.group("bid"))
        return None

    def from_canonical(self, canonical: str) -> Optional[str]:
        if canonical in self.from_canon_exact:
            return self.from_canon_exact[canonical]
        for rx, own in self.canon_templates:
            m = rx.fullmatch(canonical)
            if m:
                return own.replace(BID, m.group("bid"))
        return None


def _template_regex(template: str) -> re.Pattern[str]:
    head, _, tail = template.partition(BID)
    return re.compile(re.escape(head) + r"(?P<bid>0|[1-9][0-9]*)" + re.escape(tail))


class NameTable:
    """The naming table of one architecture."""

    def __init__(self, data: Mapping[str, Any], source: str = "<table>") -> None:
        self.source = source
        self.arch: str = data["arch"]
        self.conventions: tuple[str, ...] = tuple(data["conventions"])
        rows: list[Mapping[str, str]] = data["tensors"]
        self.canonical_rows: tuple[str, ...] = tuple(r["gguf"] for r in rows)
        self.columns: dict[str, _Column] = {}
        for conv in self.conventions:
            pairs = [(r["gguf"], r[conv]) for r in rows if conv in r]
            self._check_bijective(conv, pairs)
            self.columns[conv] = _Column(conv, pairs)
        self.optional: frozenset[str] = frozenset(data.get("optional", ()))
        self.ignored: dict[str, tuple[re.Pattern[str], ...]] = {
            conv: tuple(_template_regex(n) if BID in n else re.compile(re.escape(n)) for n in names)
            for conv, names in (data.get("ignored") or {}).items()}
        self.layouts: dict[str, dict[str, Mapping[str, str]]] = {
            conv: dict(spec) for conv, spec in (data.get("layouts") or {}).items()}
        self.order: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in (data.get("order") or {}).items()}
        self.hparams: tuple[HParamSpec, ...] = tuple(
            HParamSpec(key=h["key"], type=h["type"], gguf_type=h.get("gguf_type"),
                       unset={c: tuple(v) for c, v in (h.get("unset") or {}).items()},
                       minimum=h.get("min"), maximum=h.get("max"),
                       names={c: h[c] for c in h if c not in ("key", "type", "gguf_type", "unset", "min", "max")})
            for h in data.get("hparams", ()))
        self.hparam_by_key = {h.key: h for h in self.hparams}
        self.infer: dict[str, tuple[str, int]] = {k: (v[0], int(v[1])) for k, v in (data.get("infer") or {}).items()}
        self.defaults: dict[str, Any] = dict(data.get("defaults") or {})
        for conv in {c for h in self.hparams for c in h.names}:
            keys = [h.names[conv] for h in self.hparams if conv in h.names]
            if len(set(keys)) != len(keys):
                raise PluginError(f"{source}: hparam column {conv!r} is not a bijection: {sorted(keys)}")

    def _check_bijective(self, conv: str, pairs: Sequence[tuple[str, str]]) -> None:
        canon = [c for c, _ in pairs]
        own = [o for _, o in pairs]
        for label, names in (("canonical", canon), (conv, own)):
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                raise PluginError(f"{self.source}: column {conv!r} is not a bijection: {label} name(s) "
                                  f"{', '.join(dups)} appear twice")
        # templates must not capture each other's names (e.g. "a.{bid}" vs "a.1")
        col = _Column(conv, pairs)
        for c, o in pairs:
            probe = o.replace(BID, "7")
            back = col.to_canonical(probe)
            if back != c.replace(BID, "7"):
                raise PluginError(f"{self.source}: column {conv!r} is not a bijection: {probe!r} maps back to {back!r}")

    # -- tensor names --------------------------------------------------------------------------------
    def to_canonical(self, name: str, convention: str) -> Optional[str]:
        return self.columns[convention].to_canonical(name)

    def from_canonical(self, canonical: str, convention: str) -> Optional[str]:
        return self.columns[convention].from_canonical(canonical)

    def is_ignored(self, name: str, convention: str) -> bool:
        return any(rx.fullmatch(name) for rx in self.ignored.get(convention, ()))

    def canonical_tensors(self, raw: Mapping[str, Tensor], convention: str) -> tuple[dict[str, Tensor], list[str]]:
        """``raw`` renamed from ``convention`` to canonical names (names the table lacks are kept) and
        the names the convention marks as ignored (dropped); two tensors with one canonical name are
        refused."""
        tensors: dict[str, Tensor] = {}
        ignored: list[str] = []
        for name, t in raw.items():
            if self.is_ignored(name, convention):
                ignored.append(name)
                continue
            canonical = self.to_canonical(name, convention) or name
            if canonical in tensors:
                raise FormatError(f"two tensors map to {canonical!r}", tensor=name)
            tensors[canonical] = t.with_name(canonical)
        return tensors, ignored

    def detect_convention(self, names: Iterable[str], candidates: Optional[Sequence[str]] = None) -> tuple[str, float]:
        """Score each convention by the fraction of ``names`` it maps; the first best wins."""
        names = list(names)
        best, best_score = (candidates or self.conventions)[0], -1.0
        for conv in candidates or self.conventions:
            hits = sum(1 for n in names if self.to_canonical(n, conv) is not None or self.is_ignored(n, conv))
            score = hits / len(names) if names else 0.0
            if score > best_score:
                best, best_score = conv, score
        return best, best_score

    def recognises(self, canonical_names: Iterable[str]) -> bool:
        """Whether any of these canonical names is a tensor of this architecture (a bag of unrelated
        arrays is still readable, but has no hparams to require and nothing to execute)."""
        return any(self.to_canonical(n, "gguf") is not None for n in canonical_names)

    def block_count(self, canonical_names: Iterable[str]) -> int:
        ids = {int(m.group(1)) for n in canonical_names for m in [re.match(r"blk\.(\d+)\.", n)] if m}
        return max(ids) + 1 if ids else 0

    def expected_tensors(self, n_layer: int) -> list[str]:
        out = []
        for row in self.canonical_rows:
            if BID in row:
                out.extend(row.replace(BID, str(b)) for b in range(n_layer))
            else:
                out.append(row)
        return out

    def canonical_order(self, names: Iterable[str]) -> list[str]:
        """``names`` in the table's canonical order; unknown names keep their relative order at the end."""
        names = list(names)
        present = set(names)
        n_layer = self.block_count(names)
        block_rows = [r for r in self.canonical_rows if BID in r]
        out: list[str] = []
        for item in self.order.get("canonical", ()):
            if item == "{blocks}":
                for b in range(n_layer):
                    out.extend(n for n in (r.replace(BID, str(b)) for r in block_rows) if n in present)
            elif item in present:
                out.append(item)
        placed = set(out)
        return out + [n for n in names if n not in placed]

    def ordered(self, order_key: str, names: Iterable[str], n_layer: int) -> list[str]:
        """Expand an ``order`` list ("blk.*.x" = every block in turn) restricted to ``names``."""
        present = set(names)
        out = []
        for pattern in self.order[order_key]:
            if "*" in pattern:
                out.extend(n for n in (pattern.replace("*", str(b)) for b in range(n_layer)) if n in present)
            elif pattern in present:
                out.append(pattern)
        return out

    # -- hparams ------------------------------------------------------------------------------------
    def hparam_key(self, key: str, convention: str) -> Optional[str]:
        spec = self.hparam_by_key.get(key)
        name = spec.names.get(convention) if spec else None
        return name.replace("{arch}", self.arch) if name else None

    def hparams_from(self, values: Mapping[str, Any], convention: str, where: str) -> dict[str, Any]:
        """Canonical hparams out of a convention's dict (config.json, params.json, GGUF metadata...)."""
        out: dict[str, Any] = {}
        for spec in self.hparams:
            own = self.hparam_key(spec.key, convention)
            if own is not None and own in values and values[own] is not None:
                if values[own] in spec.unset.get(convention, ()):
                    continue
                out[spec.key] = spec.coerce(values[own], f"{where} ({own})")
        return out

    def canonical_hparams(self, values: Any, where: str) -> dict[str, Any]:
        """Canonical-key hparams stored by mconv itself (JSON), type-checked; unknown keys refused."""
        if not isinstance(values, dict):
            raise FormatError(f"{where}: hparams must be a JSON object")
        out: dict[str, Any] = {}
        for key, value in values.items():
            spec = self.hparam_by_key.get(key)
            if spec is None:
                raise FormatError(f"{where}: unknown hparam {key!r}")
            if value is not None:
                out[key] = spec.coerce(value, where)
        return out

    # -- layout transforms ---------------------------------------------------------------------------
    def layout_of(self, canonical: str, convention: str) -> Optional[Mapping[str, str]]:
        for template, spec in self.layouts.get(convention, {}).items():
            if _template_regex(template).fullmatch(canonical) if BID in template else template == canonical:
                return spec
        return None

    def to_canonical_layout(self, t: Tensor, convention: str, hparams: Mapping[str, Any]) -> Tensor:
        """Undo a convention's layout transform (HF rotate-half q/k -> Meta interleaved pairs)."""
        spec = self.layout_of(t.name, convention)
        if spec is None:
            return t
        heads = _heads(spec, hparams, t)
        return permute_rows(t, rope_unpermute_order(t.shape[0], heads, t.n_rows),
                            "rope_unpermute", {"heads": heads, "convention": convention})

    def from_canonical_layout(self, t: Tensor, convention: str, hparams: Mapping[str, Any]) -> Tensor:
        """Apply a convention's layout transform (Meta interleaved pairs -> HF rotate-half q/k)."""
        spec = self.layout_of(t.name, convention)
        if spec is None:
            return t
        heads = _heads(spec, hparams, t)
        return permute_rows(t, rope_permute_order(t.shape[0], heads, t.n_rows),
                            "rope_permute", {"heads": heads, "convention": convention})


def _heads(spec: Mapping[str, str], hparams: Mapping[str, Any], t: Tensor) -> int:
    key = spec["heads"]
    if key not in hparams:
        raise FormatError(f"{key} is needed to convert the rotary layout of {t.name}; give it with --hparam {key}=N",
                          tensor=t.name)
    return int(hparams[key])


def _check_rope_rows(n_out: int, heads: int) -> int:
    if heads <= 0 or n_out % heads or (n_out // heads) % 2:
        raise FormatError(f"{n_out} rows cannot be split into {heads} heads of an even size")
    return n_out // heads


def rope_permute_order(n_out: int, heads: int, n_rows: int) -> np.ndarray:
    """Meta -> HF: W_hf = W_meta.view(heads, hd/2, 2, C).transpose(1, 2).reshape(R, C), so
    W_hf[h*hd + s*hd/2 + j] = W_meta[h*hd + 2j + s]; returned as source row per output row."""
    hd = _check_rope_rows(n_out, heads)
    idx = np.arange(n_out).reshape(heads, hd // 2, 2).transpose(0, 2, 1).reshape(-1)
    return _expand_rows(idx, n_out, n_rows)


def rope_unpermute_order(n_out: int, heads: int, n_rows: int) -> np.ndarray:
    """HF -> Meta: W_meta[h*hd + 2j + s] = W_hf[h*hd + s*hd/2 + j] (FORMATS.md L(f), G(d))."""
    hd = _check_rope_rows(n_out, heads)
    idx = np.arange(n_out).reshape(heads, 2, hd // 2).transpose(0, 2, 1).reshape(-1)
    return _expand_rows(idx, n_out, n_rows)


def _expand_rows(order: np.ndarray, n_out: int, n_rows: int) -> np.ndarray:
    """The permutation acts on axis 0; rows of a tensor with more than 2 dims come in groups."""
    if n_rows == n_out:
        return order
    per = n_rows // n_out
    return (order[:, None] * per + np.arange(per)[None, :]).reshape(-1)


_TABLES: dict[str, NameTable] = {}


def register_table(table: NameTable) -> None:
    _TABLES[table.arch] = table


def load_table(path: str | os.PathLike[str]) -> NameTable:
    with open(path, "r", encoding="utf-8") as f:
        # libyaml's safe loader when PyYAML has it: the same result, ten times faster to parse
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return NameTable(data, source=os.fspath(path))


@functools.lru_cache(maxsize=None)
def _builtin(arch: str) -> NameTable:
    path = os.path.join(os.path.dirname(__file__), "arch", f"{arch}.yaml")
    return load_table(path)


def table(arch: str = "llama") -> NameTable:
    if arch in _TABLES:
        return _TABLES[arch]
    from .registry import get_registry

    get_registry().architecture(arch)  # loads plugins that may register the table
    if arch in _TABLES:
        return _TABLES[arch]
    return _builtin(arch)
