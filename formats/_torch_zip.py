"""The ZIP container of ``torch.save`` files: a validating reader and a writer in torch's layout.

Reader.  The central directory is parsed here (not by :mod:`zipfile`, which silently accepts
duplicates, prepended data and overlapping entries).  Refused: a missing or ambiguous end record,
multi-disk archives, more than ``MAX_ENTRIES`` entries, a central directory that does not end where
the end record starts, duplicate names, names that are not plain relative paths, encryption,
methods other than STORED (0) and DEFLATED (8), a local header that disagrees with its central
entry (name bytes, method, flags, and crc/sizes when no data descriptor follows), data running into
the central directory, and entries overlapping each other.  A member is read whole only under a
byte cap, inflating in bounded pieces and checking the declared size and CRC-32; STORED members are
instead located (data offset = local header offset + 30 + name length + extra length, the local
header's own lengths, as torch's ``getRecordOffset``) so their bytes can be mapped without a copy.

Writer.  ``PyTorchStreamWriter`` (miniz) layout, reproduced byte for byte for archives under 4 GiB:
every record STORED with general-purpose flags 0x0808 (data descriptor follows, UTF-8 name),
version 0, DOS time and date 0, crc and sizes 0 in the local header, one extra field ``"FB" u16 n``
followed by n bytes ``Z`` that puts the data at a multiple of 64, then the data, then a 16-byte
data descriptor ``PK\\7\\8 crc csize usize``.  Central entries carry no extra field.  The end is a
zip64 end record (made-by 0x031e, needed 45), its locator, and the classic end record.  Entries at or
beyond 4 GiB (offset or size) get zip64 fields: local sizes 0xFFFFFFFF with a zip64 extra holding
both sizes and a 24-byte descriptor when the size needs it, and a central zip64 extra holding every
field that does not fit in 32 bits.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Optional

from mconv.plugins import FormatError, MconvError

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
EOCD_SIG = b"PK\x05\x06"
ZIP64_EOCD_SIG = b"PK\x06\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
DESCRIPTOR_SIG = b"PK\x07\x08"

LOCAL_SIZE = 30
CENTRAL_SIZE = 46
EOCD_SIZE = 22
ZIP64_EOCD_SIZE = 56
ZIP64_LOCATOR_SIZE = 20
U32_MAX = 0xFFFFFFFF
U16_MAX = 0xFFFF

STORED, DEFLATED = 0, 8
FLAG_ENCRYPTED = 0x0001
FLAG_DESCRIPTOR = 0x0008
FLAG_UTF8 = 0x0800
#: local header flag bits that must agree with the central directory
FLAGS_CHECKED = FLAG_ENCRYPTED | FLAG_DESCRIPTOR | FLAG_UTF8

#: limits of the reader (a real checkpoint has a few thousand entries at most)
MAX_ENTRIES = 200_000
MAX_CENTRAL_DIRECTORY_BYTES = 64 << 20
#: inflate this much compressed input at a time
INFLATE_STEP = 1 << 20

#: torch's kFieldAlignment: record data starts at a multiple of this
ALIGNMENT = 64


@dataclass(frozen=True)
class Member:
    name: str
    method: int
    flags: int
    crc: int
    comp_size: int
    size: int
    header_offset: int
    data_offset: int


@dataclass(frozen=True)
class ZipDirectory:
    path: str
    file_size: int
    #: members in central-directory order, by exact name
    members: dict[str, Member]

    def get(self, name: str) -> Optional[Member]:
        """Exact lookup: no path normalisation ('a/../b' is just a name that is not there)."""
        return self.members.get(name)


def _err(msg: str, path: str, member: Optional[str] = None, offset: Optional[int] = None) -> FormatError:
    return FormatError(msg, path=path, member=member, offset=offset)


def _pread(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


# ==================================================================================================
# reading
# ==================================================================================================

def _find_eocd(f: BinaryIO, size: int, path: str) -> tuple[int, bytes]:
    """Position and bytes of the end record: the last signature whose comment length reaches
    exactly to the end of the file."""
    if size < EOCD_SIZE:
        raise _err(f"file of {size} bytes is too short for a zip end record", path)
    span = min(size, EOCD_SIZE + U16_MAX)
    tail = _pread(f, size - span, span)
    pos = tail.rfind(EOCD_SIG)
    while pos >= 0:
        if pos + EOCD_SIZE <= len(tail):
            (comment_len,) = struct.unpack_from("<H", tail, pos + 20)
            if pos + EOCD_SIZE + comment_len == len(tail):
                return size - span + pos, tail[pos:pos + EOCD_SIZE]
        pos = tail.rfind(EOCD_SIG, 0, pos)
    raise _err("no zip end-of-central-directory record", path)


def _central_bounds(f: BinaryIO, size: int, path: str) -> tuple[int, int, int]:
    """(number of entries, central directory offset, its size), zip64 records included."""
    eocd_pos, eocd = _find_eocd(f, size, path)
    disk, cd_disk, n_disk, n_total, cd_size, cd_off, _ = struct.unpack_from("<HHHHIIH", eocd, 4)
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        raise _err("multi-disk zip archives are not supported", path, offset=eocd_pos)
    cd_end = eocd_pos
    loc_pos = eocd_pos - ZIP64_LOCATOR_SIZE
    if loc_pos >= 0:
        loc = _pread(f, loc_pos, ZIP64_LOCATOR_SIZE)
        if loc[:4] == ZIP64_LOCATOR_SIG:
            z_disk, z64_off, n_disks = struct.unpack_from("<IQI", loc, 4)
            if z_disk != 0 or n_disks != 1:
                raise _err("multi-disk zip archives are not supported", path, offset=loc_pos)
            if z64_off + ZIP64_EOCD_SIZE > loc_pos:
                raise _err(f"zip64 end record at {z64_off} does not lie before its locator at {loc_pos}",
                           path, offset=loc_pos)
            rec = _pread(f, z64_off, ZIP64_EOCD_SIZE)
            if rec[:4] != ZIP64_EOCD_SIG:
                raise _err("zip64 locator does not point at a zip64 end record", path, offset=z64_off)
            rec_size, _, _, d1, d2, n64_disk, n64_total, cd64_size, cd64_off = struct.unpack_from("<QHHIIQQQQ", rec, 4)
            if z64_off + 12 + rec_size != loc_pos:
                raise _err(f"zip64 end record of {rec_size + 12} bytes does not end at its locator", path,
                           offset=z64_off)
            if d1 != 0 or d2 != 0 or n64_disk != n64_total:
                raise _err("multi-disk zip archives are not supported", path, offset=z64_off)
            for short, long, limit, what in ((n_total, n64_total, U16_MAX, "entry count"),
                                             (cd_size, cd64_size, U32_MAX, "central directory size"),
                                             (cd_off, cd64_off, U32_MAX, "central directory offset")):
                if short != limit and short != long:
                    raise _err(f"zip64 end record {what} {long} disagrees with the end record's {short}", path,
                               offset=z64_off)
            n_total, cd_size, cd_off = n64_total, cd64_size, cd64_off
            cd_end = z64_off
    if n_total > MAX_ENTRIES:
        raise _err(f"zip declares {n_total} entries; the limit is {MAX_ENTRIES}", path, offset=eocd_pos)
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise _err(f"zip central directory of {cd_size} bytes exceeds the {MAX_CENTRAL_DIRECTORY_BYTES}-byte limit",
                   path, offset=eocd_pos)
    if cd_off + cd_size != cd_end:
        raise _err(f"zip central directory ({cd_size} bytes at offset {cd_off}) does not end where the end "
                   f"record starts ({cd_end})", path, offset=eocd_pos)
    return n_total, cd_off, cd_size


def _zip64_values(extra: bytes, want: list[str], name: str, path: str) -> dict[str, int]:
    """The zip64 extra field (id 1): u64 values for the fields that overflowed, in spec order."""
    out: dict[str, int] = {}
    pos = 0
    while pos + 4 <= len(extra):
        eid, elen = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + elen]
        if len(body) != elen:
            raise _err("extra field runs past its end", path, member=name)
        if eid == 1:
            if len(body) < 8 * len(want):
                raise _err(f"zip64 extra field of {elen} bytes lacks {', '.join(want)}", path, member=name)
            for i, key in enumerate(want):
                (out[key],) = struct.unpack_from("<Q", body, 8 * i)
            return out
        pos += 4 + elen
    if want:
        raise _err(f"zip64 extra field with {', '.join(want)} is missing", path, member=name)
    return out


def _check_name(name: str, path: str) -> None:
    parts = name.rstrip("/").split("/")
    if (not name or "\x00" in name or "\\" in name or name.startswith("/")
            or any(p in ("", ".", "..") for p in parts)):
        raise _err(f"member name {name!r} is not a plain relative path", path)


def _decode_name(raw: bytes, flags: int, path: str) -> str:
    try:
        return raw.decode("utf-8") if flags & FLAG_UTF8 else raw.decode("cp437")
    except UnicodeDecodeError:
        raise _err(f"member name {raw!r} is flagged UTF-8 but is not", path)


def read_directory(f: BinaryIO, path: str, check_local: bool = True) -> ZipDirectory:
    """Parse and validate the whole directory: central entries, and unless ``check_local`` is off
    (sniffing only looks at names), every local header and the layout of the data."""
    size = os.fstat(f.fileno()).st_size
    n_total, cd_off, cd_size = _central_bounds(f, size, path)
    cd = _pread(f, cd_off, cd_size)
    if len(cd) != cd_size:
        raise _err("zip central directory is truncated", path, offset=cd_off)
    members: dict[str, Member] = {}
    raw_names: dict[str, bytes] = {}
    pos = 0
    for _ in range(n_total):
        if pos + CENTRAL_SIZE > cd_size or cd[pos:pos + 4] != CENTRAL_SIG:
            raise _err(f"zip central directory entry {len(members)} is malformed", path, offset=cd_off + pos)
        (flags, method, crc, comp, usize, n_len, x_len, c_len, disk,
         header_off) = struct.unpack_from("<4xHH4xIIIHHHH6xI", cd, pos + 4)
        end = pos + CENTRAL_SIZE + n_len + x_len + c_len
        if end > cd_size:
            raise _err(f"zip central directory entry {len(members)} runs past the directory", path,
                       offset=cd_off + pos)
        raw = cd[pos + CENTRAL_SIZE:pos + CENTRAL_SIZE + n_len]
        extra = cd[pos + CENTRAL_SIZE + n_len:pos + CENTRAL_SIZE + n_len + x_len]
        name = _decode_name(raw, flags, path)
        want = [k for k, v, lim in (("size", usize, U32_MAX), ("comp", comp, U32_MAX),
                                    ("offset", header_off, U32_MAX), ("disk", disk, U16_MAX)) if v == lim]
        big = _zip64_values(extra, want, name, path) if want else {}
        usize, comp, header_off = big.get("size", usize), big.get("comp", comp), big.get("offset", header_off)
        if big.get("disk", disk) != 0:
            raise _err("multi-disk zip archives are not supported", path, member=name)
        _check_name(name, path)
        if name in members:
            raise _err(f"duplicate member {name!r}", path, member=name)
        if flags & FLAG_ENCRYPTED:
            raise _err("encrypted zip members are not supported", path, member=name)
        if method not in (STORED, DEFLATED):
            raise _err(f"compression method {method} is not supported (only stored and deflated)", path, member=name)
        if method == STORED and comp != usize:
            raise _err(f"stored member has compressed size {comp} but size {usize}", path, member=name)
        members[name] = Member(name, method, flags, crc, comp, usize, header_off, -1)
        raw_names[name] = raw
        pos = end
    if pos != cd_size:
        raise _err(f"zip central directory holds {cd_size - pos} bytes after its {n_total} entries", path,
                   offset=cd_off + pos)
    if not check_local:
        return ZipDirectory(path, size, members)
    located = {n: _locate(f, m, raw_names[n], cd_off, path) for n, m in members.items()}
    spans = sorted((m.header_offset, m.data_offset + m.comp_size, m.name) for m in located.values())
    for (_, prev_end, prev), (start, _, name) in zip(spans, spans[1:]):
        if start < prev_end:
            raise _err(f"member overlaps member {prev!r}", path, member=name, offset=start)
    return ZipDirectory(path, size, located)


def _locate(f: BinaryIO, m: Member, raw_name: bytes, cd_off: int, path: str) -> Member:
    """Check the local header against the central entry; fill in the data offset."""
    if m.header_offset + LOCAL_SIZE > cd_off:
        raise _err(f"local header at {m.header_offset} is not before the central directory", path, member=m.name)
    head = _pread(f, m.header_offset, LOCAL_SIZE)
    if head[:4] != LOCAL_SIG:
        raise _err("no local header at the offset the central directory gives", path, member=m.name,
                   offset=m.header_offset)
    flags, method, crc, comp, usize, n_len, x_len = struct.unpack_from("<2xHH4xIIIHH", head, 4)
    data_offset = m.header_offset + LOCAL_SIZE + n_len + x_len
    if data_offset > cd_off:
        raise _err("local header runs into the central directory", path, member=m.name, offset=m.header_offset)
    local = _pread(f, m.header_offset + LOCAL_SIZE, n_len + x_len)
    if local[:n_len] != raw_name:
        raise _err(f"local header names {local[:n_len]!r}, the central directory {raw_name!r}", path, member=m.name,
                   offset=m.header_offset)
    if method != m.method or (flags & FLAGS_CHECKED) != (m.flags & FLAGS_CHECKED):
        raise _err(f"local header (method {method}, flags {flags:#06x}) disagrees with the central directory "
                   f"(method {m.method}, flags {m.flags:#06x})", path, member=m.name, offset=m.header_offset)
    if not flags & FLAG_DESCRIPTOR:
        want = [k for k, v in (("size", usize), ("comp", comp)) if v == U32_MAX]
        big = _zip64_values(local[n_len:], want, m.name, path) if want else {}
        if (crc, big.get("comp", comp), big.get("size", usize)) != (m.crc, m.comp_size, m.size):
            raise _err("local header crc/sizes disagree with the central directory", path, member=m.name,
                       offset=m.header_offset)
    if data_offset + m.comp_size > cd_off:
        raise _err(f"data ({m.comp_size} bytes at offset {data_offset}) runs into the central directory", path,
                   member=m.name, offset=data_offset)
    return Member(m.name, m.method, m.flags, m.crc, m.comp_size, m.size, m.header_offset, data_offset)


def read_member(f: BinaryIO, m: Member, path: str, cap: int) -> bytes:
    """The whole member, at most ``cap`` bytes: inflated in bounded steps, size and CRC-32 checked."""
    if m.size > cap:
        raise _err(f"member declares {m.size} bytes; the limit for it is {cap}", path, member=m.name)
    if m.method == STORED:
        data = _pread(f, m.data_offset, m.size)
        if len(data) != m.size:
            raise _err("member data is truncated", path, member=m.name, offset=m.data_offset)
    else:
        data = inflate(f, m, path)
    if zlib.crc32(data) != m.crc:
        raise _err("member CRC-32 does not match its data", path, member=m.name)
    return data


def inflate(f: BinaryIO, m: Member, path: str) -> bytes:
    """Raw-deflate decompression that never produces more than the declared size (+1 to detect a lie)."""
    d = zlib.decompressobj(-15)
    out = bytearray()
    pos, left = m.data_offset, m.comp_size
    try:
        while True:
            if d.unconsumed_tail:
                chunk = d.unconsumed_tail
            elif left > 0:
                chunk = _pread(f, pos, min(INFLATE_STEP, left))
                if not chunk:
                    raise _err("compressed data is truncated", path, member=m.name, offset=pos)
                pos += len(chunk)
                left -= len(chunk)
            else:
                break
            out += d.decompress(chunk, m.size + 1 - len(out))
            if len(out) > m.size:
                raise _err(f"member inflates past its declared size of {m.size} bytes", path, member=m.name)
            if d.eof:
                break
    except zlib.error as e:
        raise _err(f"deflate data is corrupt ({e})", path, member=m.name)
    if not d.eof or len(out) != m.size:
        raise _err(f"member inflates to {len(out)} bytes, not its declared {m.size}", path, member=m.name)
    return bytes(out)


# ==================================================================================================
# writing
# ==================================================================================================

MASK64 = (1 << 64) - 1


def hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on a 64-bit size_t."""
    return (seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & MASK64)) & MASK64


