"""Property-based fuzzing of every registered reader (hypothesis): valid small seeds, mutated
(byte flips, truncation, splices, header integers, hostile JSON values), read through the format and
touched all over (tensor bytes and values, tokenizer, architecture check).  Anything raised other
than MconvError fails.

CI: a derandomized profile with a fixed number of examples per seed, at most ~60 s in all.  On
demand: ``MCONV_FUZZ_SECONDS=600 pytest tests/test_fuzz.py`` spends that many seconds in total,
split over the seeds, with fresh random examples.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from corpus.plugins import PLUGINS, fake_site
from corpus.seeds import Seed, apply_ops, collect_seeds, exercise, mutator, ops_strategy
from corpus.terminal import say
from mconv.core.registry import get_registry, reset_registry

SEEDS = collect_seeds()
#: readable built-in formats (the session loads no plugin) ...
READABLE = sorted(name for name, e in get_registry().formats.items() if e.format.can_read)
#: ... and the seeds that reach a reader: a built-in one, or one of this repository's plugins
ACTIVE = [s for s in SEEDS if s.format in READABLE or (s.plugins and set(s.plugins) <= set(PLUGINS))]


def _load_plugins(names: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this repository's plugins ``names`` load (no pip: a dist-info folder on sys.path)."""
    if names:
        for path in fake_site(str(tmp_path / "plugin-site"), names):
            monkeypatch.syspath_prepend(path)
        monkeypatch.setenv("MCONV_LOAD_PLUGINS", ",".join(names))
    reset_registry()

#: examples per seed in CI, all seeds together kept near CI_TOTAL (an example costs about 2 ms)
CI_TOTAL = 20000
CI_PER_SEED = max(100, min(1000, CI_TOTAL // max(1, len(ACTIVE))))
FUZZ_SECONDS = float(os.environ.get("MCONV_FUZZ_SECONDS", "0") or 0)


def test_every_readable_format_has_a_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _load_plugins(tuple(PLUGINS), tmp_path, monkeypatch)
    readable = sorted(name for name, e in get_registry().formats.items() if e.format.can_read)
    assert set(READABLE) < set(readable), "the repository's plugins add formats"
    missing = [f for f in readable if not any(s.format == f for s in ACTIVE)]
    assert not missing, f"no fuzz seed for {missing}: add fuzz_seeds() to tests/hostile_<name>.py"


@pytest.mark.parametrize("seed", ACTIVE, ids=lambda s: s.id)
def test_reader_survives_mutations(seed: Seed, tmp_path, request: pytest.FixtureRequest,  # type: ignore[no-untyped-def]
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _load_plugins(seed.plugins, tmp_path, monkeypatch)
    path, target = seed.build(str(tmp_path))
    with open(target, "rb") as f:
        original = f.read()
    assert exercise(seed.format, path) == "accepted", "the seed itself must be valid"
    mutate = mutator(seed, original)
    repacked = mutate([])
    if repacked != original:  # a layered seed: its repack of the unchanged payload must be valid too
        with open(target, "wb") as f:
            f.write(repacked)
        assert exercise(seed.format, path) == "accepted", "the seed's repack must be valid"
    outcomes: collections.Counter[str] = collections.Counter()

    def prop(ops: list[tuple[object, ...]]) -> None:
        data = mutate(ops)
        with open(target, "wb") as f:
            f.write(data)
        outcomes[exercise(seed.format, path)] += 1

    def run(**profile: object) -> None:
        test = lambda ops: prop(ops)  # noqa: E731 - a fresh function: hypothesis decorates it once
        given(ops_strategy())(settings(deadline=None, database=None, suppress_health_check=list(HealthCheck),
                                       print_blob=True, **profile)(test))()  # type: ignore[arg-type]

    start = time.perf_counter()
    if FUZZ_SECONDS > 0:
        budget = FUZZ_SECONDS / len(ACTIVE)
        while time.perf_counter() - start < budget:
            run(derandomize=False, max_examples=500)
    else:
        run(derandomize=True, max_examples=CI_PER_SEED)
    with open(target, "wb") as f:
        f.write(original)
    say(request, f"fuzz {seed.id}: {sum(outcomes.values())} examples in {time.perf_counter() - start:.1f} s "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))})")
    TOTALS[seed.format] += sum(outcomes.values())


#: examples run per format in this session (summed over its seeds)
TOTALS: collections.Counter[str] = collections.Counter()


def test_zz_summary(request: pytest.FixtureRequest) -> None:
    """One line with the examples per format (runs last: pytest keeps the file's order)."""
    if TOTALS:
        say(request, "fuzz examples per format: " + ", ".join(f"{k} {v}" for k, v in sorted(TOTALS.items()))
            + f"; total {sum(TOTALS.values())}")


def test_mutations_apply() -> None:
    seed = Seed("x", "y", lambda d: (d, d), lambda b: [(0, 2)], lambda b, k, lit: b"[" + lit + b"]")
    assert apply_ops(seed, b"abcd", [("flip", 5, 1)]) == b"accd"
    assert apply_ops(seed, b"abcd", [("truncate", 7)]) == b"ab"
    assert apply_ops(seed, b"abcd", [("splice", 1, 2, b"XY")]) == b"aXYd"
    assert apply_ops(seed, b"abcd", [("copy", 0, 2, 2)]) == b"abab"
    assert apply_ops(seed, b"abcd", [("int", 3, 2**16 + 5, False)]) == b"\x05\x00cd"
    assert apply_ops(seed, b"abcd", [("int", 0, -1, True)]) == b"\x03\x00cd"
    assert apply_ops(seed, b"abcd", [("token", 0, b"1")]) == b"[1]"
