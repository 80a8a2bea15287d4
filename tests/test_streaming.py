"""Conversions stream: their peak memory does not grow with the model, every writer reports its
progress, the progress bar shows on a terminal (and not with --quiet), and ``mconv --help`` does not
load numpy even with an entry-point plugin installed.

Peak memory is measured with tracemalloc, which sees numpy's buffers (numpy reports them to it) in
every thread.  Chunk sizes are shrunk for the test (CHUNK_BYTES, TRANSFORM_VALUES are read at call
time), so a model of a few MB spans hundreds of chunks: a conversion that held a whole tensor or the
whole model would show a peak that grows with the model, which is what the assertions exclude.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from collections import OrderedDict
from typing import Any, Callable, Optional

import numpy as np
import pytest

from conftest import NPZ_PLUGIN_DIR, install_fake_dist
from mconv.core import ir
from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry
from mconv.formats import llama2c
from mconv.plugins import tensor_from_array
from testlib import random_model, sp_tokenizer

#: raw bytes per chunk and values per transform chunk during these tests
SMALL_CHUNK = 64 << 10
SMALL_VALUES = 16 << 10


def hparams(n_vocab: int) -> dict[str, Any]:
    return dict(n_vocab=n_vocab, n_embd=256, n_layer=1, n_head=4, n_head_kv=2, n_ff=768, n_ctx=64,
                norm_eps=1e-5, rope_theta=10000.0)


#: two model sizes: the embedding and the classifier make the difference (2 MiB vs 8 MiB each in f32)
SMALL, LARGE = 2048, 8192


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ir, "CHUNK_BYTES", SMALL_CHUNK)
    monkeypatch.setattr(ir, "TRANSFORM_VALUES", SMALL_VALUES)
    monkeypatch.setattr(llama2c, "COMPARE_CHUNK_BYTES", SMALL_CHUNK)   # the tied-classifier check


# -- sources ------------------------------------------------------------------------------------------

def _safetensors_file(d: str, n_vocab: int, dtype: str) -> str:
    path = os.path.join(d, "m.safetensors")
    write_model(random_model(hparams(n_vocab), dtype=dtype, seed=1), path, get_registry().format("safetensors"),
                quiet=True)
    return path


def _hf_dir(d: str, n_vocab: int, dtype: str) -> str:
    """An HF directory in shards (q/k in the HF layout, un-permuted by the reader)."""
    path = os.path.join(d, "hf") + "/"
    write_model(random_model(hparams(n_vocab), dtype=dtype, seed=1), path, get_registry().format("safetensors"),
                options={"shard_size": "3MB"}, quiet=True)
    return path


def _meta_shards(d: str, n_vocab: int, dtype: str) -> str:
    """A Meta directory of two model-parallel shards, merged lazily by the reader (concat)."""
    import json

    from mconv.formats import _torch_save, pth

    model = random_model(hparams(n_vocab), dtype=dtype, seed=1)
    out = os.path.join(d, "meta")
    os.makedirs(out)
    state = pth.meta_state_dict(model)
    dt = model.tensors["token_embd.weight"].dtype
    for k in range(2):
        shard: OrderedDict[str, Any] = OrderedDict()
        for name, t in state.items():
            if len(t.shape) == 1:
                shard[name] = t
                continue
            axis = 1 if any(rx.fullmatch(name) for rx in pth.META_AXIS1) else 0
            part = np.array_split(t.f32(), 2, axis=axis)[k]
            shard[name] = tensor_from_array(name, part, dt)
        with open(os.path.join(out, f"consolidated.{k:02d}.pth"), "wb") as f:
            _torch_save.save(f, f"consolidated.{k:02d}", shard)
    with open(os.path.join(out, "params.json"), "w") as f:
        json.dump(pth.params_json(model), f)
    return out


SOURCES: dict[str, Callable[[str, int, str], str]] = {"safetensors": _safetensors_file, "hf-shards": _hf_dir,
                                                      "meta-shards": _meta_shards}

#: (source, source dtype, target format, output name, --dtype, writer options)
CASES = [
    ("safetensors", "f32", "gguf", "o.gguf", None, {}),              # bytes copied as they are
    ("safetensors", "f32", "gguf", "o.gguf", "f16", {}),             # a cast
    ("safetensors", "bf16", "gguf", "o.gguf", "q8_0", {}),           # quantization
    ("safetensors", "f32", "gguf", "o.gguf", "q4_k_m", {}),          # K-quants (q4_k and q6_k)
    ("safetensors", "f32", "safetensors", "hf/", None, {}),          # HF layout: q/k permuted
    ("safetensors", "bf16", "pth", "o.pth", None, {}),               # the zip writer
    ("safetensors", "f16", "pth", "meta/", "bf16", {}),              # Meta directory, a cast
    ("safetensors", "bf16", "llama2c", "l2c/", None, {"version": "0"}),   # widened to f32 + RoPE table
    ("safetensors", "f32", "llama2c", "q.bin", "l2c_q8", {}),        # int8 groups, two runs per tensor
    ("safetensors", "f32", "ggml", "o.bin", "q4_0", {}),
    ("hf-shards", "bf16", "gguf", "o.gguf", "f16", {}),              # q/k un-permuted, shards merged
    ("meta-shards", "bf16", "gguf", "o.gguf", None, {}),             # model-parallel shards concatenated
    ("meta-shards", "f32", "safetensors", "o.safetensors", "f16", {}),
]


def _peak(tmp: str, case: tuple, n_vocab: int) -> tuple[int, int]:
    """(peak traced bytes of open + write, the model's tensor bytes)."""
    source, src_dtype, target, out_name, dtype, options = case
    src = SOURCES[source](tmp, n_vocab, src_dtype)
    fmt = get_registry().format(target)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with open_model(src) as model:
            size = model.nbytes()
            write_model(model, os.path.join(tmp, "out", out_name), fmt, dtype=dtype, options=options,
                        allow_lossy=True, quiet=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, size


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-to-{c[2]}-{c[4] or 'kept'}"
                         + ("-dir" if c[3].endswith("/") else ""))
def test_peak_memory_does_not_grow_with_the_model(tmp_path, small_chunks, case) -> None:  # type: ignore[no-untyped-def]
    small_dir, large_dir = tmp_path / "small", tmp_path / "large"
    small_dir.mkdir()
    large_dir.mkdir()
    peak_small, size_small = _peak(str(small_dir), case, SMALL)
    peak_large, size_large = _peak(str(large_dir), case, LARGE)
    assert size_large > 2.5 * size_small
    largest = 4 * LARGE * 256       # the f32 embedding: a writer holding one whole tensor peaks above it
    # a few chunks in flight (one per worker thread, each a few times SMALL_CHUNK in temporaries),
    # the same at both sizes
    assert peak_large < largest / 4, (peak_small, peak_large, size_large)
    assert peak_large < peak_small + 8 * SMALL_CHUNK, (peak_small, peak_large)


# -- progress -----------------------------------------------------------------------------------------

class Recorder:
    instances: list["Recorder"] = []

    def __init__(self, total: int, label: str, enabled: Optional[bool] = None) -> None:
        self.total, self.done = total, 0
        Recorder.instances.append(self)

    def update(self, n: int) -> None:
        self.done += n

    def close(self) -> None:
        pass

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize("target,out_name,dtype,options", [
    ("gguf", "o.gguf", None, {}), ("gguf", "o.gguf", "q8_0", {}), ("safetensors", "o.safetensors", None, {}),
    ("safetensors", "hf/", None, {"shard_size": "1MB"}), ("pth", "o.pth", None, {}), ("pth", "meta/", None, {}),
    ("llama2c", "l2c/", None, {}), ("llama2c", "q.bin", "l2c_q8", {}), ("ggml", "o.bin", None, {}),
    ("npz", "o.npz", None, {}),
])
def test_every_writer_reports_all_its_bytes(tmp_path, monkeypatch, npz_plugin, target, out_name, dtype,
                                            options) -> None:  # type: ignore[no-untyped-def]
    import mconv.core.convert as convert

    Recorder.instances = []
    monkeypatch.setattr(convert, "Progress", Recorder)
    model = random_model(hparams(512), dtype="f32", tokenizer=sp_tokenizer(512))
    result = write_model(model, str(tmp_path / out_name), get_registry().format(target), dtype=dtype,
                         options=options, allow_lossy=True, quiet=True)
    (bar,) = Recorder.instances
    assert bar.total == result.bytes == result.plan.model.nbytes() > 0
    assert bar.done == bar.total


def _pty_run(args: list[str]) -> tuple[int, str]:
    """Run mconv with stderr on a pseudo-terminal; (exit status, what the terminal received)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, and tqdm draws nothing in no room: make it 100 x 24
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    # redraw on every update (the default 0.1 s would skip the updates of a small model)
    env = dict(os.environ, TQDM_MININTERVAL="0")
    try:
        p = subprocess.Popen([sys.executable, "-m", "mconv.core", *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=slave, env=env)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        rc = p.wait(timeout=120)
    finally:
        os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_and_quiet_silences_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = str(tmp_path / "m.safetensors")
    write_model(random_model(hparams(4096), dtype="f32"), src, get_registry().format("safetensors"), quiet=True)
    rc, screen = _pty_run(["translate", src, str(tmp_path / "a.gguf"), "--dtype", "f16", "--allow-lossy"])
    assert rc == 0
    # label, a percentage, bytes done of the total, the rate and the time left
    assert "gguf:" in screen and "%|" in screen and "B/s" in screen, screen
    assert "/5.50M [" in screen and "<" in screen, screen
    rc, screen = _pty_run(["--quiet", "translate", src, str(tmp_path / "b.gguf"), "--dtype", "f16",
                           "--allow-lossy"])
    assert (rc, screen) == (0, "")


# -- --help -------------------------------------------------------------------------------------------

def test_help_with_an_entry_point_plugin_does_not_import_numpy(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The command line needs only register_commands: the built-in formats and numpy stay unloaded,
    and a plugin whose entry point module is light (mconv-npz) adds nothing heavy."""
    site = install_fake_dist(tmp_path, monkeypatch, "mconv-npz", "[mconv]\nnpz = mconv_npz\n", [NPZ_PLUGIN_DIR])
    code = ("import contextlib, io, sys\n"
            "from mconv.core.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    rc = main(['--help'])\n"
            "from mconv.core.registry import get_command_registry\n"
            "print(rc, 'translate' in out.getvalue(), 'npz' in get_command_registry().plugins,\n"
            "      sorted(m for m in ('numpy', 'mconv.core.ir', 'mconv.formats.gguf', 'mconv_npz.npz')\n"
            "             if m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "MCONV_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), NPZ_PLUGIN_DIR, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "0 True True []", out.stderr


def test_builtins_adding_commands_are_loaded_for_the_command_line() -> None:
    """The command line loads only DEFAULT_COMMAND_PLUGINS of the built-ins: any built-in module
    implementing register_commands must be listed there, or its commands would be missing."""
    import importlib

    from mconv.core.registry import DEFAULT_COMMAND_PLUGINS, DEFAULT_PLUGINS

    for name in DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        if hasattr(module, "register_commands"):
            assert name in DEFAULT_COMMAND_PLUGINS, name
