"""``mconv run``: prompt encoding, batched prompt + KV-cached generation, run.c's sampler, streaming."""

from __future__ import annotations

import dataclasses

import pytest

from testlib import GQA, cli, random_model, sp_tokenizer

from mconv.core.convert import write_model
from mconv.core.executor import Session
from mconv.core.registry import get_registry
from mconv.core.sampler import Sampler
from mconv.core.textcodec import TextCodec

HP = dict(GQA, n_vocab=384, n_ctx=64)
PROMPT = "Return the value"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("run") / "model.safetensors")
    write_model(random_model(HP, seed=21, tokenizer=sp_tokenizer()), path, get_registry().format("safetensors"),
                quiet=True)
    return path


def expected_text(prompt: str, steps: int, temperature: float, topp: float, seed: int) -> str:
    """run.c's loop re-derived without the KV cache: every step recomputes the whole sequence."""
    model = random_model(HP, seed=21, tokenizer=sp_tokenizer())
    codec = TextCodec(model.tokenizer)
    seq = codec.encode(prompt)
    sampler = Sampler(temperature, topp, seed)
    session = Session(model)
    while len(seq) <= steps:
        nxt = sampler.sample(session.logits(seq)[-1])
        if nxt in (1, 2):
            break
        seq.append(nxt)
    return codec.decode(seq) + "\n"


@pytest.mark.parametrize("temperature,topp,seed", [(1.0, 0.9, 42), (0.8, 0.0, 7), (0.0, 0.9, 3)])
def test_run_output_is_run_c_generation(model_file: str, temperature: float, topp: float, seed: int) -> None:
    r = cli("run", model_file, "--prompt", PROMPT, "-n", "40", "--temperature", str(temperature),
            "--top-p", str(topp), "--seed", str(seed))
    assert r.rc == 0, r.err
    assert r.out == expected_text(PROMPT, 40, temperature, topp, seed)
    assert r.out.startswith(PROMPT)
    assert r.err.startswith("prompt: ") and "tok/s" in r.err and f"seed {seed}" in r.err
    again = cli("run", model_file, "--prompt", PROMPT, "-n", "40", "--temperature", str(temperature),
                "--top-p", str(topp), "--seed", str(seed))
    assert again.out == r.out


def test_run_without_prompt_starts_from_bos(model_file: str) -> None:
    r = cli("run", model_file, "-n", "24", "--seed", "5")
    assert r.rc == 0, r.err
    assert r.out == expected_text("", 24, 1.0, 0.9, 5)
    assert "prompt: 1 tokens" in r.err
    other = cli("run", model_file, "-n", "24", "--seed", "6")
    assert other.out != r.out


def test_greedy_run_is_deterministic_without_seed(model_file: str) -> None:
    a = cli("run", model_file, "--prompt", "x", "-n", "20", "-t", "0")
    b = cli("run", model_file, "--prompt", "x", "-n", "20", "-t", "0", "--seed", "99")
    assert a.rc == b.rc == 0 and a.out == b.out == expected_text("x", 20, 0.0, 0.9, 1)


def test_steps_shorter_than_prompt_prints_only_the_fed_prompt(model_file: str) -> None:
    codec = TextCodec(sp_tokenizer())
    ids = codec.encode(PROMPT)
    r = cli("run", model_file, "--prompt", PROMPT, "-n", "2", "--seed", "1")
    assert r.rc == 0 and r.out == codec.decode(ids[:3]) + "\n"
    assert "generated: 0 tokens" in r.err


def test_run_with_llama2c_encoder_when_no_tokenizer_model(tmp_path) -> None:  # noqa: ANN001
    tok = dataclasses.replace(sp_tokenizer(), sp_model=None)
    model = random_model(HP, seed=21, tokenizer=tok)
    path = str(tmp_path / "m.safetensors")
    write_model(model, path, get_registry().format("safetensors"), quiet=True)
    r = cli("run", path, "--prompt", "café — naïve", "-n", "30", "--seed", "11")
    assert r.rc == 0, r.err
    assert r.out.startswith("café — naïve")


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "--temperature must be 0 (greedy) or more, got -1"),
    (["--top-p", "1.5"], "--top-p must be between 0 and 1, got 1.5"),
    (["--seed", "-3"], "--seed must be between 0 and 2^64-1, got -3"),
    (["-n", "-1"], "-n must be 0 (n_ctx) or more, got -1"),
    (["-n", "many"], "argument -n: not an integer: 'many'"),
])
def test_run_usage_errors(model_file: str, args: list[str], message: str) -> None:
    r = cli("run", model_file, *args)
    assert (r.rc, r.err.strip()) == (2, f"mconv: error: {message}")


def test_run_needs_a_tokenizer(tmp_path) -> None:  # noqa: ANN001
    path = str(tmp_path / "bare.safetensors")
    write_model(random_model(GQA), path, get_registry().format("safetensors"), quiet=True)
    r = cli("run", path)
    assert (r.rc, r.err.strip()) == (2, "mconv: error: the model has no tokenizer; run needs one to encode the "
                                        "prompt and print text")


def test_generation_stops_at_n_ctx(model_file: str) -> None:
    r = cli("run", model_file, "-n", "0", "--seed", "8", "-t", "1.0", "--top-p", "1.0")
    assert r.rc == 0
    assert r.out == expected_text("", 64, 1.0, 1.0, 8)
