"""One PyTorch checkpoint file -> its unpickled object (inert data) with every storage located, and
the IR tensors of its views.

Containers (FORMATS.md P1.3):

* zip (torch >= 1.6): exactly one ``<folder>/data.pkl`` (any folder name), every member under that
  folder, storages at ``<folder>/data/<key>`` looked up by exact name, each of exactly
  numel x itemsize bytes.  A ``constants.pkl`` or ``code/`` member makes it a TorchScript archive,
  whose ``__torch__.*`` objects become inert records.  ``byteorder`` must say ``little``.
* legacy (``_use_new_zipfile_serialization=False``): five pickles (magic number 0x1950a86a20f9469cfc6c,
  protocol 1001, sys_info, the object, the storage keys), then per key ``int64 numel`` + raw bytes.
  Every storage's declared size is checked against the bytes left in the file before anything else.
* the legacy tar format (torch < 0.4) is refused.

Nothing is read beyond the directory and the pickle: STORED storages are mapped when a tensor is
read; DEFLATED storages are inflated on first use, under ``MAX_INFLATED_STORAGE_BYTES`` per file.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from mconv.plugins import (
    FileCache,
    FileSlice,
    FormatError,
    InMemory,
    MappedFile,
    StridedView,
    Tensor,
    UnsupportedError,
    check_shape,
    get_dtype,
    numel,
)

from ._torch_pickle import (
    MAX_PICKLE_BYTES,
    PickledOrderedDict,
    Record,
    StorageRef,
    StorageSpec,
    TensorRef,
    Unpickler,
)
from ._torch_zip import STORED, Member, ZipDirectory, read_directory, read_member

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
#: protocol 2 or 3, LONG1 of 10 bytes: the legacy format's first pickle
LEGACY_HEADS = tuple(bytes([0x80, p, 0x8A, 0x0A]) + LEGACY_MAGIC_NUMBER.to_bytes(10, "little") for p in (2, 3))
ZIP_MAGIC = b"PK\x03\x04"
#: the legacy tar format's members (Python tarfile, ustar magic at offset 257)
TAR_MEMBERS = (b"sys_info", b"pickle", b"tensors", b"storages")

MAX_INFLATED_STORAGE_BYTES = 1 << 30
MAX_WALK_DEPTH = 64
MAX_WALK_NODES = 500_000


def container_kind(head: bytes) -> Optional[str]:
    """'zip', 'legacy', 'tar' or None from a file's first 512 bytes."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_HEADS):
        return "legacy"
    if len(head) >= 262 and head[257:262] == b"ustar" and head[:100].rstrip(b"\0") in TAR_MEMBERS:
        return "tar"
    return None


@dataclass
class Loaded:
    path: str
    obj: Any
    container: str                                  # "zip" | "legacy" | "torchscript"
    storages: dict[str, StorageRef] = field(default_factory=dict)
    #: zip: the folder prefix of the records ("archive/")
    prefix: str = ""


# ==================================================================================================
# containers
# ==================================================================================================

