"""Malformed GGUF and legacy GGML inputs: each refused with an exact message and offset, never a
crash, and with bounded memory (worst cases run under a 1 GiB address-space limit)."""

from __future__ import annotations

import resource

import pytest
from hostile_gguf import GGML_CASES, GGUF_CASES, Case, ARCH, gguf_file, one_tensor
from testlib import cli, cli_subprocess


def _refused(tmp_path, case: Case, fmt: str) -> None:
    path = tmp_path / f"{case.id}.{fmt}"
    path.write_bytes(case.data)
    res = cli("inspect", "--from", fmt, path)
    assert (res.rc, res.err) == (2, f"mconv: error: {path}: offset {case.offset}: {case.message}\n")


@pytest.mark.parametrize("case", GGUF_CASES, ids=[c.id for c in GGUF_CASES])
def test_malformed_gguf_refused(tmp_path, case):
    _refused(tmp_path, case, "gguf")


@pytest.mark.parametrize("case", GGML_CASES, ids=[c.id for c in GGML_CASES])
def test_malformed_ggml_refused(tmp_path, case):
    _refused(tmp_path, case, "ggml")


def test_sniffed_without_from(tmp_path):
    for case, suffix in ((GGUF_CASES[0], "gguf"), (GGML_CASES[0], "bin")):
        path = tmp_path / f"x.{suffix}"
        path.write_bytes(case.data)
        res = cli("inspect", path)
        assert res.err == f"mconv: error: {path}: offset {case.offset}: {case.message}\n"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


WORST = ["huge-kv-count", "array-over-limit", "string-over-1GiB", "element-count-overflow", "tensor-past-eof"]


def test_worst_cases_in_bounded_memory(tmp_path):
    """Counts and lengths that would ask for terabytes are refused before anything is allocated;
    a valid file still opens under the same limit, so the limit is not what refuses them."""
    info, data = one_tensor()
    ok = tmp_path / "ok.gguf"
    ok.write_bytes(gguf_file([ARCH], [info], data))
    env = {"OPENBLAS_NUM_THREADS": "1", "MCONV_LOAD_PLUGINS": ""}
    args = []
    for case in GGUF_CASES:
        if case.id in WORST:
            path = tmp_path / f"{case.id}.gguf"
            path.write_bytes(case.data)
            args.append((path, case))
    ggml = next(c for c in GGML_CASES if c.id == "huge-n_vocab")
    (tmp_path / "v.bin").write_bytes(ggml.data)
    args.append((tmp_path / "v.bin", ggml))
    # one child per case would cost ~1 s each; a tiny driver runs them all in one limited child
    script = tmp_path / "drive.py"
    script.write_text(
        "import sys\nfrom mconv.core.cli import main\n"
        "for p in sys.argv[1:]:\n    print(main(['inspect', p]), flush=True)\n")
    import subprocess
    import sys
    import os
    p = subprocess.run([sys.executable, str(script), str(ok), *(str(a) for a, _ in args)], capture_output=True,
                       text=True, preexec_fn=_limit_memory, env={**os.environ, **env}, timeout=120)
    codes = p.stdout.split()
    assert codes[0] == "2" or "hparam" in p.stderr  # the one-tensor file has no full llama model
    errs = p.stderr.strip().splitlines()
    for (path, case), line in zip(args, errs[-len(args):]):
        assert line == f"mconv: error: {path}: offset {case.offset}: {case.message}"
    assert codes[1:] == ["2"] * len(args)
