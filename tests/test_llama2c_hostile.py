"""Malformed llama2.c .bin / tokenizer.bin inputs are refused with exact messages, never a crash or
a huge allocation (cases in hostile_llama2c.py)."""

from __future__ import annotations

import os

import pytest

import hostile_llama2c as H
from testlib import cli, cli_subprocess

from mconv.core.convert import open_model
from mconv.plugins import FormatError


def materialize(root, case: H.Case) -> str:
    os.makedirs(root, exist_ok=True)
    for name, blob in case.files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(blob)
    return os.path.join(root, case.target) if case.target else str(root)


@pytest.mark.parametrize("case", H.all_cases(), ids=lambda c: c.name)
def test_refused_with_exact_message(tmp_path, case):
    path = materialize(tmp_path, case)
    with pytest.raises(FormatError) as e:
        open_model(path, "llama2c")
    assert str(e.value) == case.expected(str(tmp_path))


def test_a_plausible_v0_of_the_wrong_size_is_sniffed_and_explained(tmp_path):
    case = {c.name: c for c in H.model_cases()}["truncated_v0"]
    path = materialize(tmp_path, case)
    r = cli("inspect", path)
    assert r.rc == 2 and r.err == f"mconv: error: {case.expected(str(tmp_path))}\n"


def test_valid_tiny_files_read(tmp_path):
    """The builders' baseline is valid, so each case fails for its own reason."""
    (tmp_path / "model.bin").write_bytes(H.v0_file())
    (tmp_path / "tokenizer.bin").write_bytes(H.tokenizer_bytes(H.GOOD_TOKENS + [b"<0x0A>"]))
    m = open_model(str(tmp_path))
    assert m.hparams["n_vocab"] == 4 and m.tokenizer is not None
    assert m.tokenizer.tokens == (b"<unk>", b"<s>", b"</s>", b"\xe2\x96\x81a")
    assert m.tokenizer.token_types.tolist() == [2, 3, 3, 1]
    assert [s.detail for s in m.history if s.kind == "note"] == [
        f"{tmp_path / 'tokenizer.bin'} has 14 bytes after the first 4 (vocab_size) tokens; they are ignored, "
        "as run.c does"]
    r = cli("inspect", tmp_path / "model.bin")
    assert r.rc == 0 and "tokenizer: llama, 4 tokens, bos=1 eos=2 unk=0 pad=None" in r.out


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("name", ["overflow_v0", "overflow_v2", "tok_huge_length"])
def test_worst_cases_under_a_1_gib_address_space_limit(tmp_path, name):
    case = {c.name: c for c in H.all_cases()}[name]
    path = materialize(tmp_path, case)
    r = cli_subprocess("inspect", "--from", "llama2c", path, preexec=_limit_memory,
                       env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MCONV_LOAD_PLUGINS": ""})
    assert r.rc == 2 and r.err == f"mconv: error: {case.expected(str(tmp_path))}\n", r.err