def load(path: str) -> Loaded:
    """Unpickle one checkpoint file; storages are located, not read."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            kind = container_kind(head)
            if kind == "zip":
                return _load_zip(f, path)
            if kind == "legacy":
                return _load_legacy(f, path)
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=path)
    if kind == "tar":
        raise UnsupportedError("the legacy tar format of torch < 0.4 is not supported (torch refuses it too "
                               "with weights_only=True); re-save it with torch.save", path=path)
    raise FormatError("not a PyTorch checkpoint: neither a zip archive nor the legacy pickle format", path=path)


def _archive_prefix(d: ZipDirectory, path: str) -> str:
    pkls = [n for n in d.members if n.endswith("/data.pkl")]
    if len(pkls) != 1:
        found = ", ".join(repr(n) for n in pkls[:4]) if pkls else "none"
        raise FormatError(f"archive must hold exactly one <folder>/data.pkl (found {found})", path=path)
    prefix = pkls[0][: -len("data.pkl")]
    for name in d.members:
        if not name.startswith(prefix):
            raise FormatError(f"member is outside the archive folder {prefix!r}", path=path, member=name)
    return prefix


def _load_zip(f: Any, path: str) -> Loaded:
    d = read_directory(f, path)
    prefix = _archive_prefix(d, path)
    torchscript = (prefix + "constants.pkl") in d.members or any(n.startswith(prefix + "code/") for n in d.members)
    order = d.get(prefix + "byteorder")
    if order is not None:
        value = read_member(f, order, path, 16)
        if value == b"big":
            raise UnsupportedError("big-endian checkpoints are not supported", path=path, member=order.name)
        if value != b"little":
            raise FormatError(f"byteorder record says {value[:16]!r}, not 'little' or 'big'", path=path,
                              member=order.name)
    storages: dict[str, StorageRef] = {}
    inflated = [0]

    def load_storage(spec: StorageSpec) -> StorageRef:
        name = prefix + "data/" + spec.key
        m = d.get(name)
        if m is None:
            raise FormatError(f"storage record {name!r} is not in the archive")
        ref = StorageRef(spec.key, spec.storage_type.dtype, spec.numel)
        prev = storages.get(spec.key)
        if prev is not None:
            if (prev.dtype, prev.numel) != (ref.dtype, ref.numel):
                raise FormatError(f"storage {spec.key!r} is declared twice with different types or sizes")
            return prev
        if ref.nbytes != m.size:
            raise FormatError(f"storage {spec.key!r} declares {spec.numel} {ref.dtype or 'byte'} elements "
                              f"({ref.nbytes} bytes) but its record holds {m.size} bytes")
        if m.method != STORED:
            inflated[0] += m.size
            if inflated[0] > MAX_INFLATED_STORAGE_BYTES:
                raise FormatError(f"compressed storages exceed {MAX_INFLATED_STORAGE_BYTES} bytes in total; "
                                  "re-save the checkpoint uncompressed (torch.save stores them uncompressed)")
        ref.source = m
        storages[spec.key] = ref
        return ref

    pkl = prefix + "data.pkl"
    try:
        data = read_member(f, d.members[pkl], path, MAX_PICKLE_BYTES)
        obj = Unpickler(load_storage, torchscript=torchscript).loads(data)
    except (FormatError, UnsupportedError) as e:
        raise e.at(path=path, member=pkl)
    return Loaded(path, obj, "torchscript" if torchscript else "zip", storages, prefix)


def _no_storage(spec: StorageSpec) -> StorageRef:
    raise FormatError("persistent id outside the object pickle")


def _load_legacy(f: Any, path: str) -> Loaded:
    size = os.fstat(f.fileno()).st_size
    roots: dict[str, StorageRef] = {}
    views: dict[str, StorageRef] = {}

    def load_storage(spec: StorageSpec) -> StorageRef:
        ref = StorageRef(spec.key, spec.storage_type.dtype, spec.numel)
        if ref.dtype is None:
            raise FormatError("an untyped storage in the legacy format")
        root = roots.setdefault(spec.key, ref)
        if (root.dtype, root.numel) != (ref.dtype, ref.numel):
            raise FormatError(f"storage {spec.key!r} is declared twice with different types or sizes")
        if spec.view is None:
            return root
        view_key, offset, count = spec.view
        if offset + count > root.numel:
            raise FormatError(f"storage view {view_key!r} ({count} elements at {offset}) runs past storage "
                              f"{spec.key!r} of {root.numel} elements")
        view = StorageRef(view_key, root.dtype, count, ("view", root, offset * get_dtype(root.dtype).type_size))
        prev = views.setdefault(view_key, view)
        if prev.source[1] is not root or prev.numel != count or prev.source[2] != view.source[2]:
            raise FormatError(f"storage view {view_key!r} is declared twice differently")
        return prev

    pos = 0
    try:
        magic, pos = Unpickler(_no_storage, legacy=True).load_from(f, pos, size)
        if type(magic) is not int or magic != LEGACY_MAGIC_NUMBER:
            raise FormatError("legacy checkpoint magic number is wrong", offset=0)
        at = pos
        proto, pos = Unpickler(_no_storage, legacy=True).load_from(f, pos, size)
        if type(proto) is not int or proto != LEGACY_PROTOCOL_VERSION:
            what = proto if type(proto) is int else f"a {type(proto).__name__}"
            raise FormatError(f"legacy protocol version is {what}, not {LEGACY_PROTOCOL_VERSION}", offset=at)
        at = pos
        sys_info, pos = Unpickler(_no_storage, legacy=True).load_from(f, pos, size)
        if type(sys_info) is not dict:
            raise FormatError("legacy sys_info is not a dict", offset=at)
        if sys_info.get("little_endian") is False:
            raise UnsupportedError("big-endian checkpoints are not supported", offset=at)
        obj, pos = Unpickler(load_storage, legacy=True).load_from(f, pos, size)
        at = pos
        keys, pos = Unpickler(_no_storage, legacy=True).load_from(f, pos, size)
        if type(keys) is not list or not all(type(k) is str for k in keys):
            raise FormatError("legacy storage key list is not a list of strings", offset=at)
    except (FormatError, UnsupportedError) as e:
        raise e.at(path=path)
    if len(set(keys)) != len(keys):
        raise FormatError("legacy storage key list names a storage twice", path=path, offset=at)
    for key in keys:
        ref = roots.get(key)
        if ref is None:
            raise FormatError(f"legacy storage key {key!r} is not used by the pickle", path=path, offset=at)
        if pos + 8 > size:
            raise FormatError(f"storage {key!r}: its element count runs past the end of the file", path=path,
                              offset=pos)
        f.seek(pos)
        (count,) = struct.unpack("<q", f.read(8))
        if count != ref.numel:
            raise FormatError(f"storage {key!r}: the file says {count} elements, the pickle {ref.numel}",
                              path=path, offset=pos)
        if ref.nbytes > size - pos - 8:
            raise FormatError(f"storage {key!r} declares {ref.nbytes} bytes but only {size - pos - 8} remain "
                              "in the file", path=path, offset=pos)
        ref.source = pos + 8
        pos += 8 + ref.nbytes
    listed = set(keys)
    missing = [k for k in roots if k not in listed]
    if missing:
        raise FormatError(f"storage {missing[0]!r} is used by the pickle but has no data", path=path)
    return Loaded(path, obj, "legacy", {**roots, **views})


# ==================================================================================================
# walking the object
# ==================================================================================================

def walk(obj: Any, prefix: str = "", path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, leaf) for every leaf under dicts, records, lists and tuples; refuses cycles,
    nesting deeper than ``MAX_WALK_DEPTH`` and more than ``MAX_WALK_NODES`` nodes (a memo DAG
    would otherwise expand exponentially)."""
    visits = [0]
    on_path: set[int] = set()

    def go(x: Any, name: str, depth: int) -> Iterator[tuple[str, Any]]:
        visits[0] += 1
        if visits[0] > MAX_WALK_NODES:
            raise FormatError(f"object has more than {MAX_WALK_NODES} nodes", path=path)
        if type(x) is Record:
            items: Any = (x.state or {}).items()
        elif type(x) in (dict, PickledOrderedDict):
            items = x.items()
        elif type(x) in (list, tuple):
            items = enumerate(x)
        else:
            yield name, x
            return
        if depth >= MAX_WALK_DEPTH:
            raise FormatError(f"object nests deeper than {MAX_WALK_DEPTH} levels at {name[:200]!r}", path=path)
        if id(x) in on_path:
            raise FormatError(f"object contains itself at {name[:200]!r}", path=path)
        on_path.add(id(x))
        for k, v in items:
            yield from go(v, f"{name}.{k}" if name else str(k), depth + 1)
        on_path.discard(id(x))

    yield from go(obj, prefix, 0)


