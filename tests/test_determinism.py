"""The same input and options give byte-identical output across runs, hash seeds and locales, for
every registered writable format and each of its layouts (a file; its directory layout if it has one),
sidecars included (llama2.c's tokenizer.bin beside a file output): each run writes into a directory
of its own, and the whole directory is compared.

Output recipes are derived from the Format itself (``--to NAME``, a file named after its first
extension, ``OUT/`` for the directory layout), so a new format is covered without a table entry;
``EXTRA_ARGS`` holds the writer options a format may need, ``VARIANTS`` further writer paths worth
pinning (quantization, other versions and layouts), and ``SIDECARS`` the files a file output must
have beside it.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import pytest

from corpus.builders import tree_digest
from mconv.core.registry import get_registry
from testlib import GQA, cli_subprocess, random_model, sp_tokenizer

#: format name -> extra translate arguments it needs (none so far)
EXTRA_ARGS: dict[str, list[str]] = {}
#: format name -> (label, translate arguments) of further file outputs: the quantizers, other
#: versions and layouts are deterministic too
VARIANTS: dict[str, list[tuple[str, list[str]]]] = {
    "gguf": [("q8_0", ["--dtype", "q8_0"]), ("q4_0", ["--dtype", "q4_0"])],
    "ggml": [("q8_0", ["--dtype", "q8_0"])],
    "llama2c": [("v1", ["-O", "version=1"]), ("v2", ["-O", "version=2"])],
    "pth": [("checkpoint", ["-O", "layout=checkpoint"])],
}
#: format name -> files a file output writes beside itself (the source has a tokenizer)
SIDECARS: dict[str, list[str]] = {"llama2c": ["tokenizer.bin"]}

#: (PYTHONHASHSEED, LC_ALL) of each run; every run's output must equal the first's
ENVIRONMENTS = [("0", "C"), ("1", "C.UTF-8"), ("random", "C.UTF-8"), ("random", "C")]


def _targets() -> list[tuple[str, str, str, list[str]]]:
    """(format, layout label, output name, extra arguments) of every output to pin."""
    out = []
    reg = get_registry()
    for name in sorted(n for n, e in reg.formats.items() if e.format.can_write):
        fmt = reg.format(name)
        file_name = "model" + (fmt.extensions[0] if fmt.extensions else ".bin")
        out.append((name, "file", file_name, []))
        if fmt.has_directory_layout:
            out.append((name, "dir", "model/", []))
        out += [(name, f"file-{label}", file_name, args) for label, args in VARIANTS.get(name, [])]
    return out


TARGETS = _targets()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bf16 GQA model with a trained SentencePiece tokenizer, as a safetensors file."""
    from mconv.core.convert import write_model

    path = str(tmp_path_factory.mktemp("det") / "source.safetensors")
    model = random_model(GQA, dtype="bf16", seed=7, tokenizer=sp_tokenizer())
    model.metadata = {"general.name": "déterminisme", "b": "1", "a": "2"}
    write_model(model, path, get_registry().format("safetensors"), quiet=True)
    return path


@pytest.mark.parametrize("fmt,layout,out_name,args", TARGETS, ids=[f"{f}-{lay}" for f, lay, _, _ in TARGETS])
def test_output_is_byte_identical(source: str, tmp_path: Path, fmt: str, layout: str, out_name: str,
                                  args: list[str]) -> None:
    before = tree_digest(source)

    def run(i: int) -> dict[str, tuple[int, str]]:
        hashseed, locale = ENVIRONMENTS[i]
        run_dir = os.path.join(str(tmp_path), f"run{i}")
        out = os.path.join(run_dir, out_name)  # (pathlib would drop the trailing /)
        env = {"MCONV_LOAD_PLUGINS": "", "PYTHONHASHSEED": hashseed, "LC_ALL": locale, "LANG": locale}
        r = cli_subprocess("translate", "--to", fmt, "--allow-lossy", *EXTRA_ARGS.get(fmt, []), *args, source, out,
                           env=env)
        assert (r.rc, r.err) == (0, ""), (ENVIRONMENTS[i], r)
        digest = tree_digest(run_dir)   # the output and anything written beside it
        assert digest, out
        if layout.startswith("file"):
            assert sorted(digest) == sorted([out_name] + SIDECARS.get(fmt, [])), digest
        return digest

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        digests = list(pool.map(run, range(len(ENVIRONMENTS))))
    for env, digest in zip(ENVIRONMENTS[1:], digests[1:]):
        assert digest == digests[0], f"output differs under PYTHONHASHSEED/LC_ALL={env}"
    assert tree_digest(source) == before
    if layout == "dir":
        assert len(digests[0]) > 2, digests[0]   # the directory and at least two files in it


def test_every_writable_format_is_covered() -> None:
    reg = get_registry()
    writable = {n for n, e in reg.formats.items() if e.format.can_write}
    assert writable and writable == {f for f, _, _, _ in TARGETS}
    assert set(VARIANTS) <= writable and set(SIDECARS) <= writable
    assert os.environ.get("MCONV_LOAD_PLUGINS") == ""
