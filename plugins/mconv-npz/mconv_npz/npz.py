"""mconv-npz: the whole mconv IR in a NumPy ``.npz`` archive (an example third-party plugin).

Archive layout (a ZIP, every member STORED so a reader can memory-map it):

* ``__mconv__.json`` — ``{"mconv_npz": 1, "arch", "hparams", "tokenizer", "metadata", "history",
  "tensors": {name: {"dtype", "shape"[, "block_size"]}}}``
* ``<tensor name>.npy`` — one member per tensor, in model order.  Plain dtypes are stored as
  themselves; numpy has no bfloat16/float8, so bf16 is stored as ``<u2`` bits and f8 as ``u1`` bits;
  block-quantized tensors are ``u1`` arrays of shape (rows, row_bytes).  The JSON tags say which.

An ``.npz`` without ``__mconv__.json`` (``np.savez`` of a state dict) is read as a generic
container: names are detected like any other, hparams come from sidecars and shapes.

Only ``mconv.plugins`` is imported: this plugin proves that the stable API is enough.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from typing import Any, Callable, Optional

import numpy as np

from mconv.plugins import (
    MAX_TENSORS,
    DType,
    FileSlice,
    Format,
    FormatError,
    InMemory,
    Model,
    ReadContext,
    Step,
    StridedView,
    Tensor,
    UnsupportedError,
    WriteContext,
    check_shape,
    get_dtype,
    jsonable,
    read_sentencepiece_file,
    resolve,
    sidecar_hparams,
    table,
    tokenizer_from_json,
    tokenizer_to_json,
)

META_MEMBER = "__mconv__.json"
FORMAT_VERSION = 1
#: limits: members in one archive (a tensor each, and __mconv__.json) and the bytes of its central
#: directory (both checked on the end record before zipfile parses it into an object per entry),
#: bytes of __mconv__.json, bytes of an npy header, compressed members' decompressed size in all
#: (compressed members are the only ones read into memory)
MAX_MEMBERS = MAX_TENSORS + 1
MAX_CENTRAL_DIRECTORY_BYTES = 64 << 20
MAX_META_BYTES = 256 << 20
MAX_NPY_HEADER = 0xFFFF
MAX_INFLATE_BYTES = 1 << 30
#: fixed timestamp so the same model always gives the same bytes
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

#: numpy dtype (little-endian or byte-order free) <-> mconv dtype, for untagged arrays
NUMPY_TO_MCONV = {
    "<f8": "f64", "<f4": "f32", "<f2": "f16", "<i8": "i64", "<i4": "i32", "<i2": "i16", "|i1": "i8",
    "<u8": "u64", "<u4": "u32", "<u2": "u16", "|u1": "u8", "|b1": "bool",
}
#: mconv dtypes numpy cannot represent, stored as raw bits of this numpy type
RAW_BITS = {"bf16": "<u2", "f8_e4m3": "|u1", "f8_e5m2": "|u1"}


def _npy_descr(dt: DType) -> str:
    if dt.is_quantized:
        return "|u1"
    if dt.name in RAW_BITS:
        return RAW_BITS[dt.name]
    return {v: k for k, v in NUMPY_TO_MCONV.items()}[dt.name]


def _npy_shape(t: Tensor) -> tuple[int, ...]:
    return (t.n_rows, t.row_bytes) if t.dtype.is_quantized else tuple(t.shape)


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """NPY format 1.0 header: magic, version, u16 length, a dict literal padded with spaces to a
    64-byte boundary, ending in a newline."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    pad = -(10 + len(text) + 1) % 64
    body = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


# ==================================================================================================
# writing
# ==================================================================================================

