"""Bounds-checked little-endian reads over a mapped file, shared by the GGUF and GGML readers.

Every read checks the bytes left first, so a hostile count or length becomes a FormatError with the
offset instead of an exception or a huge allocation."""

from __future__ import annotations

import struct
from typing import Any, Optional

import numpy as np

from mconv.plugins import FormatError


class Cursor:
    def __init__(self, buf: Any, size: int, path: str) -> None:
        self.buf = buf
        self.size = size
        self.path = path
        self.pos = 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def error(self, message: str, offset: Optional[int] = None) -> FormatError:
        return FormatError(message, path=self.path, offset=self.pos if offset is None else offset)

    def need(self, n: int, what: str) -> None:
        if n > self.left:
            raise self.error(f"{what} needs {n} bytes but only {self.left} are left in the file")

    def unpack(self, fmt: str, what: str) -> tuple[Any, ...]:
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what)[0])

    def i32(self, what: str) -> int:
        return int(self.unpack("<i", what)[0])

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what)[0])

    def i64(self, what: str) -> int:
        return int(self.unpack("<q", what)[0])

    def take(self, n: int, what: str, at: Optional[int] = None) -> bytes:
        """``n`` bytes (the caller has bounded ``n``; this checks it against the bytes left)."""
        if n > self.left:
            raise self.error(f"{what} has length {n} but only {self.left} bytes are left in the file", at)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        self.need(count * dtype.itemsize, what)
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return out


def pad_to(n: int, align: int) -> int:
    return -(-n // align) * align
