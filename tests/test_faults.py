"""Faults while writing: a killed process, a full disk, an output that is the input.

Promises (DESIGN.md "Temp files", "Streaming"): output is built under ``.<OUT>.mconv-<pid>.tmp`` and
renamed into place, so nothing ever appears at OUT unless it is complete; ``--force`` replaces an old
output atomically (the old one survives a failed or killed run); the next run removes temporaries
of dead processes (and only those); the input is never written.
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

LAYOUTS = ("file", "dir")


def _setup(tmp_path: Path, layout: str, existing: bool) -> tuple[str, str, list[str]]:
    """(input, OUT, translate args); with ``existing`` an older output is already at OUT."""
    src = valid_file(str(tmp_path / "in"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if layout == "file":
        out = str(out_dir / "model.safetensors")
        args = ["translate", src, out]
        if existing:
            valid_file(str(out_dir), "model.safetensors", tokenizer=False)
    else:
        out = str(out_dir / "hf")
        args = ["translate", "--to", "safetensors", src, out + "/"]
        if existing:
            valid_hf_dir(out)
    return src, out, args + (["--force"] if existing else [])


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
    before_in, before_out = tree_digest(str(tmp_path / "in")), tree_digest(out)
    p = _paused(tmp_path, args)
    temp = _temp(out, p.pid)
    assert os.path.exists(temp), "the child was writing its temporary output"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    # nothing new at OUT: absent, or the old output untouched
    assert tree_digest(out) == before_out
    assert os.path.exists(temp), "a killed process cannot clean up; the next run does"
    r = cli_subprocess(*args, env=ENV)
    assert (r.rc, r.err) == (0, ""), r
    assert not os.path.lexists(temp)
    assert sorted(os.listdir(os.path.dirname(out))) == [os.path.basename(out)]
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


@pytest.mark.parametrize("existing", [False, True], ids=["new", "force_replace"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("limit", [0, 4096, 12 * 1024])
def test_full_disk_fails_cleanly(tmp_path: Path, layout: str, existing: bool, limit: int) -> None:
    src, out, args = _setup(tmp_path, layout, existing)
    before_in, before_out = tree_digest(str(tmp_path / "in")), tree_digest(out)
    r = cli_subprocess(*args, env=ENV, preexec=_fsize_limit(limit))
    line = _one_error_line(r)
    shown = out + "/" if layout == "dir" else out
    assert line == f"mconv: error: {shown}: cannot write output: File too large"
    assert tree_digest(out) == before_out
    assert sorted(os.listdir(os.path.dirname(out))) == ([os.path.basename(out)] if existing else [])
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
