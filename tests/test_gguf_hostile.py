"""Malformed GGUF and legacy GGML inputs: each refused with an exact message and offset, never a
crash, and with bounded memory (worst cases run under a 1 GiB address-space limit)."""

from __future__ import annotations

import resource

import pytest
from hostile_gguf import GGML_CASES, GGUF_CASES, Case
from testlib import GQA, cli, cli_subprocess, random_model, sp_tokenizer

from mconv.core.convert import write_model
from mconv.core.registry import get_registry


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
    """Counts and lengths that would ask for terabytes are refused before anything is allocated,
    in a child limited to 1 GiB of address space; a valid file still opens under the same limit, so
    the limit is not what refuses them."""
    ok = tmp_path / "ok.gguf"
    write_model(random_model(GQA, seed=1, tokenizer=sp_tokenizer()), str(ok), get_registry().format("gguf"),
                quiet=True)
    env = {"OPENBLAS_NUM_THREADS": "1", "MCONV_LOAD_PLUGINS": ""}
    res = cli_subprocess("inspect", ok, env=env, preexec=_limit_memory, timeout=120)
    assert res.rc == 0, res.err
    cases = [(c, "gguf") for c in GGUF_CASES if c.id in WORST] + \
            [(c, "bin") for c in GGML_CASES if c.id == "huge-n_vocab"]
    for case, suffix in cases:
        path = tmp_path / f"{case.id}.{suffix}"
        path.write_bytes(case.data)
        res = cli_subprocess("inspect", path, env=env, preexec=_limit_memory, timeout=120)
        assert (res.rc, res.err) == (2, f"mconv: error: {path}: offset {case.offset}: {case.message}\n")
