"""Safe output: every file or directory is built under a temporary name beside its destination,
fsynced, then renamed into place, so a failed or killed conversion leaves nothing at the output path.

Temporary names are ``.<OUT>.mconv-<pid>.tmp``; a run removes those of dead processes for the same OUT.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from . import ir
from .errors import FormatError, MconvError, UsageError
from .ir import Tensor

TMP_RE = re.compile(r"^\.(?P<name>.+)\.mconv-(?P<pid>\d+)\.tmp$")


def temp_name(path: str, pid: Optional[int] = None) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.mconv-{os.getpid() if pid is None else pid}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def clean_stale_temps(path: str) -> list[str]:
    """Remove temporaries of dead processes for this output path."""
    parent, name = os.path.split(os.path.abspath(path))
    removed = []
    try:
        entries = os.listdir(parent)
    except OSError:
        return removed
    for entry in entries:
        m = TMP_RE.match(entry)
        if m and m.group("name") == name and not _pid_alive(int(m.group("pid"))):
            _remove(os.path.join(parent, entry))
            removed.append(entry)
    return removed


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_not_input(out: str, inputs: Iterable[str]) -> None:
    """Refuse to write over an input file or directory, directly or through a symlink or hardlink."""
    out_abs = os.path.abspath(out)
    for inp in inputs:
        if _same_file(out_abs, inp) or os.path.realpath(out_abs) == os.path.realpath(inp):
            raise UsageError(f"output {out} is the input {inp}; refusing to overwrite it")
        if os.path.isdir(out_abs) and os.path.realpath(inp).startswith(os.path.realpath(out_abs) + os.sep):
            raise UsageError(f"output directory {out} contains the input {inp}; refusing to overwrite it")


def fsync_path(path: str) -> None:
    """fsync a file, or a directory and every file below it."""
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            for f in files:
                fsync_path(os.path.join(root, f))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


class AtomicOutput:
    """Manage the temporary files of one conversion and commit them together.

    ``main`` is the temporary path of the output itself (a file or, for directory layouts, a
    directory); ``sidecar(name)`` hands out a temporary path for a file written beside it (llama2.c's
    tokenizer.bin), committed and cleaned up with it.
    """

    def __init__(self, out: str, *, directory: bool, force: bool, inputs: Sequence[str]) -> None:
        self.out = os.path.abspath(out.rstrip("/") or out)
        self.directory = directory
        self.force = force
        self.inputs = list(inputs)
        self.main = temp_name(self.out)
        self._sidecars: dict[str, str] = {}
        self._committed = False

    def prepare(self) -> None:
        check_not_input(self.out, self.inputs)
        parent = os.path.dirname(self.out)
        os.makedirs(parent, exist_ok=True)
        clean_stale_temps(self.out)
        if os.path.lexists(self.out) and not self.force:
            raise UsageError(f"{self.out} exists; use --force to replace it")
        if os.path.isdir(self.out) and not self.directory and not os.path.islink(self.out):
            raise UsageError(f"{self.out} is a directory; end OUT with / for a directory layout")
        _remove(self.main)
        if self.directory:
            os.makedirs(self.main)

    def sidecar(self, path: str) -> str:
        """A temporary path for ``path`` (a file beside the output)."""
        final = os.path.abspath(path)
        check_not_input(final, self.inputs)
        if os.path.lexists(final) and not self.force:
            raise UsageError(f"{final} exists; use --force to replace it")
        os.makedirs(os.path.dirname(final), exist_ok=True)  # parent folders are created, as for OUT
        clean_stale_temps(final)
        tmp = temp_name(final)
        self._sidecars[final] = tmp
        return tmp

    def commit(self) -> None:
        for tmp in [self.main, *self._sidecars.values()]:
            fsync_path(tmp)
        for final, tmp in self._sidecars.items():
            os.replace(tmp, final)
        if self.directory and os.path.isdir(self.out) and not os.path.islink(self.out):
            if _exchange(self.main, self.out):
                # the temporary name now holds the old directory; killed before this removal, it is
                # a temporary of a dead process, which the next run removes
                _remove(self.main)
            else:
                # no atomic exchange here: rename the old directory aside, put the new one in
                # place, then drop the old one
                old = temp_name(self.out, pid=os.getpid()) + ".old"
                os.rename(self.out, old)
                os.rename(self.main, self.out)
                _remove(old)
        else:
            os.replace(self.main, self.out)
        _fsync_dir(os.path.dirname(self.out))
        self._committed = True

    def abort(self) -> None:
        if not self._committed:
            for tmp in [self.main, *self._sidecars.values()]:
                _remove(tmp)


@contextlib.contextmanager
def atomic_output(out: str, *, directory: bool = False, force: bool = False,
                  inputs: Sequence[str] = ()) -> Iterator[AtomicOutput]:
    ao = AtomicOutput(out, directory=directory, force=force, inputs=inputs)
    ao.prepare()
    try:
        yield ao
    except BaseException:
        ao.abort()
        raise
    else:
        try:
            ao.commit()
        except BaseException:
            ao.abort()
            raise


# -- streaming tensor data --------------------------------------------------------------------------

def write_tensor(f: BinaryIO, t: Tensor, progress: Callable[[int], None] = lambda n: None,
                 max_bytes: Optional[int] = None) -> int:
    """Stream a tensor's stored bytes to ``f`` in chunks of at most ``max_bytes``; returns bytes written.

    Bytes stored verbatim in an input file (a FileSlice, a merge of shards along rows) are copied by
    the kernel (``copy_file_range``, as ``cp`` does): they never pass through this process, so they
    cost neither a copy nor resident pages.  Elsewhere (other systems, a pipe) they are streamed."""
    max_bytes = ir.CHUNK_BYTES if max_bytes is None else max_bytes
    if t.n_rows and t.row_bytes and _copy_extents(f, t, progress, max_bytes):
        return t.nbytes
    written = 0
    out = _Written(f)
    for chunk in t.iter_chunks(max_bytes):
        _write_all(f, chunk)
        written += chunk.nbytes
        progress(chunk.nbytes)
        out.advance()
    if written != t.nbytes:
        raise MconvError(f"wrote {written} bytes for a tensor of {t.nbytes} bytes", tensor=t.name)
    return written


#: written output is handed to the disk and dropped from the page cache in steps of this many bytes
WRITEBACK_BYTES = 64 << 20


class _Written:
    """Start writing each completed WRITEBACK_BYTES step of the output to disk, and let the kernel
    drop its pages once they are clean (``posix_fadvise(DONTNEED)``: asynchronous writeback of dirty
    pages, then the clean ones are dropped).

    Without this, a multi-GB output sits dirty in the page cache until the final fsync, which then
    writes all of it while nothing else happens; with it, the disk works while the conversion goes
    on, the fsync finds little left, and the conversion does not fill the page cache with an output
    nobody is about to read.  Steps are cut at multiples of WRITEBACK_BYTES from the start of the file,
    so steps that span two tensors (or a header) are handed over when the later one crosses the end."""

    def __init__(self, f: BinaryIO) -> None:
        self.fd: Optional[int] = None
        self.f = f
        try:
            if hasattr(os, "posix_fadvise"):
                self.fd = f.fileno()
                self.pos = f.tell()
        except (AttributeError, OSError, ValueError):
            self.fd = None

    def advance(self, pos: Optional[int] = None) -> None:
        if self.fd is None:
            return
        pos = self.f.tell() if pos is None else pos
        start, end = self.pos // WRITEBACK_BYTES * WRITEBACK_BYTES, pos // WRITEBACK_BYTES * WRITEBACK_BYTES
        if end > start:
            try:
                os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_DONTNEED)
            except OSError:       # a file system or a kernel without it: the final fsync writes it all
                self.fd = None
                return
            self.pos = pos


#: errors of a first copy_file_range that mean "not here": stream the bytes instead
_NO_COPY = frozenset(e for e in (getattr(errno, n, None) for n in (
    "EXDEV", "EINVAL", "ENOSYS", "EOPNOTSUPP", "ENOTSUP", "EBADF", "EPERM", "ETXTBSY")) if e is not None)


def _copy_extents(f: BinaryIO, t: Tensor, progress: Callable[[int], None], max_bytes: int) -> bool:
    """Copy ``t``'s bytes file to file in the kernel; False (nothing written) when that cannot be done."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    extents = t.source.extents(0, t.n_rows)
    if not extents:
        return False
    try:
        out_fd = f.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False
    f.flush()
    pos = f.tell()
    out = _Written(f)
    first = True
    for file, offset, nbytes in extents:
        in_fd = file.fileno()
        left = nbytes
        while left > 0:
            try:
                n = copy(in_fd, out_fd, min(left, max_bytes), offset, pos)
            except OSError as e:
                if first and e.errno in _NO_COPY:
                    return False
                if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise MconvError(f"cannot write output: {e.strerror}")
                raise
            if n <= 0:
                raise FormatError(f"the input ended at offset {offset} while {left} more bytes of this tensor "
                                  "were expected (was it changed during the conversion?)", path=file.path,
                                  offset=offset, tensor=t.name)
            first = False
            offset += n
            pos += n
            left -= n
            progress(n)
            out.advance(pos)
    f.seek(pos)
    t.source.release()
    return True


def _write_all(f: BinaryIO, chunk: np.ndarray) -> None:
    try:
        f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            # no path: f is a temporary; the caller names the real output
            raise MconvError(f"cannot write output: {e.strerror}")
        raise


def write_padding(f: BinaryIO, alignment: int) -> int:
    pos = f.tell()
    pad = -pos % alignment
    if pad:
        f.write(b"\0" * pad)
    return pad
