"""The canonical in-memory representation every reader produces and every writer consumes.

A :class:`Tensor` is a name, a shape (numpy order, outermost first), a :class:`DType` and a lazy
*source*.  Sources hand out whole rows of raw stored bytes: a tensor of shape ``(..., n)`` is viewed
as ``rows = prod(shape[:-1])`` rows of ``dtype.row_bytes(n)`` bytes (a 0-d or 1-d tensor is one row).
Row chunks are the unit of streaming: writers, casts, quantizers and the executor all pull rows, so
no transform ever needs a whole tensor, and nothing is read until somebody asks.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .dtypes import DIRECT_CASTS, F32, DType
from .errors import FormatError, MconvError

#: the largest piece a transform or writer handles at once (DESIGN: chunks of <= 64 MiB)
CHUNK_BYTES = 64 << 20
#: a transform (cast, quantization, permute, concat) handles at most this many values per chunk: its
#: float32 intermediates are a few times 8 MiB, so even with one chunk in flight per core the peak
#: stays far below 10 % of a multi-GB model
TRANSFORM_VALUES = 1 << 21


def shape_rows(shape: Sequence[int]) -> int:
    rows = 1
    for d in shape[:-1]:
        rows *= int(d)
    return rows


def shape_cols(shape: Sequence[int]) -> int:
    return int(shape[-1]) if len(shape) else 1


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ==================================================================================================
# mapped files
# ==================================================================================================

class MappedFile:
    """A read-only mmap of one input file, shared by every tensor that lives in it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._map: Optional[mmap.mmap] = None
        self._fd: Optional[int] = None
        self.size = os.path.getsize(self.path)

    @property
    def buffer(self) -> mmap.mmap | bytes:
        with self._lock:
            if self._map is None:
                if self.size == 0:
                    return b""
                try:
                    self._map = mmap.mmap(self._open(), 0, access=mmap.ACCESS_READ)
                except OSError as e:  # e.g. ENOMEM under an address-space limit: name the file
                    raise OSError(e.errno, f"cannot map the file: {e.strerror}", self.path) from None
            return self._map

    def _open(self) -> int:
        # the descriptor stays open with the map: fileno() hands out the very file that was mapped
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return self._fd

    def fileno(self) -> int:
        """A read-only descriptor of this file (for in-kernel copies: ``os.copy_file_range``)."""
        with self._lock:
            return self._open()

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise FormatError(f"{nbytes} bytes at offset {offset} run past the end of the file "
                              f"({self.size} bytes)", path=self.path, offset=offset)
        if nbytes == 0:
            return np.empty(0, dtype=np.uint8)
        return np.frombuffer(self.buffer, dtype=np.uint8, count=nbytes, offset=offset)

    def release(self, offset: int, nbytes: int) -> None:
        """Drop the pages of [offset, offset+nbytes) from this process: file-backed pages count in
        RSS, and a multi-GB conversion must not keep what it has already written."""
        with self._lock:
            m = self._map
        if m is None or nbytes <= 0 or not hasattr(m, "madvise"):
            return
        page = mmap.PAGESIZE
        start = offset // page * page
        end = min(self.size, -(-(offset + nbytes) // page) * page)
        try:
            m.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):  # pragma: no cover - best effort
            pass

    def close(self) -> None:
        with self._lock:
            if self._map is not None:
                try:
                    self._map.close()
                except BufferError:
                    # numpy views of the map are still alive; the map closes when they die
                    pass
                self._map = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class FileCache:
    """Opens each input file once per model."""

    def __init__(self) -> None:
        self._files: dict[str, MappedFile] = {}

    def get(self, path: str | os.PathLike[str]) -> MappedFile:
        key = os.path.realpath(path)
        if key not in self._files:
            self._files[key] = MappedFile(path)
        return self._files[key]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


# ==================================================================================================
# sources
# ==================================================================================================

class Source:
    """Lazy provider of a tensor's stored bytes, row by row."""

    #: short description shown by ``inspect`` and in history ("file", "view", "cast", ...)
    kind = "source"

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a C-contiguous uint8 array of shape (stop-start, row_bytes)."""
        raise NotImplementedError

    def release(self) -> None:
        """Forget cached pages / buffers once a consumer is done with the tensor."""

    def release_rows(self, start: int, stop: int) -> None:
        """Forget the pages of rows [start, stop) (called by streaming consumers after each chunk)."""

    def files(self) -> tuple[str, ...]:
        return ()

    def extents(self, start: int, stop: int) -> Optional[list[tuple["MappedFile", int, int]]]:
        """Where rows [start, stop) lie verbatim in input files, as (file, offset, nbytes) runs in
        order, or None when they must be computed.  Writers copy such runs in the kernel
        (``core/io.write_tensor``) instead of reading them through memory."""
        return None


class FileSlice(Source):
    """Contiguous rows stored in a file at a byte offset (zero-copy through mmap)."""

    kind = "file"

    def __init__(self, file: MappedFile, offset: int, n_rows: int, row_bytes: int) -> None:
        self.file = file
        self.offset = offset
        self.n_rows = n_rows
        self.row_bytes = row_bytes
        self.nbytes = n_rows * row_bytes
        if offset < 0 or offset + self.nbytes > file.size:
            raise FormatError(f"data ({self.nbytes} bytes at offset {offset}) runs past the end of the "
                              f"file ({file.size} bytes)", path=file.path, offset=offset)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        view = self.file.view(self.offset + start * self.row_bytes, (stop - start) * self.row_bytes)
        return view.reshape(stop - start, self.row_bytes)

    def release(self) -> None:
        self.file.release(self.offset, self.nbytes)

    def release_rows(self, start: int, stop: int) -> None:
        self.file.release(self.offset + start * self.row_bytes, (stop - start) * self.row_bytes)

    def files(self) -> tuple[str, ...]:
        return (self.file.path,)

    def extents(self, start: int, stop: int) -> Optional[list[tuple[MappedFile, int, int]]]:
        return [(self.file, self.offset + start * self.row_bytes, (stop - start) * self.row_bytes)]


class StridedView(Source):
    """A strided view into a storage blob (torch tensors: offset, sizes and strides in elements).

    ``storage()`` returns the storage's bytes (uint8, at least ``storage_elems * itemsize``).  The
    constructor refuses (ValueError) a view reaching outside the storage; callers check first to
    report a FormatError.  ``on_release`` is called when a consumer is done with the tensor.
    """

    kind = "view"

    def __init__(self, storage: Callable[[], np.ndarray], itemsize: int, elem_offset: int,
                 shape: Sequence[int], strides: Sequence[int], storage_elems: int,
                 on_release: Optional[Callable[[], None]] = None) -> None:
        self.storage = storage
        self.on_release = on_release
        self.itemsize = itemsize
        self.elem_offset = elem_offset
        self.shape = tuple(int(s) for s in shape)
        self.strides = tuple(int(s) for s in strides)
        self.storage_elems = storage_elems
        check_view_bounds(self.shape, self.strides, elem_offset, storage_elems)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) copied out of the storage; only those rows are ever materialized.

        Rows are the view's leading indices in C order.  Within one index of the dimensions before
        the last two, rows are equally spaced (stride[-2]), so each such block is one 2-D strided
        window; the blocks a chunk touches are copied one after another."""
        cols = shape_cols(self.shape)
        n = stop - start
        if numel(self.shape) == 0 or n <= 0:
            return np.zeros((max(n, 0), cols * self.itemsize), dtype=np.uint8)
        blob = self.storage()
        dt = np.dtype(f"V{self.itemsize}")
        base = blob[: self.storage_elems * self.itemsize].view(dt) if blob.dtype != dt else blob
        # a 0-d or 1-d view is one row: pad to 2-d with extent-1, stride-0 dimensions
        pad = max(0, 2 - len(self.shape))
        shape, strides = (1,) * pad + self.shape, (0,) * pad + self.strides
        outer_shape, outer_strides = shape[:-2], strides[:-2]
        inner, row_stride, col_stride = shape[-2], strides[-2], strides[-1]
        out = np.empty((n, cols), dtype=dt)
        r = start
        while r < stop:
            block, i = divmod(r, inner)
            take = min(stop - r, inner - i)
            offset = self.elem_offset + i * row_stride
            for idx, s in zip(np.unravel_index(block, outer_shape) if outer_shape else (), outer_strides):
                offset += int(idx) * s
            window = np.lib.stride_tricks.as_strided(
                base[offset:], shape=(take, cols), strides=(row_stride * self.itemsize, col_stride * self.itemsize),
                writeable=False)
            out[r - start:r - start + take] = window
            r += take
        return out.view(np.uint8).reshape(n, cols * self.itemsize)

    def release(self) -> None:
        if self.on_release is not None:
            self.on_release()


def check_view_bounds(shape: Sequence[int], strides: Sequence[int], offset: int, storage_elems: int) -> None:
    """Raise ValueError unless every element of the view lies inside the storage."""
    if len(shape) != len(strides):
        raise ValueError(f"view has {len(shape)} sizes but {len(strides)} strides")
    if offset < 0:
        raise ValueError(f"negative storage offset {offset}")
    if any(s < 0 for s in shape):
        raise ValueError(f"negative size in {tuple(shape)}")
    if any(s < 0 for s in strides):
        raise ValueError(f"negative stride in {tuple(strides)}")
    if numel(shape) == 0:
        if offset > storage_elems:
            raise ValueError(f"storage offset {offset} is past the storage of {storage_elems} elements")
        return
    last = offset + sum((d - 1) * s for d, s in zip(shape, strides))
    if last >= storage_elems:
        raise ValueError(f"view reaches element {last} of a storage of {storage_elems} elements")


class InMemory(Source):
    """Bytes already in memory (decompressed members, computed tensors, tests)."""

    kind = "memory"

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if self.raw.ndim != 2:
            raise ValueError("InMemory takes (rows, row_bytes) uint8")

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.raw[start:stop]


class Derived(Source):
    """A named transform of other tensors, computed per row chunk when read."""

    kind = "derived"

    def __init__(self, op: str, inputs: Sequence["Tensor"], fn: Callable[[int, int], np.ndarray],
                 attrs: Optional[Mapping[str, Any]] = None,
                 release_rows: Optional[Callable[[int, int], None]] = None,
                 extents: Optional[Callable[[int, int], Optional[list[tuple[MappedFile, int, int]]]]] = None) -> None:
        self.op = op
        self.inputs = tuple(inputs)
        self.fn = fn
        self.attrs = dict(attrs or {})
        self._release_rows = release_rows
        self._extents = extents

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.fn(start, stop), dtype=np.uint8)

    def release(self) -> None:
        for t in self.inputs:
            t.source.release()

    def release_rows(self, start: int, stop: int) -> None:
        # the row mapping is the transform's: without one, inputs are released whole at the end
        if self._release_rows is not None:
            self._release_rows(start, stop)

    def files(self) -> tuple[str, ...]:
        out: list[str] = []
        for t in self.inputs:
            out.extend(t.source.files())
        return tuple(dict.fromkeys(out))

    def extents(self, start: int, stop: int) -> Optional[list[tuple[MappedFile, int, int]]]:
        # only a transform that moves whole rows unchanged (concat along rows) knows its extents
        return self._extents(start, stop) if self._extents is not None else None