def _zipinfo(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.file_size = size
    return info


def _dtype_tag(dt: DType) -> dict[str, Any]:
    tag: dict[str, Any] = {"dtype": dt.name}
    if get_dtype(dt.name).block_size != dt.block_size:
        tag["block_size"] = dt.block_size
    return tag


def write_npz(model: Model, path: str, ctx: WriteContext) -> None:
    for t in model.tensors.values():
        if t.name.startswith("__mconv__"):
            raise UnsupportedError("tensor names starting with __mconv__ are reserved", tensor=t.name)
    meta = {
        "mconv_npz": FORMAT_VERSION,
        "arch": model.arch,
        "hparams": model.hparams,
        "tokenizer": tokenizer_to_json(model.tokenizer) if model.tokenizer is not None else None,
        "metadata": jsonable(model.metadata),
        "history": [[s.kind, s.detail] for s in model.history],
        "tensors": {t.name: {**_dtype_tag(t.dtype), "shape": list(t.shape)} for t in model.tensors.values()},
    }
    blob = json.dumps(meta, sort_keys=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(_zipinfo(META_MEMBER, len(blob)), blob)
        for t in model.tensors.values():
            header = _npy_header(_npy_descr(t.dtype), _npy_shape(t))
            info = _zipinfo(f"{t.name}.npy", len(header) + t.nbytes)
            with zf.open(info, "w", force_zip64=info.file_size >= 0x7FFFFFFF) as member:
                member.write(header)
                for chunk in t.iter_chunks():
                    member.write(memoryview(chunk).cast("B"))
                    ctx.progress(chunk.nbytes)


# ==================================================================================================
# reading
# ==================================================================================================

class _Member:
    """One npy member: its header and where its array bytes are."""

    def __init__(self, name: str, descr: str, shape: tuple[int, ...], fortran: bool, source: Callable[[int, int], Any]):
        self.name, self.descr, self.shape, self.fortran, self.source = name, descr, shape, fortran, source


def _parse_npy_header(prefix: bytes, where: str) -> tuple[str, tuple[int, ...], bool, int]:
    """(descr, shape, fortran_order, header length) of an npy blob; never unpickles."""
    if prefix[:6] != b"\x93NUMPY" or len(prefix) < 10:
        raise FormatError("member is not an .npy array (bad magic)", member=where)
    major = prefix[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", prefix[8:10])
        start = 10
    elif major in (2, 3):
        if len(prefix) < 12:
            raise FormatError("truncated .npy header", member=where)
        (hlen,) = struct.unpack("<I", prefix[8:12])
        start = 12
    else:
        raise FormatError(f"unsupported .npy version {major}", member=where)
    if hlen > MAX_NPY_HEADER or start + hlen > len(prefix):
        raise FormatError(f".npy header of {hlen} bytes is truncated or over {MAX_NPY_HEADER} bytes", member=where)
    try:
        # numpy's own parser (ast.literal_eval of the dict, never pickle), fed as a version 1.0 header
        # (it expects the stream just past the 8-byte magic and version).  Hostile text makes it raise
        # more than ValueError (tokenize.TokenError, TypeError from sorting mixed keys...): any
        # exception of the parser is a bad header.
        header = np.lib.format.read_array_header_1_0(io.BytesIO(struct.pack("<H", hlen) + prefix[start:start + hlen]))
    except Exception as e:  # noqa: BLE001 - see above
        raise FormatError(f"bad .npy header: {e}", member=where)
    shape, fortran, dtype = header
    if dtype.hasobject:
        raise FormatError("object arrays are refused (allow_pickle=False)", member=where)
    descr = dtype.str if dtype.fields is None else None
    if descr is None:
        raise FormatError(f"structured dtype {dtype} is not a tensor", member=where)
    return descr, tuple(int(d) for d in shape), bool(fortran), start + hlen


def _local_data_offset(mm: Any, info: zipfile.ZipInfo, size: int, name: str) -> int:
    off = info.header_offset
    if off < 0 or off + 30 > size:
        raise FormatError("local header past the end of the file", member=name, offset=off)
    sig, = struct.unpack_from("<I", mm, off)
    if sig != 0x04034B50:
        raise FormatError("bad local header signature", member=name, offset=off)
    name_len, extra_len = struct.unpack_from("<HH", mm, off + 26)
    local_name = bytes(mm[off + 30:off + 30 + name_len])
    if local_name != info.orig_filename.encode("utf-8") and local_name != info.orig_filename.encode("cp437", "replace"):
        raise FormatError(f"local header names {local_name!r}, central directory {info.orig_filename!r}",
                          member=name, offset=off)
    start = off + 30 + name_len + extra_len
    if start + info.file_size > size:
        raise FormatError(f"member data ({info.file_size} bytes at offset {start}) runs past the end of the file",
                          member=name, offset=start)
    return start


def _check_directory(path: str) -> None:
    """Refuse, from the end record alone, a central directory too large to hand to zipfile (which
    builds an object per entry): more than MAX_MEMBERS entries or MAX_CENTRAL_DIRECTORY_BYTES bytes.
    A missing end record is left for zipfile to report."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + 22 > len(tail):
            return
        entries, cd_size = struct.unpack_from("<HI", tail, at + 10)
        loc = at - 20
        if loc >= 0 and tail[loc:loc + 4] == b"PK\x06\x07":   # zip64: the counts are in the zip64 end record
            (z64,) = struct.unpack_from("<Q", tail, loc + 8)
            if z64 + 56 <= size:
                f.seek(z64)
                rec = f.read(56)
                if rec[:4] == b"PK\x06\x06":
                    entries, cd_size = struct.unpack_from("<QQ", rec, 32)
    if entries > MAX_MEMBERS:
        raise FormatError(f"{entries} members exceed the limit of {MAX_MEMBERS}")
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise FormatError(f"central directory of {cd_size} bytes exceeds the {MAX_CENTRAL_DIRECTORY_BYTES}-byte limit")


def _members(path: str, ctx: ReadContext) -> tuple[dict[str, _Member], Optional[bytes]]:
    _check_directory(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as e:
        # NotImplementedError: an entry needing a zip version or feature zipfile lacks
        raise FormatError(f"not a readable zip archive: {e}")
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:   # more entries than the end record said
            raise FormatError(f"{len(infos)} members exceed the limit of {MAX_MEMBERS}")
        seen: set[str] = set()
        for info in infos:
            if info.filename in seen:
                raise FormatError("duplicate member", member=info.filename)
            seen.add(info.filename)
        # compressed members are inflated into memory: bound their declared sizes in all, before any
        # is read (a member inflating past its declared size is cut there and fails its CRC)
        inflated = sum(i.file_size for i in infos
                       if i.compress_type != zipfile.ZIP_STORED and i.filename.endswith(".npy"))
        if inflated > MAX_INFLATE_BYTES:
            raise FormatError(f"compressed members declare {inflated} bytes in all; the limit is {MAX_INFLATE_BYTES}")
        mapped = ctx.cache.get(path)
        mm = mapped.buffer
        members: dict[str, _Member] = {}
        meta_blob: Optional[bytes] = None
        for info in infos:
            name = info.filename
            if name == META_MEMBER:
                if info.file_size > MAX_META_BYTES:
                    raise FormatError(f"{info.file_size} bytes exceed the {MAX_META_BYTES}-byte limit", member=name)
                meta_blob = _read_member(zf, info, MAX_META_BYTES)
                continue
            if not name.endswith(".npy"):
                continue
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise FormatError("stored member with different compressed and plain sizes", member=name)
                start = _local_data_offset(mm, info, mapped.size, name)
                prefix = bytes(mm[start:start + min(info.file_size, MAX_NPY_HEADER + 12)])
                descr, shape, fortran, hlen = _parse_npy_header(prefix, name)
                data_start, data_len = start + hlen, info.file_size - hlen

                def source(rows: int, row_bytes: int, _s: int = data_start, _n: int = data_len, _m: str = name) -> Any:
                    if rows * row_bytes != _n:
                        raise FormatError(f"array data is {_n} bytes, its header implies {rows * row_bytes}", member=_m)
                    return FileSlice(mapped, _s, rows, row_bytes)
            else:
                blob = _read_member(zf, info, MAX_INFLATE_BYTES)
                descr, shape, fortran, hlen = _parse_npy_header(blob[:MAX_NPY_HEADER + 12], name)
                data = np.frombuffer(blob, dtype=np.uint8, offset=hlen)

                def source(rows: int, row_bytes: int, _d: np.ndarray = data, _m: str = name) -> Any:
                    if rows * row_bytes != _d.size:
                        raise FormatError(f"array data is {_d.size} bytes, its header implies {rows * row_bytes}",
                                          member=_m)
                    return InMemory(_d.reshape(rows, row_bytes))
            members[name[:-4]] = _Member(name, descr, shape, fortran, source)
        return members, meta_blob


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """Read a member, decompressing no more than ``cap`` bytes whatever its header claims."""
    try:
        with zf.open(info) as f:
            data = f.read(cap + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise FormatError(f"cannot read member: {e}", member=info.filename)
    except Exception as e:  # zlib.error and friends from corrupt deflate streams
        raise FormatError(f"cannot decompress member: {type(e).__name__}: {e}", member=info.filename)
    if len(data) > cap:
        raise FormatError(f"member inflates past the {cap}-byte limit", member=info.filename)
    return data


def _tensor(name: str, m: _Member, tag: Optional[dict[str, Any]]) -> Tensor:
    if tag is None:
        little = "<" + m.descr[1:] if m.descr[0] == ">" else m.descr
        if little not in NUMPY_TO_MCONV:
            raise FormatError(f"numpy dtype {m.descr} has no mconv equivalent", member=m.name)
        dt = get_dtype(NUMPY_TO_MCONV[little])
        big = m.descr[0] == ">"
        shape = m.shape
    else:
        dt = _dtype_from_tag(tag, m.name)
        shape = tuple(tag["shape"])
        try:
            check_shape(shape, dt)
        except FormatError as e:
            raise e.at(member=META_MEMBER, tensor=name)
        expected = (_npy_descr(dt), (_rows(shape), dt.row_bytes(_cols(shape))) if dt.is_quantized else shape)
        if (m.descr, m.shape) != expected:
            raise FormatError(f"array is {m.descr} {m.shape} but __mconv__.json says {dt.name} {shape}, stored as "
                              f"{expected[0]} {expected[1]}", member=m.name)
        big = False
    if tag is None:
        try:
            check_shape(shape, dt)
        except FormatError as e:
            raise e.at(member=m.name)
    rows, cols = _rows(shape), _cols(shape)
    row_bytes = dt.row_bytes(cols)
    if m.fortran and len(shape) > 1:
        base = m.source(1, rows * row_bytes)
        strides, acc = [], 1
        for d in shape:
            strides.append(acc)
            acc *= d
        src: Any = StridedView(lambda: base.read_rows(0, 1).reshape(-1), dt.type_size, 0, shape, strides, rows * cols)
    else:
        src = m.source(rows, row_bytes)
    t = Tensor(name, shape, dt, src)
    if big:
        return _byteswapped(t)
    return t


def _byteswapped(t: Tensor) -> Tensor:
    from mconv.plugins import Derived

    storage = t.dtype.storage

    def rows(start: int, stop: int) -> np.ndarray:
        raw = t.read_rows(start, stop)
        return raw.view(storage.newbyteorder(">")).astype(storage).view(np.uint8).reshape(raw.shape)

    return Tensor(t.name, t.shape, t.dtype, Derived("byteswap", [t], rows))


def _rows(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape[:-1]:
        n *= d
    return n


def _cols(shape: tuple[int, ...]) -> int:
    return shape[-1] if shape else 1


def _dtype_from_tag(tag: dict[str, Any], where: str) -> DType:
    try:
        dt = get_dtype(str(tag["dtype"]))
    except (KeyError, UnsupportedError) as e:
        raise FormatError(f"bad dtype tag {tag.get('dtype')!r}: {e}", member=where)
    block = tag.get("block_size")
    if block is not None and block != dt.block_size:
        variant = getattr(dt, "variant", None)
        if variant is None or not isinstance(block, int) or block <= 0:
            raise FormatError(f"dtype {dt.name} has no variant with block size {block!r}", member=where)
        dt = variant(block)
    return dt


def _check_meta(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("mconv_npz") != FORMAT_VERSION:
        raise FormatError(f"{META_MEMBER} is not an mconv-npz v{FORMAT_VERSION} description", member=META_MEMBER)
    tensors = meta.get("tensors")
    if not isinstance(tensors, dict):
        raise FormatError("tensors must be an object", member=META_MEMBER)
    for name, tag in tensors.items():
        shape = tag.get("shape") if isinstance(tag, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                 for d in shape):
            raise FormatError(f"tensor {name!r}: shape must be a list of non-negative integers", member=META_MEMBER)
    for key in ("hparams", "metadata"):
        if not isinstance(meta.get(key, {}), dict):
            raise FormatError(f"{key} must be an object", member=META_MEMBER)
    hist = meta.get("history", [])
    if not isinstance(hist, list) or not all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                                             for h in hist):
        raise FormatError("history must be a list of [kind, detail] pairs", member=META_MEMBER)
    if not isinstance(meta.get("arch", "llama"), str):
        raise FormatError("arch must be a string", member=META_MEMBER)
    return meta


def read_npz(path: str, ctx: ReadContext) -> Model:
    members, meta_blob = _members(path, ctx)
    directory = os.path.dirname(os.path.abspath(path))
    meta: Optional[dict[str, Any]] = None
    if meta_blob is not None:
        try:
            meta = _check_meta(json.loads(meta_blob.decode("utf-8")))
        except RecursionError:
            raise FormatError("not valid JSON: it nests too deeply", member=META_MEMBER)
        except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, an integer of over 4300 digits
            raise FormatError(f"not valid JSON: {e}", member=META_MEMBER)
    arch = meta.get("arch", "llama") if meta else "llama"
    names = table(arch)
    tensors: dict[str, Tensor] = {}
    if meta is not None:
        tags = meta["tensors"]
        missing = [n for n in tags if n not in members]
        if missing:
            raise FormatError(f"tensor {missing[0]!r} listed in {META_MEMBER} has no member")
        extra = [n for n in members if n not in tags]
        if extra:
            raise FormatError(f"member {extra[0]}.npy is not listed in {META_MEMBER}")
        for name, tag in tags.items():
            tensors[name] = _tensor(name, members[name], tag)
        convention = "gguf"
    else:
        convention = ctx.names or names.detect_convention(members, ("meta", "hf", "gguf"))[0]
        for name, m in members.items():
            if names.is_ignored(name, convention):
                continue
            canonical = names.to_canonical(name, convention) or name
            if canonical in tensors:
                raise FormatError(f"two arrays map to {canonical!r}", member=m.name)
            tensors[canonical] = _tensor(canonical, m, None)

    model = Model(arch=arch, hparams={}, tensors=tensors, format="npz", files=(os.path.abspath(path),),
                  cache=ctx.cache)
    layers = []
    if meta is not None:
        model.history.extend(Step(kind, detail) for kind, detail in meta.get("history", []))
        layers.append(("npz metadata", names.canonical_hparams(meta.get("hparams", {}), META_MEMBER)))
        model.metadata = dict(meta.get("metadata", {}))
        if meta.get("tokenizer") is not None:
            try:
                model.tokenizer = tokenizer_from_json(meta["tokenizer"])
            except FormatError as e:
                raise e.at(member=META_MEMBER)
    else:
        layers.extend(sidecar_hparams(directory, names))
        sp = os.path.join(directory, "tokenizer.model")
        if os.path.isfile(sp):
            model.tokenizer = read_sentencepiece_file(sp)
    resolve(model, names, layers, ctx.hparams)
    if convention != "gguf":
        for name, t in list(tensors.items()):
            tensors[name] = names.to_canonical_layout(t, convention, model.hparams)
        model.history.append(Step("names", f"{convention} naming convention"))
    return model


class NpzFormat(Format):
    name = "npz"
    extensions = (".npz",)
    description = "NumPy .npz archive carrying the whole mconv IR (example plugin)"
    dtypes = frozenset(["f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u64", "u32", "u16", "u8", "bool",
                        "f8_e4m3", "f8_e5m2", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k",
                        "q5_k", "q6_k", "l2c_q8"])

    def sniff(self, path: str, head: bytes, size: int, is_dir: bool) -> float:
        if is_dir or not head.startswith(b"PK\x03\x04"):
            return 0.0
        try:
            _check_directory(path)   # any zip is sniffed here (a .pth too): bound zipfile's work first
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, FormatError):
            return 0.0
        if META_MEMBER in names:
            return 1.0
        return 0.8 if names and all(n.endswith(".npy") for n in names) else 0.0

    def read(self, path: str, ctx: ReadContext) -> Model:
        return read_npz(path, ctx)

    def write(self, model: Model, path: str, ctx: WriteContext) -> None:
        write_npz(model, path, ctx)
