"""The reference executor: interprets an architecture's :class:`Graph` with numpy, float32 throughout.

A graph is a list of :class:`Node` s over named values.  An input name is, in order: a value computed
by an earlier node or fed by the caller (``tokens``, ``pos``, ``output_rows``), or a canonical weight
name, decoded to float32 on first use and kept (quantized dtypes dequantize through their DType).
Each op is a kernel in a table, ``kernel(ctx, *inputs, **node.attrs) -> array | tuple of arrays``;
an architecture adds ops through ``Architecture.ops``.  An op the table does not know is refused
before anything runs, naming the node.

:class:`Session` keeps one model's weights and KV cache: ``forward(tokens)`` runs the tokens as one
batch (matrix-matrix products, BLAS through numpy's ``@``) at the positions after those already
cached and returns their logits; ``reset()`` forgets the cache; ``logits(tokens)`` is a fresh batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .errors import MconvError, ValidationError
from .ir import CHUNK_BYTES, FileSlice, Graph, Model, Node, Tensor

F32 = np.float32
Kernel = Callable[..., Any]


# ==================================================================================================
# context: weights, KV cache, RoPE tables
# ==================================================================================================

class KVSlot:
    """Keys and values of one attention layer, head-major ``(n_head_kv, capacity, head_dim)`` so that
    each head's rows ``[:length]`` are one contiguous BLAS operand; capacity doubles as it fills."""

    def __init__(self, n_head_kv: int, head_dim: int) -> None:
        self.k = np.empty((n_head_kv, 0, head_dim), F32)
        self.v = np.empty((n_head_kv, 0, head_dim), F32)
        self.length = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k, v: (n_head_kv, T, head_dim) -> views of every cached position (n_head_kv, S, head_dim)."""
        t = k.shape[1]
        need = self.length + t
        if need > self.k.shape[1]:
            cap = max(need, 2 * self.k.shape[1], 64)
            for name in ("k", "v"):
                old = getattr(self, name)
                new = np.empty((old.shape[0], cap, old.shape[2]), F32)
                new[:, :self.length] = old[:, :self.length]
                setattr(self, name, new)
        self.k[:, self.length:need] = k
        self.v[:, self.length:need] = v
        self.length = need
        return self.k[:, :need], self.v[:, :need]


class StreamedWeight:
    """A 2-D weight whose float32 form does not fit the cache budget: its rows are decoded chunk by
    chunk (<= 64 MiB) each time an op uses it, and the mapped pages released after each chunk."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        self.ndim = len(self.shape)
        self.step = max(1, CHUNK_BYTES // max(1, 4 * tensor.n_cols))

    def chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        t = self.tensor
        for start in range(0, t.n_rows, self.step):
            stop = min(t.n_rows, start + self.step)
            rows = t.f32(start, stop)
            t.source.release_rows(start, stop)
            yield start, stop, rows

    def take(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.tensor.f32(int(i), int(i) + 1)[0] for i in ids]) if ids.size else \
            np.zeros((0, self.shape[1]), F32)