@dataclass(frozen=True)
class _Written:
    name: bytes
    flags: int
    crc: int
    size: int
    offset: int


class ZipWriter:
    """Writes records in torch's layout (module docstring) to a file opened for writing.

    ``combined_crc`` follows PyTorchStreamWriter: c10::hash_combine over the CRC-32 of every data
    descriptor written, in order (an empty record has no descriptor: miniz writes it with flags
    0x0800 and crc 0)."""

    #: sizes/offsets at or above this use zip64 fields (tests lower it to exercise them)
    zip64_threshold = U32_MAX

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.pos = f.tell()
        self.entries: list[_Written] = []
        self.combined_crc = 0

    def _write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.pos += len(data)

    def write_record(self, name: str, data: bytes) -> None:
        self.write_stream(name, len(data), [data])

    def write_stream(self, name: str, size: int, chunks: Iterable[Any]) -> None:
        """Write one STORED record of exactly ``size`` bytes from ``chunks`` (bytes-like, C-contiguous)."""
        raw = name.encode("utf-8")
        offset = self.pos
        big_size = size >= self.zip64_threshold
        local_z64 = struct.pack("<HHQQ", 1, 16, size, size) if big_size else b""
        start = offset + LOCAL_SIZE + len(raw) + len(local_z64) + 4
        pad = -start % ALIGNMENT
        extra = local_z64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        sizes = U32_MAX if big_size else 0
        flags = FLAG_UTF8 | (FLAG_DESCRIPTOR if size else 0)
        self._write(LOCAL_SIG + struct.pack("<HHHHHIIIHH", 45 if big_size else 0, flags, STORED, 0, 0,
                                            0, sizes, sizes, len(raw), len(extra)) + raw + extra)
        crc = 0
        written = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            crc = zlib.crc32(view, crc)
            written += len(view)
            self._write(view)
        if written != size:
            raise MconvError(f"record {name!r}: wrote {written} bytes, expected {size}")
        if size:
            fmt = "<IQQ" if big_size else "<III"
            self._write(DESCRIPTOR_SIG + struct.pack(fmt, crc, size, size))
            self.combined_crc = hash_combine(self.combined_crc, crc)
        self.entries.append(_Written(raw, flags, crc, size, offset))

    def finish(self) -> None:
        """Central directory, zip64 end record and locator, end record."""
        t = self.zip64_threshold
        cd_off = self.pos
        for e in self.entries:
            z64 = b"".join(struct.pack("<Q", v) for v in (e.size, e.size, e.offset) if v >= t)
            extra = struct.pack("<HH", 1, len(z64)) + z64 if z64 else b""
            size32 = e.size if e.size < t else U32_MAX
            self._write(CENTRAL_SIG + struct.pack(
                "<HHHHHHIIIHHHHHII", 0, 45 if z64 else 0, e.flags, STORED, 0, 0, e.crc, size32, size32,
                len(e.name), len(extra), 0, 0, 0, 0, e.offset if e.offset < t else U32_MAX) + e.name + extra)
        cd_size = self.pos - cd_off
        z64_off = self.pos
        n = len(self.entries)
        self._write(ZIP64_EOCD_SIG + struct.pack("<QHHIIQQQQ", ZIP64_EOCD_SIZE - 12, 0x031E, 45, 0, 0, n, n,
                                                 cd_size, cd_off))
        self._write(ZIP64_LOCATOR_SIG + struct.pack("<IQI", 0, z64_off, 1))
        self._write(EOCD_SIG + struct.pack("<HHHHIIH", 0, 0, min(n, U16_MAX), min(n, U16_MAX),
                                           min(cd_size, U32_MAX), min(cd_off, U32_MAX), 0))
