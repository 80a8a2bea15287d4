"""The fast paths of a conversion give the same bytes as the slow ones: tensors copied file to file in
the kernel (copy_file_range) or streamed when that is not possible, merged shards copied piece by
piece, the integer bf16 -> f16 cast, the allocator setting."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

import mconv.core.io as mio
from mconv.core.dtypes import DIRECT_CASTS, bf16_bits_to_f16_bits, bf16_bits_to_f32, get_dtype
from mconv.core.ir import FileCache, FileSlice, Tensor, cast, concat, tensor_from_array
from mconv.core.memory import tune_allocator


def _file_tensor(tmp_path, name: str, values: np.ndarray, dtype: str = "f32", pad: int = 100) -> Tensor:
    """A tensor stored ``pad`` bytes into a file (a FileSlice)."""
    dt = get_dtype(dtype)
    raw = dt.encode(values.reshape(-1, values.shape[-1]))
    path = tmp_path / f"{name}.bin"
    path.write_bytes(b"\xAA" * pad + raw.tobytes() + b"\xBB" * 7)
    cache = FileCache()
    return Tensor(name, values.shape, dt, FileSlice(cache.get(path), pad, raw.shape[0], raw.shape[1]))


def test_file_slices_are_copied_in_the_kernel(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    t = _file_tensor(tmp_path, "a", x)
    calls, done = [], []
    real = os.copy_file_range

    def spy(*args):  # type: ignore[no-untyped-def]
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", spy)
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        f.write(b"head")
        assert mio.write_tensor(f, t, done.append, max_bytes=10_000) == x.nbytes
        f.write(b"tail")          # the buffered writer continues where the copy ended
    assert out.read_bytes() == b"head" + x.tobytes() + b"tail"
    assert len(calls) == -(-x.nbytes // 10_000) and sum(done) == x.nbytes


def test_merged_shards_are_copied_piece_by_piece(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((3, 4, 8)).astype(np.float32) for _ in range(3)]
    shards = [_file_tensor(tmp_path, f"s{i}", p) for i, p in enumerate(parts)]
    merged = concat("w", shards, axis=1)           # rows of the shards interleave in runs of 4
    assert merged.source.extents(0, merged.n_rows) is not None
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    buf = tmp_path / "m.bin"
    with open(buf, "wb") as f:
        mio.write_tensor(f, merged)
    assert buf.read_bytes() == np.concatenate(parts, axis=1).tobytes()
    assert len(calls) == 9
    # along the last axis every row mixes the shards: computed, not copied
    assert concat("w", shards, axis=2).source.extents(0, 3) is None


def test_copy_falls_back_to_streaming(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(4096, dtype=np.float32).reshape(64, 64)
    t = _file_tensor(tmp_path, "a", x)
    # not a file
    b = io.BytesIO()
    assert mio.write_tensor(b, t) == x.nbytes and b.getvalue() == x.tobytes()
    # a file system or kernel that cannot copy: nothing written by the failed attempt

    def refuse(*args):  # type: ignore[no-untyped-def]
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    out = tmp_path / "o.bin"
    with open(out, "wb") as f:
        f.write(b"x")
        mio.write_tensor(f, t)
    assert out.read_bytes() == b"x" + x.tobytes()
    # computed tensors are never copied
    assert cast(t, get_dtype("f16")).source.extents(0, t.n_rows) is None
    assert tensor_from_array("m", x, get_dtype("f32")).source.extents(0, 1) is None


def test_input_that_shrank_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mconv.core.errors import FormatError

    x = np.ones((256, 64), np.float32)
    t = _file_tensor(tmp_path, "a", x)
    t.source.file.fileno()
    os.truncate(tmp_path / "a.bin", 100 + x.nbytes // 2)
    with open(tmp_path / "o.bin", "wb") as f, pytest.raises(FormatError, match="the input ended"):
        mio.write_tensor(f, t)


def test_bf16_to_f16_equals_the_float_path_for_every_pattern() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    with np.errstate(over="ignore"):
        want = bf16_bits_to_f32(bits).astype(np.float16).view(np.uint16)
    got = bf16_bits_to_f16_bits(bits)
    nan = np.isnan(want.view(np.float16))
    assert np.array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()
    # through cast(): the direct kernels give what decode + encode give
    raw = bits.view(np.uint8)
    for (src, dst), kernel in DIRECT_CASTS.items():
        s, d = get_dtype(src), get_dtype(dst)
        with np.errstate(over="ignore"):
            slow = d.encode(s.decode(raw, 256))
        fast = kernel(raw, 256)
        assert fast.shape == slow.shape
        same = fast.view(d.storage) == slow.view(d.storage)
        assert same.all() or np.isnan(slow.view(d.storage)[~same].astype(np.float32)).all(), (src, dst)


def test_allocator_setting() -> None:
    import platform
    import sys

    if (not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
            or any(k.startswith("MALLOC_") for k in os.environ)):
        pytest.skip("glibc on Linux without MALLOC_ overrides only")
    assert tune_allocator() is True
    assert tune_allocator() is True      # once per process


@pytest.mark.parametrize("copied", [True, False])
def test_written_output_is_handed_to_the_disk_as_it_goes(tmp_path, monkeypatch, copied) -> None:  # type: ignore[no-untyped-def]
    """Each completed step of the output is passed to posix_fadvise(DONTNEED) (writeback starts, clean
    pages go), steps counted from the start of the file across tensors and headers."""
    monkeypatch.setattr(mio, "WRITEBACK_BYTES", 4096)
    advised = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: advised.append((off, n, advice)))
    x = np.arange(5000, dtype=np.float32).reshape(50, 100)        # 20000 bytes
    t = _file_tensor(tmp_path, "a", x) if copied else cast(_file_tensor(tmp_path, "a", x.astype(np.float64),
                                                                         "f64"), get_dtype("f32"))
    with open(tmp_path / "o.bin", "wb") as f:
        f.write(b"h" * 1000)
        mio.write_tensor(f, t, max_bytes=3000)
        mio.write_tensor(f, t, max_bytes=3000)
    assert (tmp_path / "o.bin").read_bytes() == b"h" * 1000 + x.tobytes() * 2
    assert all(a == os.POSIX_FADV_DONTNEED and off % 4096 == 0 and n % 4096 == 0 for off, n, a in advised)
    covered = sorted((off, off + n) for off, n, _ in advised)
    assert covered[0][0] == 0 and covered[-1][1] == 41000 // 4096 * 4096
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))    # no gap, no overlap
