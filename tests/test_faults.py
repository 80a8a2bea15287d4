"""Faults while writing: a killed process, a full disk, an output that is the input.

Promises (DESIGN.md "Temp files", "Streaming"): output is built under ``.<OUT>.mconv-<pid>.tmp`` and
renamed into place, so nothing ever appears at OUT unless it is complete; ``--force`` replaces an old
output atomically (the old one survives a failed or killed run); the next run removes temporaries
of dead processes (and only those); the input is never written.

Each fault is tried on every kind of output (``LAYOUTS``): a single file (safetensors), directory
layouts (an HF safetensors folder, a Meta folder of consolidated.00.pth + params.json +
tokenizer.model, a llama2.c folder), and a file with a sidecar (llama2.c's model.bin, which gets
tokenizer.bin beside it: a killed or failed run leaves neither).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from corpus.builders import sp_model_bytes, tree_digest, valid_file, valid_hf_dir
from testlib import Result, cli_subprocess

PAUSE_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "pause_child.py")
ENV = {"MCONV_LOAD_PLUGINS": ""}

#: output kind -> (name of OUT in its folder, translate options, is a directory, files written beside OUT)
OUTPUTS: dict[str, tuple[str, list[str], bool, list[str]]] = {
    "file": ("model.safetensors", [], False, []),
    "dir": ("hf", ["--to", "safetensors"], True, []),
    "pth_dir": ("meta", ["--to", "pth"], True, []),
    "llama2c_dir": ("l2c", ["--to", "llama2c"], True, []),
    "sidecar": ("model.bin", ["--to", "llama2c"], False, ["tokenizer.bin"]),
}
LAYOUTS = tuple(OUTPUTS)


def _setup(tmp_path: Path, layout: str, existing: bool) -> tuple[str, str, list[str]]:
    """(input, OUT, translate args); with ``existing`` an older output (of a model with other
    weights) is already at OUT and its sidecars."""
    from corpus.builders import hf_tensors, mconv_metadata, pack_safetensors, st_header, write_bytes
    from testlib import cli

    src = valid_file(str(tmp_path / "in"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    name, options, directory, _ = OUTPUTS[layout]
    out = str(out_dir / name)
    target = out + "/" if directory else out
    if existing:
        old = write_bytes(str(tmp_path / "old" / "model.safetensors"),
                          pack_safetensors(*st_header(hf_tensors(seed=1), mconv_metadata())))
        r = cli("translate", *options, old, target)
        assert r.rc == 0, r
    return src, out, ["translate", *options, src, target] + (["--force"] if existing else [])


def _beside(out: str, layout: str) -> list[str]:
    """OUT and the sidecars written beside it."""
    return [out] + [os.path.join(os.path.dirname(out), n) for n in OUTPUTS[layout][3]]


def _digests(out: str, layout: str) -> list[dict[str, tuple[int, str]]]:
    return [tree_digest(p) for p in _beside(out, layout)]


def _temp(out: str, pid: int) -> str:
    parent, name = os.path.split(out)
    return os.path.join(parent, f".{name}.mconv-{pid}.tmp")


def _paused(tmp_path: Path, args: list[str], pause_at: int = 3) -> subprocess.Popen[str]:
    """A child stopped for good inside the writer after ``pause_at`` chunks."""
    marker = tmp_path / f"paused-{time.monotonic_ns()}"
    env = {**os.environ, **ENV}
    p = subprocess.Popen([sys.executable, PAUSE_CHILD, str(marker), str(pause_at), *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if p.poll() is not None:
            raise AssertionError(f"child ended before pausing: {p.returncode} {p.communicate()}")
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError("child did not reach the pause point")
        time.sleep(0.01)
    assert int(marker.read_text()) == p.pid
    return p


def _one_error_line(r: Result) -> str:
    lines = r.err.splitlines()
    assert r.rc == 2 and len(lines) == 1 and lines[0].startswith("mconv: error: "), r
    assert "Traceback" not in r.err + r.out
    return lines[0]


def _assert_same_model(a: str, b: str) -> None:
    from mconv.core.convert import open_model
    from testlib import assert_same_tensors

    with open_model(a) as ma, open_model(b) as mb:
        assert_same_tensors(ma, mb)


# -- killed in the middle of writing -------------------------------------------------------------------

@pytest.mark.parametrize("existing", [False, True], ids=["new", "force_replace"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sigkill_mid_write_leaves_no_output_and_next_run_cleans(tmp_path: Path, layout: str, existing: bool) -> None:
    src, out, args = _setup(tmp_path, layout, existing)
    before_in, before_out = tree_digest(str(tmp_path / "in")), _digests(out, layout)
    p = _paused(tmp_path, args)
    temp = _temp(out, p.pid)
    assert os.path.exists(temp), "the child was writing its temporary output"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    # nothing new at OUT or beside it: absent, or the old output untouched
    assert _digests(out, layout) == before_out
    assert os.path.exists(temp), "a killed process cannot clean up; the next run does"
    r = cli_subprocess(*args, env=ENV)
    assert (r.rc, r.err) == (0, ""), r
    assert not os.path.lexists(temp)
    assert sorted(os.listdir(os.path.dirname(out))) == sorted(os.path.basename(p) for p in _beside(out, layout))
    assert tree_digest(str(tmp_path / "in")) == before_in
    _assert_same_model(src, out)


def test_sigterm_mid_write_cleans_up(tmp_path: Path) -> None:
    src, out, args = _setup(tmp_path, "dir", False)
    p = _paused(tmp_path, args)
    os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err == "mconv: error: terminated (signal 15)\n", (p.returncode, err)
    assert os.listdir(os.path.dirname(out)) == []


def test_only_dead_processes_temporaries_are_removed(tmp_path: Path) -> None:
    src, out, args = _setup(tmp_path, "file", False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for pid in (dead.pid, live.pid):
            Path(_temp(out, pid)).write_bytes(b"partial")
        os.mkdir(_temp(out, dead.pid + 100000))  # a stale directory temp too (no such pid)
        other = os.path.join(os.path.dirname(out), f".other.safetensors.mconv-{dead.pid}.tmp")
        Path(other).write_bytes(b"not ours")
        r = cli_subprocess(*args, env=ENV)
        assert (r.rc, r.err) == (0, ""), r
        left = sorted(os.listdir(os.path.dirname(out)))
        assert left == sorted([os.path.basename(_temp(out, live.pid)), os.path.basename(other),
                               os.path.basename(out)])
    finally:
        live.kill()
        live.wait()


# -- a full disk -----------------------------------------------------------------------------------------

def _fsize_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


#: RLIMIT_FSIZE values under the size of the largest file each output writes (it limits each file)
LIMITS = [(layout, limit) for layout in LAYOUTS for limit in ((0, 4096, 12 * 1024) if layout in ("file", "dir")
                                                              else (0, 4096))]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "force_replace"])
@pytest.mark.parametrize("layout,limit", LIMITS, ids=[f"{lay}-{lim}" for lay, lim in LIMITS])
def test_full_disk_fails_cleanly(tmp_path: Path, layout: str, existing: bool, limit: int) -> None:
    src, out, args = _setup(tmp_path, layout, existing)
    before_in, before_out = tree_digest(str(tmp_path / "in")), _digests(out, layout)
    before_names = sorted(os.listdir(os.path.dirname(out)))
    r = cli_subprocess(*args, env=ENV, preexec=_fsize_limit(limit))
    line = _one_error_line(r)
    shown = out + "/" if OUTPUTS[layout][2] else out
    assert line == f"mconv: error: {shown}: cannot write output: File too large"
    assert _digests(out, layout) == before_out
    assert sorted(os.listdir(os.path.dirname(out))) == before_names   # no temporary left either
    assert bool(before_names) == existing
    assert tree_digest(str(tmp_path / "in")) == before_in


# -- the output is the input ---------------------------------------------------------------------------------

def _file_input(tmp_path: Path) -> str:
    return valid_file(str(tmp_path / "in"))


def _out_same(src: str, tmp_path: Path) -> str:
    return src


def _out_symlink(src: str, tmp_path: Path) -> str:
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    return str(link)


def _out_hardlink(src: str, tmp_path: Path) -> str:
    link = tmp_path / "hard.safetensors"
    os.link(src, link)
    return str(link)


def _out_relative(src: str, tmp_path: Path) -> str:
    return os.path.relpath(os.path.join(os.path.dirname(src), ".", os.path.basename(src)))


def _out_dir_symlink(src: str, tmp_path: Path) -> str:
    link = tmp_path / "indir"
    link.symlink_to(os.path.dirname(src))
    return str(link / os.path.basename(src))


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("make_out", [_out_same, _out_symlink, _out_hardlink, _out_relative, _out_dir_symlink],
                         ids=lambda f: f.__name__[5:])
def test_output_that_is_the_input_is_refused(tmp_path: Path, make_out: Callable[[str, Path], str], force: bool) -> None:
    src = _file_input(tmp_path)
    out = make_out(src, tmp_path)
    before = tree_digest(str(tmp_path))
    r = cli_subprocess("translate", src, out, *(["--force"] if force else []), env=ENV)
    line = _one_error_line(r)
    assert "refusing to overwrite it" in line, line
    assert tree_digest(str(tmp_path)) == before


@pytest.mark.parametrize("target", ["dir", "config.json", "tokenizer.model", "shard", "parent"])
def test_output_over_a_directory_input_is_refused(tmp_path: Path, target: str) -> None:
    src = valid_hf_dir(str(tmp_path / "hf"), sp=sp_model_bytes(), shards=2)
    out: Optional[str] = {"dir": src + "/", "config.json": os.path.join(src, "config.json"),
                          "tokenizer.model": os.path.join(src, "tokenizer.model"),
                          "shard": os.path.join(src, "model-00001-of-00002.safetensors"),
                          "parent": str(tmp_path) + "/"}[target]
    before = tree_digest(str(tmp_path))
    r = cli_subprocess("translate", "--to", "safetensors", src, out, "--force", env=ENV)
    line = _one_error_line(r)
    assert "refusing to overwrite it" in line, line
    assert tree_digest(str(tmp_path)) == before


def _layout_input(tmp_path: Path, fmt: str) -> str:
    """A Meta (pth) or llama2.c folder made by mconv from the tiny model (with its tokenizer)."""
    from testlib import cli

    root = str(tmp_path / fmt)
    r = cli("translate", "--to", fmt, valid_file(str(tmp_path / "src")), root + "/")
    assert r.rc == 0, r
    return root


#: (input folder format, what OUT is, extra options): every output that would overwrite a file of
#: the input, through the folder, one of its files, or the sidecar written beside a file output
SAME_FILE = [
    ("pth", "dir", []), ("pth", "consolidated.00.pth", []), ("pth", "params.json", []),
    ("pth", "tokenizer.model", []), ("pth", "parent", []),
    ("llama2c", "dir", []), ("llama2c", "model.bin", []), ("llama2c", "tokenizer.bin", []),
    ("llama2c", "parent", []),
    # a file output whose tokenizer.bin sidecar (beside it, or named by -O tokenizer=) is the input's
    ("llama2c", "other.bin", []), ("llama2c", "../elsewhere.bin", ["-O", "tokenizer={src}/tokenizer.bin"]),
    ("pth", "../elsewhere.bin", ["-O", "tokenizer={src}/tokenizer.model"]),
]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("fmt,target,options", SAME_FILE, ids=[f"{f}-{t}-{len(o)}" for f, t, o in SAME_FILE])
def test_output_over_a_layout_input_or_its_sidecar_is_refused(tmp_path: Path, fmt: str, target: str,
                                                               options: list[str], force: bool) -> None:
    src = _layout_input(tmp_path, fmt)
    out = {"dir": src + "/", "parent": str(tmp_path) + "/"}.get(target, os.path.join(src, target))
    to = "llama2c" if target.endswith(".bin") or options else fmt
    before = tree_digest(str(tmp_path))
    r = cli_subprocess("translate", "--allow-lossy", "--from", fmt, "--to", to, *[o.format(src=src) for o in options],
                       src, out, *(["--force"] if force else []), env=ENV)
    line = _one_error_line(r)
    assert "refusing to overwrite it" in line, line
    assert tree_digest(str(tmp_path)) == before


def test_input_untouched_by_successful_runs(tmp_path: Path) -> None:
    src = valid_hf_dir(str(tmp_path / "hf"), sp=sp_model_bytes(), shards=2)
    before = tree_digest(src)
    for args in (["inspect", src], ["translate", src, str(tmp_path / "a.safetensors")],
                 ["translate", "--to", "safetensors", src, str(tmp_path / "b") + "/"],
                 ["translate", "--to", "safetensors", src, str(tmp_path / "b") + "/", "--force"]):
        r = cli_subprocess(*args, env=ENV)
        assert r.rc == 0, r
        assert tree_digest(src) == before


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two_renames"])
def test_force_replaces_a_directory_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    from mconv.core import io
    from testlib import cli

    if not exchange:  # systems without renameat2(RENAME_EXCHANGE) take the two-rename path
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    src, out, args = _setup(tmp_path, "dir", True)
    Path(out, "stale.txt").write_text("from the old output")
    r = cli(*args)
    assert (r.rc, r.err) == (0, ""), r
    assert "stale.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert sorted(os.listdir(os.path.dirname(out))) == [os.path.basename(out)]
    _assert_same_model(src, out)
