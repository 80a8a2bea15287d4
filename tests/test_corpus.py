"""The malformed-input corpus (tests/corpus/make_corpus.py and every tests/hostile_*.py) through the
real command line.

Every case runs ``mconv translate CASE OUT.safetensors`` and ``mconv inspect CASE`` in children
limited to 1 GiB of address space and 20 s per run, and must end with exactly one
``mconv: error: ...`` line naming the expected fault (the exact line, for the cases of the formats'
hostile modules), exit code 2, no traceback, no output or temporary file, and the case's files
untouched.  Cases of a plugin format (npz) load it in their child.  A summary line gives the
per-format counts.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from corpus import make_corpus
from corpus.builders import meta_params, sp_model_bytes, tree_digest, valid_file, valid_hf_dir
from corpus.make_corpus import Case, collect_cases, counts, write_corpus
from corpus.runner import run_corpus, run_jobs
from corpus.terminal import say

CASES = collect_cases()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("corpus")
    cases_dir, out_dir = str(root / "cases"), str(root / "out")
    inputs = write_corpus(cases_dir, CASES)
    result = run_corpus(CASES, inputs, cases_dir, out_dir)
    say(request, result.summary())
    return result


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_refused_cleanly(report, case_id: str) -> None:  # type: ignore[no-untyped-def]
    problems = report.problems(case_id)
    assert not problems, "\n".join(problems)


def test_corpus_covers_every_builtin_input() -> None:
    n = counts(CASES)
    for fmt in ("safetensors", "config.json", "params.json", "tokenizer.model", "input"):
        assert n.get(fmt, 0) >= 5, n


def test_corpus_covers_every_reader_and_variant() -> None:
    """Every readable format (built-in, or a plugin of this repository) has cases of its own, and so
    has each container or version a reader handles apart."""
    from corpus.plugins import PLUGINS
    from mconv.core.registry import get_registry

    n = counts(CASES)
    readable = [name for name, e in get_registry().formats.items() if e.format.can_read] + list(PLUGINS)
    for fmt in readable:
        assert n.get(fmt, 0) >= 10, (fmt, n)
    for fmt in ("pth-legacy", "tokenizer.bin"):
        assert n.get(fmt, 0) >= 8, (fmt, n)
    names = {c.id for c in CASES}
    for variant in ("ggml-v0", "ggmf-v1", "ggjt-v1", "ggjt-v2"):   # ggjt v3 is the default of the rest
        assert sum(i.startswith(f"ggml/{variant}-") for i in names) >= 5, variant
    for case in ("llama2c/short_v1", "llama2c/truncated_v1", "llama2c/v2_truncated", "llama2c/truncated_v0"):
        assert case in names
    assert all(c.plugins == ("npz",) for c in CASES if c.format == "npz")


# -- the starting points of the recipes are valid: each case fails for its own fault -------------------

VALID = {
    "file": lambda d: valid_file(d),
    "file_without_tokenizer": lambda d: valid_file(d, tokenizer=False),
    "hf_dir": lambda d: valid_hf_dir(os.path.join(d, "m")),
    "hf_dir_tokenizer_model": lambda d: valid_hf_dir(os.path.join(d, "m"), sp=sp_model_bytes()),
    "meta_params_vocab_minus_1": lambda d: valid_hf_dir(os.path.join(d, "m"), params=meta_params()),
    "sharded_with_index": lambda d: valid_hf_dir(os.path.join(d, "m"), shards=2),
}


def test_valid_starting_points_convert(tmp_path) -> None:  # type: ignore[no-untyped-def]
    jobs, outs = [], {}
    for name, build in VALID.items():
        d = tmp_path / name
        d.mkdir()
        src = build(str(d))
        outs[name] = str(tmp_path / f"{name}.out.safetensors")
        jobs.append({"id": name + "#translate", "argv": ["translate", src, outs[name]]})
        jobs.append({"id": name + "#inspect", "argv": ["inspect", src]})
    answers = run_jobs(jobs)
    for job in jobs:
        a = answers[str(job["id"])]
        assert (a["status"], a["rc"], a["err"], a["escaped"]) == ("done", 0, "", None), (job["id"], a)
    for path in outs.values():
        assert os.path.getsize(path) > 11 * 1024


# -- the runner's limits hold ------------------------------------------------------------------------

def test_runner_limits_and_recovery() -> None:
    jobs = [
        {"id": "alloc", "exec": "import numpy as np; a = np.ones(3 << 30, np.uint8)"},
        {"id": "hang", "exec": "import time; time.sleep(60)"},
        {"id": "crash", "exec": "import os; os._exit(9)"},
        {"id": "segv", "exec": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"},
        {"id": "after", "exec": "print('still here')"},
    ]
    answers = run_jobs(jobs, workers=1, timeout=3)
    assert answers["alloc"]["status"] == "done" and "MemoryError" in str(answers["alloc"]["escaped"])
    assert answers["hang"]["status"] == "hang"
    assert answers["crash"]["status"] == "crash" and "exited with 9" in str(answers["crash"]["detail"])
    assert answers["segv"]["status"] == "crash" and "exited with -11" in str(answers["segv"]["detail"])
    assert (answers["after"]["status"], answers["after"]["out"]) == ("done", "still here\n")


def test_runner_job_env_applies_to_that_job_only() -> None:
    """A case's plugins load through its job's env; the next job in the same child is back to none."""
    code = "import os; print(os.environ['MCONV_LOAD_PLUGINS'] or '-')"
    show = ("from mconv.core.registry import get_registry; "
            "print(sorted(n for n, e in get_registry().formats.items() if not e.builtin))")
    answers = run_jobs([{"id": "a", "exec": code, "env": {"MCONV_LOAD_PLUGINS": "npz"}},
                        {"id": "b", "exec": show, "env": {"MCONV_LOAD_PLUGINS": "npz"}},
                        {"id": "c", "exec": code}, {"id": "d", "exec": show}], workers=1)
    assert [answers[k]["out"] for k in "abcd"] == ["npz\n", "['npz']\n", "-\n", "[]\n"]


def test_runner_catches_output_of_c_code() -> None:
    code = "import os; os.write(2, b'from C\\n'); os.write(1, b'out\\n')"
    a = run_jobs([{"id": "c", "exec": code}], workers=1)["c"]
    assert (a["err"], a["out"]) == ("from C\n", "out\n")


# -- the contribution convention -----------------------------------------------------------------------

def test_hostile_modules_contribute_cases(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "hostile_fake.py").write_text(textwrap.dedent("""
        from corpus.make_corpus import Case

        def corpus_cases():
            return [Case("fake", "garbage", lambda d: d + "/x.fake", "no such file"),
                    ("fake", "tuple_form", lambda d: d, "no format recognises")]
    """))
    monkeypatch.setattr(make_corpus, "TESTS_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hostile_fake", raising=False)
    cases = collect_cases(["fake"])
    assert [(c.id, c.commands) for c in cases] == [("fake/garbage", ("translate", "inspect")),
                                                    ("fake/tuple_form", ("translate", "inspect"))]
    assert all(isinstance(c, Case) for c in cases)


def test_script_builds_the_corpus(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "c"
    assert make_corpus.main([str(out), "--format", "tokenizer.model"]) == 0
    names = sorted(os.listdir(out / "tokenizer.model"))
    assert names == sorted(c.name for c in CASES if c.format == "tokenizer.model")
    assert "manifest.json" in os.listdir(out)
    assert tree_digest(str(out / "tokenizer.model" / "empty" / "model" / "tokenizer.model")) == {
        ".": (0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")}