# ==================================================================================================
# tensor
# ==================================================================================================

@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: DType
    source: Source = field(compare=False, repr=False)

    @property
    def n_rows(self) -> int:
        return shape_rows(self.shape)

    @property
    def n_cols(self) -> int:
        return shape_cols(self.shape)

    @property
    def row_bytes(self) -> int:
        return self.dtype.row_bytes(self.n_cols)

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.row_bytes

    @property
    def numel(self) -> int:
        return numel(self.shape)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        try:
            out = self.source.read_rows(start, stop)
        except MconvError as e:
            raise e.at(tensor=self.name)
        if out.shape != (stop - start, self.row_bytes):
            raise FormatError(f"source returned {out.shape} for rows {start}:{stop}, expected "
                              f"{(stop - start, self.row_bytes)}", tensor=self.name)
        return out

    def rows_per_chunk(self, max_bytes: Optional[int] = None, scale: int = 1) -> int:
        """Rows per chunk so that a chunk (times ``scale`` for transforms that grow it) fits max_bytes
        (default CHUNK_BYTES)."""
        max_bytes = CHUNK_BYTES if max_bytes is None else max_bytes
        per_row = max(1, self.row_bytes * scale, self.n_cols * 4 if self.dtype.is_quantized else 0)
        return max(1, max_bytes // per_row)

    def iter_chunks(self, max_bytes: Optional[int] = None, release: bool = True) -> Iterator[np.ndarray]:
        """Raw rows in chunks of at most ``max_bytes`` (default CHUNK_BYTES; at least one row),
        releasing mapped pages of each chunk after the consumer has used it.  Derived tensors (casts, quantization...) are
        computed in smaller chunks on a thread pool, one chunk ahead per core, in order."""
        if self.n_rows == 0 or self.row_bytes == 0:
            return
        step = self.rows_per_chunk(max_bytes)
        derived = isinstance(self.source, Derived)
        if derived:
            step = max(1, min(step, TRANSFORM_VALUES // max(1, self.n_cols)))
        ranges = [(a, min(self.n_rows, a + step)) for a in range(0, self.n_rows, step)]
        chunks = _prefetch(self.read_rows, ranges) if derived and len(ranges) > 1 else (
            self.read_rows(a, b) for a, b in ranges)
        for (start, stop), chunk in zip(ranges, chunks):
            yield chunk
            if release:
                self.source.release_rows(start, stop)
        if release:
            self.source.release()

    def raw(self) -> np.ndarray:
        """All stored bytes as (rows, row_bytes) uint8."""
        return self.read_rows(0, self.n_rows) if self.n_rows else np.zeros((0, self.row_bytes), np.uint8)

    def tobytes(self) -> bytes:
        return self.raw().tobytes()

    def numpy(self) -> np.ndarray:
        """Decoded values in the dtype's natural numpy type (float32 for bf16/f8/quantized)."""
        values = self.dtype.decode(self.raw(), self.n_cols)
        return values.reshape(self.shape)

    def f32(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """float32 values of rows [start, stop) as (rows, cols), or of the whole tensor with its shape."""
        if stop is None and start == 0:
            return self.dtype.to_f32(self.raw(), self.n_cols).reshape(self.shape)
        stop = self.n_rows if stop is None else stop
        return self.dtype.to_f32(self.read_rows(start, stop), self.n_cols)

    def with_name(self, name: str) -> "Tensor":
        return replace(self, name=name)


_POOL: Optional[Any] = None
_POOL_LOCK = threading.Lock()


def workers() -> int:
    """Threads for CPU-bound chunk transforms (numpy releases the GIL in its kernels)."""
    env = os.environ.get("MCONV_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _prefetch(read: Callable[[int, int], np.ndarray], ranges: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    """Compute ``read(a, b)`` for each range on the shared pool, at most one chunk ahead per worker,
    yielding results in order."""
    global _POOL
    n = workers()
    if n == 1:
        yield from (read(a, b) for a, b in ranges)
        return
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="mconv-chunk")
        pool = _POOL
    pending: list[Any] = []
    it = iter(ranges)
    try:
        for a, b in it:
            pending.append(pool.submit(read, a, b))
            if len(pending) > n:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        for fut in pending:
            fut.cancel()


def tensor_from_array(name: str, array: np.ndarray, dtype: DType) -> Tensor:
    """Build an in-memory tensor from values (encoded into ``dtype``)."""
    arr = np.asarray(array)
    shape = tuple(int(d) for d in arr.shape)
    rows, cols = shape_rows(shape), shape_cols(shape)
    raw = dtype.encode(arr.reshape(rows, cols)) if rows * cols else np.zeros((rows, dtype.row_bytes(cols)), np.uint8)
    return Tensor(name, shape, dtype, InMemory(raw))


def tensor_from_raw(name: str, shape: Sequence[int], dtype: DType, raw: bytes | np.ndarray) -> Tensor:
    shape = tuple(int(d) for d in shape)
    rows, row_bytes = shape_rows(shape), dtype.row_bytes(shape_cols(shape))
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray)) else np.asarray(raw, np.uint8)
    if buf.size != rows * row_bytes:
        raise FormatError(f"{buf.size} bytes given for a {dtype.name} tensor of shape {shape} "
                          f"({rows * row_bytes} bytes)", tensor=name)
    return Tensor(name, shape, dtype, InMemory(buf.reshape(rows, row_bytes)))


# -- derived transforms -----------------------------------------------------------------------------

def cast(t: Tensor, dtype: DType) -> Tensor:
    """The tensor converted to ``dtype`` row chunk by row chunk (decode, then encode)."""
    if dtype == t.dtype:
        return t
    src = t.dtype
    float_path = dtype.is_float or src.is_float
    direct = DIRECT_CASTS.get((src.name, dtype.name))

    def rows(start: int, stop: int) -> np.ndarray:
        raw = t.read_rows(start, stop)
        if direct is not None:
            return direct(raw, t.n_cols)
        values = src.to_f32(raw, t.n_cols) if (float_path and src.is_quantized) else src.decode(raw, t.n_cols)
        if dtype.is_quantized:
            values = np.asarray(values, dtype=F32)
        try:
            return dtype.encode(values)
        except MconvError as e:
            raise e.at(tensor=t.name)

    dtype.row_bytes(t.n_cols)  # raise early when the row is not a whole number of blocks
    return Tensor(t.name, t.shape, dtype, Derived("cast", [t], rows, {"from": src.name, "to": dtype.name},
                                                  release_rows=t.source.release_rows))


def permute_rows(t: Tensor, order: np.ndarray, op: str, attrs: Optional[Mapping[str, Any]] = None) -> Tensor:
    """Row i of the result is row ``order[i]`` of ``t`` (any dtype: rows are whole)."""
    order = np.asarray(order, dtype=np.int64)
    if order.shape != (t.n_rows,):
        raise ValueError(f"row order of length {order.shape} for {t.n_rows} rows")

    def rows(start: int, stop: int) -> np.ndarray:
        idx = order[start:stop]
        if idx.size == 0:
            return np.zeros((0, t.row_bytes), np.uint8)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        block = t.read_rows(lo, hi)
        return block[idx - lo]

    return Tensor(t.name, t.shape, t.dtype, Derived(op, [t], rows, attrs))


def concat(name: str, parts: Sequence[Tensor], axis: int) -> Tensor:
    """Concatenate tensors of one dtype along ``axis`` lazily (Meta model-parallel shards)."""
    first = parts[0]
    nd = len(first.shape)
    axis = axis % nd
    for p in parts:
        if p.dtype != first.dtype or len(p.shape) != nd or any(
                a != b for i, (a, b) in enumerate(zip(p.shape, first.shape)) if i != axis):
            raise FormatError(f"shards do not fit together along axis {axis}: "
                              f"{[tuple(q.shape) for q in parts]} {[q.dtype.name for q in parts]}", tensor=name)
    shape = list(first.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    shape_t = tuple(shape)
    if axis == nd - 1:
        def rows(start: int, stop: int) -> np.ndarray:
            return np.concatenate([p.read_rows(start, stop) for p in parts], axis=1)

        def release_rows(start: int, stop: int) -> None:
            for p in parts:
                p.source.release_rows(start, stop)
    else:
        # rows are grouped in runs of prod(shape[axis:-1]) for every outer index
        run_len = [shape_rows(p.shape[axis:]) for p in parts]
        total_run = sum(run_len)

        def pieces(start: int, stop: int) -> Iterator[tuple[int, int, int]]:
            """(part, first row, row count) of output rows [start, stop), in order."""
            r = start
            while r < stop:
                o, within = divmod(r, total_run)
                k, acc = 0, 0
                while within >= acc + run_len[k]:
                    acc += run_len[k]
                    k += 1
                local = within - acc
                take = min(stop - r, run_len[k] - local)
                yield k, o * run_len[k] + local, take
                r += take

        def rows(start: int, stop: int) -> np.ndarray:
            out = [parts[k].read_rows(base, base + n) for k, base, n in pieces(start, stop)]
            return np.concatenate(out, axis=0) if out else np.zeros((0, first.row_bytes), np.uint8)

        def release_rows(start: int, stop: int) -> None:
            for k, base, n in pieces(start, stop):
                parts[k].source.release_rows(base, base + n)

        def extents(start: int, stop: int) -> Optional[list[tuple[MappedFile, int, int]]]:
            out: list[tuple[MappedFile, int, int]] = []
            for k, base, n in pieces(start, stop):
                part = parts[k].source.extents(base, base + n)
                if part is None:
                    return None
                out.extend(part)
            return out

        return Tensor(name, shape_t, first.dtype, Derived("concat", parts, rows, {"axis": axis}, release_rows,
                                                          extents))
    return Tensor(name, shape_t, first.dtype, Derived("concat", parts, rows, {"axis": axis}, release_rows))


def map_values(t: Tensor, fn: Callable[[np.ndarray], np.ndarray], op: str, dtype: Optional[DType] = None) -> Tensor:
    """Apply ``fn`` to float32 rows (n, cols) -> (n, cols); encodes into ``dtype`` (default: t's)."""
    out_dtype = dtype or t.dtype

    def rows(start: int, stop: int) -> np.ndarray:
        return out_dtype.encode(fn(t.f32(start, stop)))

    return Tensor(t.name, t.shape, out_dtype, Derived(op, [t], rows, release_rows=t.source.release_rows))


# ==================================================================================================
# tokenizer
# ==================================================================================================

# token types as GGUF and sentencepiece number them
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class Tokenizer:
    """Vocabulary in GGUF/SentencePiece spelling: ``▁`` for space, ``<0xHH>`` byte tokens,
    ``<s>``/``</s>``/``<unk>`` for the specials."""

    model: str                          # "llama" (SentencePiece), "gpt2" (BPE), "no_vocab"
    tokens: tuple[bytes, ...]
    scores: np.ndarray                  # float32, len == len(tokens)
    token_types: np.ndarray             # int32, GGUF enum
    bos_id: Optional[int] = None
    eos_id: Optional[int] = None
    unk_id: Optional[int] = None
    pad_id: Optional[int] = None
    add_bos: Optional[bool] = None
    add_eos: Optional[bool] = None
    merges: Optional[tuple[str, ...]] = None
    #: the original sentencepiece ``tokenizer.model`` bytes when the source had one
    sp_model: Optional[bytes] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.tokens)

    def duplicates(self) -> list[bytes]:
        seen: set[bytes] = set()
        dups = []
        for t in self.tokens:
            if t in seen:
                dups.append(t)
            seen.add(t)
        return dups

    def same_as(self, other: "Tokenizer") -> bool:
        return (self.model == other.model and self.tokens == other.tokens
                and np.array_equal(self.scores.view(np.uint32), other.scores.view(np.uint32))
                and np.array_equal(self.token_types, other.token_types)
                and (self.bos_id, self.eos_id, self.unk_id, self.pad_id)
                == (other.bos_id, other.eos_id, other.unk_id, other.pad_id))


# ==================================================================================================
# graph
# ==================================================================================================

@dataclass(frozen=True)
class Node:
    """One operation over named values; weights are referenced by canonical tensor name."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: canonical names of the weights the graph reads
    weights: tuple[str, ...] = ()


# ==================================================================================================
# model
# ==================================================================================================

@dataclass(frozen=True)
class Step:
    """One entry of a model's history: where it came from and what was done to it."""

    kind: str       # "read", "default", "hparam", "cast", "loss", "write", ...
    detail: str


@dataclass
class Model:
    arch: str
    hparams: dict[str, Any]
    tensors: dict[str, Tensor]
    tokenizer: Optional[Tokenizer] = None
    metadata: dict[str, Any] = field(default_factory=dict)
    history: list[Step] = field(default_factory=list)
    #: where each hparam came from ("gguf metadata", "config.json", "tensor shapes", "default", ...)
    hparam_origin: dict[str, str] = field(default_factory=dict)
    #: the format name and files it was read from
    format: str = ""
    files: tuple[str, ...] = ()
    cache: FileCache = field(default_factory=FileCache, repr=False)

    def set_hparam(self, key: str, value: Any, origin: str) -> None:
        self.hparams[key] = value
        self.hparam_origin[key] = origin
        if origin.startswith("default"):
            self.history.append(Step("default", f"{key}={value!r} ({origin})"))

    def close(self) -> None:
        self.cache.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def derive(self, tensors: Optional[dict[str, Tensor]] = None, **changes: Any) -> "Model":
        """A new model sharing this one's files, with some fields replaced."""
        return replace(self, tensors=dict(self.tensors if tensors is None else tensors),
                       hparams=dict(changes.pop("hparams", self.hparams)),
                       hparam_origin=dict(changes.pop("hparam_origin", self.hparam_origin)),
                       metadata=dict(changes.pop("metadata", self.metadata)),
                       history=list(changes.pop("history", self.history)), **changes)
