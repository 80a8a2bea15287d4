"""``torch.save`` without torch: the pickle and the zip records torch 2.13 writes.

The pickle is protocol 2 and follows CPython's pickler opcode for opcode (so for a dict of
contiguous tensors it is byte-identical to torch's data.pkl): strings as BINUNICODE, every string,
tuple, dict and REDUCE result memoized (BINPUT), a global written once and then fetched (BINGET), the
strings torch reuses ('storage', 'cpu', a storage key) fetched too, dict items in SETITEMS batches of
1000 (a batch of one as SETITEM).  A tensor is
``_rebuild_tensor_v2((('storage', torch.<X>Storage, key, 'cpu', numel)), 0, size, stride, False, OrderedDict())``
with the persistent id as BINPERSID, or ``_rebuild_tensor_v3`` with ``torch.storage.UntypedStorage``
(numel in bytes) and an explicit dtype for the types that have no storage class (uint16/32/64,
float8).  Strides are C-contiguous with torch's rule (an extent-0 dimension counts as 1).

Records, in torch's order: data.pkl, .format_version ("1"), .storage_alignment ("64"), byteorder
("little"), data/0..N-1 (one per tensor, streamed in chunks), version ("3\\n"),
.data/serialization_id.  torch's id is 20 digits of a hash of the record names (std::hash over an
unordered set, not reproducible) and 20 digits of c10::hash_combine over the records' CRC-32s in
write order; the second half is reproduced exactly, the first is FNV-1a-64 of the record names.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from mconv.plugins import Tensor, UnsupportedError

from ._torch_pickle import STORAGE_TYPES, TORCH_DTYPES
from ._torch_zip import ZipWriter

#: mconv dtype -> torch storage class name (v2) ...
STORAGE_CLASS = {v: k for k, v in STORAGE_TYPES.items()}
#: ... or torch dtype attribute (v3 with an untyped storage)
DTYPE_ATTR = {v: k for k, v in TORCH_DTYPES.items()}
WRITABLE_DTYPES = frozenset(DTYPE_ATTR)

BATCH = 1000
MASK64 = (1 << 64) - 1


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    acc = 1
    for d in reversed(shape):
        out.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(out))


class _Pickler:
    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo: dict[Any, int] = {}
        self.n_memo = 0
        self.tensors: list[Tensor] = []

    # -- memo ---------------------------------------------------------------------------------------
    def put(self, key: Any = None) -> None:
        idx = self.n_memo
        self.n_memo += 1
        if key is not None:
            self.memo[key] = idx
        self.out += b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)

    def get(self, key: Any) -> bool:
        idx = self.memo.get(key)
        if idx is None:
            return False
        self.out += b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx)
        return True

    # -- values -------------------------------------------------------------------------------------
    def global_(self, module: str, name: str) -> None:
        if not self.get(("global", module, name)):
            self.out += b"c" + f"{module}\n{name}\n".encode("ascii")
            self.put(("global", module, name))

    def string(self, s: str, shared: bool = False) -> None:
        if shared and self.get(("str", s)):
            return
        raw = s.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw
        self.put(("str", s) if shared else None)

    def integer(self, x: int) -> None:
        if 0 <= x <= 0xFF:
            self.out += b"K" + bytes([x])
        elif 0 <= x <= 0xFFFF:
            self.out += b"M" + struct.pack("<H", x)
        elif -0x80000000 <= x <= 0x7FFFFFFF:
            self.out += b"J" + struct.pack("<i", x)
        else:
            raw = pickle.encode_long(x)
            if len(raw) > 255:
                raise UnsupportedError(f"integer {x} is too large to pickle with LONG1")
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def tuple_(self, items: tuple[Any, ...]) -> None:
        if not items:
            self.out += b")"
            return
        if len(items) > 3:
            self.out += b"("
        for x in items:
            self.save(x)
        self.out += b"t" if len(items) > 3 else bytes([0x84 + len(items)])
        self.put()

    def items(self, pairs: list[tuple[Any, Any]]) -> None:
        for start in range(0, len(pairs), BATCH):
            batch = pairs[start:start + BATCH]
            if len(batch) > 1:
                self.out += b"("
            for k, v in batch:
                self.save(k)
                self.save(v)
            self.out += b"u" if len(batch) > 1 else b"s"

    def save(self, obj: Any) -> None:
        if obj is None:
            self.out += b"N"
        elif obj is True or obj is False:
            self.out += b"\x88" if obj else b"\x89"
        elif type(obj) is int:
            self.integer(obj)
        elif type(obj) is float:
            self.out += b"G" + struct.pack(">d", obj)
        elif type(obj) is str:
            self.string(obj)
        elif type(obj) is tuple:
            self.tuple_(obj)
        elif type(obj) is OrderedDict:
            self.global_("collections", "OrderedDict")
            self.out += b")R"
            self.put()
            self.items(list(obj.items()))
        elif type(obj) is dict:
            self.out += b"}"
            self.put()
            self.items(list(obj.items()))
        elif isinstance(obj, Tensor):
            self.tensor(obj)
        else:
            raise UnsupportedError(f"cannot pickle a {type(obj).__name__}")

    def tensor(self, t: Tensor) -> None:
        name = t.dtype.name
        if name not in DTYPE_ATTR:
            raise UnsupportedError(f"a .pth file cannot store {name} tensors", tensor=t.name)
        key = str(len(self.tensors))
        self.tensors.append(t)
        storage_class = STORAGE_CLASS.get(name)
        self.global_("torch._utils", "_rebuild_tensor_v2" if storage_class else "_rebuild_tensor_v3")
        self.out += b"("
        # persistent id ('storage', storage type, key, location, numel)
        self.out += b"("
        self.string("storage", shared=True)
        if storage_class:
            self.global_("torch", storage_class)
        else:
            self.global_("torch.storage", "UntypedStorage")
        self.string(key, shared=True)
        self.string("cpu", shared=True)
        self.integer(t.numel if storage_class else t.nbytes)
        self.out += b"t"
        self.put()
        self.out += b"Q"
        self.integer(0)
        self.tuple_(tuple(t.shape))
        self.tuple_(contiguous_strides(tuple(t.shape)))
        self.out += b"\x89"
        self.global_("collections", "OrderedDict")
        self.out += b")R"
        self.put()
        if not storage_class:
            self.global_("torch", DTYPE_ATTR[name])
        self.out += b"t"
        self.put()
        self.out += b"R"
        self.put()


def dumps(obj: Any) -> tuple[bytes, list[Tensor]]:
    """The data.pkl of ``obj`` (dicts, OrderedDicts, tuples, scalars, IR tensors as leaves) and the
    tensors in storage-key order."""
    p = _Pickler()
    p.save(obj)
    p.out += b"."
    return bytes(p.out), p.tensors


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def _chunks(t: Tensor, progress: Callable[[int], None]) -> Iterator[np.ndarray]:
    for chunk in t.iter_chunks():
        progress(chunk.nbytes)
        yield np.ascontiguousarray(chunk)


def save(f: BinaryIO, archive: str, obj: Any, progress: Callable[[int], None] = lambda n: None) -> None:
    """Write ``obj`` as torch.save would, to an open binary file, under the folder ``archive``."""
    data, tensors = dumps(obj)
    w = ZipWriter(f)
    names: list[str] = []
    for name, blob in (("data.pkl", data), (".format_version", b"1"), (".storage_alignment", b"64"),
                       ("byteorder", b"little")):
        w.write_record(f"{archive}/{name}", blob)
        names.append(name)
    for i, t in enumerate(tensors):
        w.write_stream(f"{archive}/data/{i}", t.nbytes, _chunks(t, progress))
        names.append(f"data/{i}")
    w.write_record(f"{archive}/version", b"3\n")
    names.append("version")
    ident = f"{_fnv1a64(chr(10).join(names).encode()):020d}{w.combined_crc:020d}"
    w.write_record(f"{archive}/.data/serialization_id", ident.encode("ascii"))
    w.finish()


def archive_name(path: str) -> str:
    """torch's archive folder: the file name up to its last '.' ('consolidated.00.pth' -> 'consolidated.00')."""
    import os

    base = os.path.basename(path)
    stem = base[: base.rfind(".")] if "." in base else base
    return stem or "archive"