def total_memory() -> int:
    """MemTotal from /proc/meminfo (bytes); 16 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 16 << 30


def _in_place(t: Tensor) -> bool:
    return t.dtype.name == "f32" and isinstance(t.source, FileSlice)


class Context:
    """What kernels see: the model's weights (decoded once), the KV cache, the current position.

    Weights stored as f32 in a mapped file are used in place.  Others are decoded to float32 once and
    kept, unless their float32 total exceeds ``cache_bytes`` (default: half the machine's memory):
    then every 2-D weight is streamed (:class:`StreamedWeight`), so a model much larger than memory in
    float32 (a quantized 7B) still runs, decoding its rows at every use.  The choice depends on the
    model alone (all or nothing, not on free memory at the time), so two models with the same dtypes
    take the same path and lossless comparisons stay bit-exact (chunked products round differently).
    """

    def __init__(self, model: Model, cache_bytes: Optional[int] = None) -> None:
        self.model = model
        self.pos = 0
        self.cache: dict[str, KVSlot] = {}
        self._weights: dict[str, Any] = {}
        self._rope: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}
        self.cache_bytes = total_memory() // 2 if cache_bytes is None else cache_bytes
        self._stream: Optional[bool] = None

    @property
    def streaming(self) -> bool:
        if self._stream is None:
            decoded = sum(4 * t.numel for t in self.model.tensors.values()
                          if len(t.shape) == 2 and not _in_place(t))
            self._stream = decoded > self.cache_bytes
        return self._stream

    def has_weight(self, name: str) -> bool:
        return name in self._weights or name in self.model.tensors

    def weight(self, name: str) -> Any:
        """The float32 values of a model tensor (C-contiguous ndarray), decoded on first use; or a
        :class:`StreamedWeight` when it does not fit the cache budget."""
        w = self._weights.get(name)
        if w is None:
            t = self.model.tensors.get(name)
            if t is None:
                raise ValidationError(f"tensor {name} is missing", tensor=name)
            try:
                w = self._load(t)
            except MconvError as e:
                raise e.at(tensor=name)
            self._weights[name] = w
        return w

    def _load(self, t: Tensor) -> Any:
        if _in_place(t) and t.numel:
            # stored f32 in a mapped file is used where it lies (no copy)
            w = t.raw().view("<f4").reshape(t.shape)
            if w.flags.c_contiguous and w.flags.aligned:
                return w
        elif len(t.shape) == 2 and self.streaming:
            return StreamedWeight(t)
        if t.dtype.name == "f32" and t.numel:
            return np.ascontiguousarray(t.raw().view("<f4").reshape(t.shape), dtype=F32)
        return np.ascontiguousarray(t.f32(), dtype=F32)

    def kv_slot(self, slot: str, n_head_kv: int, head_dim: int) -> KVSlot:
        s = self.cache.get(slot)
        if s is None:
            s = self.cache[slot] = KVSlot(n_head_kv, head_dim)
        return s

    def rope_table(self, theta: float, head_dim: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin of pos * theta^(-2i/head_dim) for pos < stop, i < head_dim/2, as (stop, head_dim/2)
        float32; angles in float64 (theta taken at float32 precision, as GGUF stores it)."""
        key = (theta, head_dim)
        have = self._rope.get(key)
        if have is None or have[0].shape[0] < stop:
            size = max(stop, 2 * (have[0].shape[0] if have else 0), 256)
            base = float(np.float32(theta))
            inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
            ang = np.arange(size, dtype=np.float64)[:, None] * inv[None, :]
            have = self._rope[key] = (np.cos(ang).astype(F32), np.sin(ang).astype(F32))
        return have[0][:stop], have[1][:stop]

    def reset(self) -> None:
        self.cache.clear()
        self.pos = 0


# ==================================================================================================
# kernels
# ==================================================================================================

def op_embedding(ctx: Context, tokens: np.ndarray, table: Any) -> np.ndarray:
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        bad = int(ids[(ids < 0) | (ids >= table.shape[0])][0])
        raise ValidationError(f"token id {bad} is outside the vocabulary of {table.shape[0]} tokens")
    if isinstance(table, StreamedWeight):
        return table.take(ids)
    return table[ids]


def op_rms_norm(ctx: Context, x: np.ndarray, w: np.ndarray, *, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis (eps at float32 precision)."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True, dtype=F32)
    return (x * (F32(1.0) / np.sqrt(ms + F32(eps)))) * w


def op_matmul(ctx: Context, x: np.ndarray, w: Any) -> np.ndarray:
    """x (T, in) times the rows of w (out, in): x @ w.T, which numpy hands to sgemm as a transposed
    operand without copying it (a streamed weight: one product per chunk of rows)."""
    if isinstance(w, StreamedWeight):
        out = np.empty((x.shape[0], w.shape[0]), F32)
        for start, stop, rows in w.chunks():
            np.matmul(x, rows.T, out=out[:, start:stop])
        return out
    return np.matmul(x, w.T)


def op_rope(ctx: Context, x: np.ndarray, pos: int, *, n_head: int, head_dim: int, theta: float) -> np.ndarray:
    """Rotate the adjacent pairs (2i, 2i+1) of every head by angle (pos+t) * theta^(-2i/head_dim)
    (Meta / GGUF interleaved layout; GGML's RoPE mode NORM)."""
    t = x.shape[0]
    cos, sin = ctx.rope_table(theta, head_dim, pos + t)
    cos, sin = cos[pos:pos + t, None, :], sin[pos:pos + t, None, :]
    pairs = x.reshape(t, n_head, head_dim // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = np.empty_like(pairs)
    out[..., 0] = a * cos - b * sin
    out[..., 1] = a * sin + b * cos
    return out.reshape(t, n_head * head_dim)


def op_kv_cache(ctx: Context, k: np.ndarray, v: np.ndarray, *, slot: str, n_head_kv: int,
                head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Append this step's keys and values (T, n_head_kv*head_dim) to the cache; returns every cached
    position head-major (n_head_kv, S, head_dim)."""
    s = ctx.kv_slot(slot, n_head_kv, head_dim)
    if s.length != ctx.pos:
        raise ValidationError(f"KV cache {slot} holds {s.length} positions, but this step starts at {ctx.pos}")
    t = k.shape[0]
    kh = k.reshape(t, n_head_kv, head_dim).transpose(1, 0, 2)
    vh = v.reshape(t, n_head_kv, head_dim).transpose(1, 0, 2)
    return s.append(kh, vh)


def op_attention(ctx: Context, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, n_head: int, n_head_kv: int,
                 head_dim: int) -> np.ndarray:
    """Causal scaled dot-product attention with grouped KV heads.

    q: (T, n_head*head_dim), the last T of the S positions in k, v (n_head_kv, S, head_dim).  Query
    head h reads kv head h // g (g = n_head / n_head_kv): the g query heads of a kv head are stacked
    into one (g*T, head_dim) operand, so each kv head is one matrix product.
    """
    t, s = q.shape[0], k.shape[1]
    g = n_head // n_head_kv
    qh = q.reshape(t, n_head_kv, g, head_dim).transpose(1, 2, 0, 3).reshape(n_head_kv, g * t, head_dim)
    scores = np.matmul(qh, k.transpose(0, 2, 1))                       # (n_kv, g*T, S)
    scores *= F32(1.0 / math.sqrt(head_dim))
    if t > 1:
        # query t sits at position s - T + t and sees keys 0 ..= s - T + t
        future = np.arange(s)[None, :] > (s - t + np.arange(t))[:, None]
        scores.reshape(n_head_kv, g, t, s)[:, :, future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True, dtype=F32)
    out = np.matmul(scores, v)                                          # (n_kv, g*T, head_dim)
    return out.reshape(n_head_kv, g, t, head_dim).transpose(2, 0, 1, 3).reshape(t, n_head * head_dim)


def op_silu(ctx: Context, x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x / (F32(1.0) + np.exp(-x))


def op_mul(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * b


def op_add(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def op_softmax(ctx: Context, x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True, dtype=F32)


def op_rows(ctx: Context, x: np.ndarray, rows: Any) -> np.ndarray:
    """The rows that get logits: all (None), or a slice / index array (generation wants the last)."""
    return x if rows is None else x[rows]


def op_weight(ctx: Context, *, names: Sequence[str]) -> np.ndarray:
    """The first of ``names`` the model has (a classifier tied to the embedding)."""
    for name in names:
        if ctx.has_weight(name):
            return ctx.weight(name)
    raise ValidationError(f"none of the tensors {', '.join(names)} is present", tensor=names[0])


#: the built-in op table; an architecture's ``ops`` extend or override it
OPS: dict[str, Kernel] = {
    "embedding": op_embedding,
    "rms_norm": op_rms_norm,
    "matmul": op_matmul,
    "rope": op_rope,
    "kv_cache": op_kv_cache,
    "attention": op_attention,
    "silu": op_silu,
    "mul": op_mul,
    "add": op_add,
    "softmax": op_softmax,
    "rows": op_rows,
    "weight": op_weight,
}


# ==================================================================================================
# interpreter
# ==================================================================================================

def node_label(node: Node, index: int) -> str:
    return repr(node.name) if node.name else f"#{index} ({node.op} -> {', '.join(node.outputs)})"


def check_ops(graph: Graph, ops: Mapping[str, Kernel]) -> None:
    """Refuse a graph with an op the table does not have, naming the node."""
    for i, node in enumerate(graph.nodes):
        if node.op not in ops:
            raise ValidationError(f"node {node_label(node, i)} uses the unknown op {node.op!r} "
                                  f"(known ops: {', '.join(sorted(ops))})")


def execute(graph: Graph, feeds: Mapping[str, Any], ctx: Context, ops: Mapping[str, Kernel]) -> dict[str, Any]:
    """Run every node in order; returns the graph outputs.  Names not computed or fed are weights."""
    check_ops(graph, ops)
    env: dict[str, Any] = dict(feeds)
    remaining = _last_uses(graph)
    for i, node in enumerate(graph.nodes):
        args = []
        for name in node.inputs:
            if name in env:
                args.append(env[name])
            elif ctx.has_weight(name):
                args.append(ctx.weight(name))
            else:
                raise ValidationError(f"node {node_label(node, i)}: input {name!r} is neither computed by an "
                                      "earlier node, fed, nor a tensor of the model")
        try:
            result = ops[node.op](ctx, *args, **dict(node.attrs))
        except MconvError:
            raise
        except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError) as e:
            raise ValidationError(f"node {node_label(node, i)} ({node.op}) failed: {type(e).__name__}: {e}")
        outs = result if isinstance(result, tuple) else (result,)
        if len(outs) != len(node.outputs):
            raise ValidationError(f"node {node_label(node, i)} ({node.op}) gave {len(outs)} outputs for "
                                  f"{len(node.outputs)} names")
        env.update(zip(node.outputs, outs))
        for name in remaining.get(i, ()):    # drop intermediates nobody reads again
            env.pop(name, None)
    missing = [o for o in graph.outputs if o not in env]
    if missing:
        raise ValidationError(f"graph output {missing[0]!r} is computed by no node")
    return {o: env[o] for o in graph.outputs}


def _last_uses(graph: Graph) -> dict[int, list[str]]:
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = i
    keep = set(graph.outputs)
    out: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in keep:
            out.setdefault(i, []).append(name)
    return out


def architecture_of(model: Model) -> Any:
    from .registry import get_registry

    reg = get_registry()
    entry = reg.architectures.get(model.arch)
    if entry is None:
        raise ValidationError(f"no registered architecture {model.arch!r} can execute this model "
                              f"(known: {', '.join(sorted(reg.architectures)) or 'none'})")
    return entry[0]


def run(graph: Graph, model: Model, feeds: Mapping[str, Any], ops: Optional[Mapping[str, Kernel]] = None
        ) -> dict[str, Any]:
    """One-shot: run ``graph`` over ``model``'s weights with a fresh context (no cache kept)."""
    table = dict(OPS)
    table.update(ops or {})
    ctx = Context(model)
    ctx.pos = int(feeds.get("pos", 0) or 0)
    return execute(graph, feeds, ctx, table)


class Session:
    """A model ready to run: its graph, op table, decoded weights and KV cache."""

    def __init__(self, model: Model, *, graph: Optional[Graph] = None,
                 ops: Optional[Mapping[str, Kernel]] = None, cache_bytes: Optional[int] = None) -> None:
        self.model = model
        if graph is None:
            arch = architecture_of(model)
            if arch.build_graph is None:
                raise ValidationError(f"architecture {arch.name!r} has no graph builder; it cannot be executed")
            graph = arch.build_graph(model.hparams)
        else:
            from .registry import get_registry

            entry = get_registry().architectures.get(model.arch)
            arch = entry[0] if entry is not None else None
        table = dict(OPS)
        table.update(arch.ops if arch is not None else {})
        table.update(ops or {})
        check_ops(graph, table)
        self.graph = graph
        self.ops = table
        self.ctx = Context(model, cache_bytes)
        n_vocab = model.hparams.get("n_vocab")
        self.n_vocab = int(n_vocab) if n_vocab else None

    @property
    def pos(self) -> int:
        """Positions already in the KV cache."""
        return self.ctx.pos

    def preload(self, names: Optional[Iterable[str]] = None) -> None:
        """Decode the graph's weights now (the first forward does it otherwise)."""
        for name in names if names is not None else self.graph.weights:
            if self.ctx.has_weight(name):
                self.ctx.weight(name)

    def forward(self, tokens: Sequence[int] | np.ndarray, *, last_only: bool = False) -> np.ndarray:
        """Run ``tokens`` as one batch after the cached positions, append them to the cache and return
        their logits (T, n_vocab) float32 (only the last row, (1, n_vocab), with ``last_only``)."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValidationError("no tokens to run")
        feeds: dict[str, Any] = {"tokens": ids, "pos": self.ctx.pos,
                                 "output_rows": slice(-1, None) if last_only else None}
        try:
            out = execute(self.graph, feeds, self.ctx, self.ops)
        except BaseException:
            self.reset()     # a half-run step leaves some layers' caches longer than others
            raise
        self.ctx.pos += ids.size
        logits = np.asarray(out[self.graph.outputs[0]], dtype=F32)
        if logits.ndim == 2 and last_only and logits.shape[0] != 1:
            logits = logits[-1:]
        return logits

    def reset(self) -> None:
        self.ctx.reset()

    def logits(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits of a fresh batch (the cache is reset first)."""
        self.reset()
        return self.forward(tokens)