# ==================================================================================================
# IR tensors
# ==================================================================================================

def _contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(strides)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


class _Inflated:
    """A DEFLATED storage member, inflated on first use and kept until its tensor is written
    (``release``: tensors sharing the storage inflate it again)."""

    def __init__(self, path: str, member: Member) -> None:
        self.path = path
        self.member = member
        self.data: Optional[np.ndarray] = None
        self.lock = threading.Lock()

    def __call__(self) -> np.ndarray:
        with self.lock:
            if self.data is None:
                with open(self.path, "rb") as f:
                    self.data = np.frombuffer(read_member(f, self.member, self.path, MAX_INFLATED_STORAGE_BYTES),
                                              dtype=np.uint8)
            return self.data

    def release(self) -> None:
        with self.lock:
            self.data = None


def _root(ref: StorageRef) -> tuple[StorageRef, int]:
    """The storage holding the bytes and the byte offset of ``ref`` in it (legacy views)."""
    if isinstance(ref.source, tuple) and ref.source[0] == "view":
        return ref.source[1], ref.source[2]
    return ref, 0


class TensorFactory:
    """Builds IR tensors over one loaded file; sources of one storage share one mapping/inflation."""

    def __init__(self, loaded: Loaded, cache: FileCache) -> None:
        self.loaded = loaded
        self.cache = cache
        self._inflated: dict[str, _Inflated] = {}

    def _mapped(self) -> MappedFile:
        return self.cache.get(self.loaded.path)

    def _located(self, ref: StorageRef) -> tuple[Optional[int], Callable[[], np.ndarray], Optional[Callable[[], None]]]:
        """(file offset of the storage's bytes when they are stored uncompressed, a function giving
        the bytes, one releasing their mapped pages)."""
        root, off = _root(ref)
        src = root.source
        if isinstance(src, Member) and src.method != STORED:
            inflated = self._inflated.setdefault(src.name, _Inflated(self.loaded.path, src))
            return None, lambda: inflated()[off:off + ref.nbytes], inflated.release
        start = (src.data_offset if isinstance(src, Member) else int(src)) + off
        mapped = self._mapped()
        return start, lambda: mapped.view(start, ref.nbytes), lambda: mapped.release(start, ref.nbytes)

    def tensor(self, name: str, t: TensorRef) -> Tensor:
        dt = get_dtype(t.dtype)
        isz = dt.type_size
        shape = t.shape
        try:
            check_shape(shape, dt)   # e.g. [0, 2**62, 2**62]: no element, yet no array of its rows exists
        except FormatError as e:
            raise e.at(path=self.loaded.path, tensor=name)
        rows = 1
        for d in shape[:-1]:
            rows *= d
        row_bytes = dt.row_bytes(shape[-1] if shape else 1)
        if numel(shape) == 0:
            return Tensor(name, shape, dt, InMemory(np.zeros((rows, row_bytes), np.uint8)))
        start, data, release = self._located(t.storage)
        if start is not None and _contiguous(shape, t.strides):
            return Tensor(name, shape, dt, FileSlice(self._mapped(), start + t.offset * isz, rows, row_bytes))
        return Tensor(name, shape, dt, StridedView(data, isz, t.offset, shape, t.strides, t.storage.nbytes // isz,
                                                   release))
