"""CLI contracts: exit codes, one-line errors, --to inference, safe writes, loss semantics, inspect."""

from __future__ import annotations

import json
import os

import pytest
from testlib import GQA, cli, cli_subprocess, random_model, sp_tokenizer

from mconv.core.convert import open_model, write_model
from mconv.core.registry import get_registry
from mconv.plugins import Format, Model, WriteContext


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src.safetensors"
    write_model(random_model(GQA, dtype="bf16", seed=11, tokenizer=sp_tokenizer()), str(path),
                get_registry().format("safetensors"))
    return path


def test_translate_prints_what_it_did(tmp_path, src):
    res = cli("translate", src, tmp_path / "out.safetensors")
    assert res.rc == 0, res.err
    lines = res.out.splitlines()
    assert lines[0] == f"read   {src} (safetensors, 21 tensors, 91.3 KiB)"
    assert lines[-1].startswith(f"wrote  {tmp_path / 'out.safetensors'} (safetensors, 21 tensors, 91.3 KiB) in ")


@pytest.mark.parametrize("args,message", [
    ([], None),
    (["translate"], "the following arguments are required: IN, OUT"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate' (choose from 'translate', 'inspect', 'formats', 'plugins'"),
    (["translate", "{src}", "{tmp}/out.xyz"], "{tmp}/out.xyz: the suffix .xyz does not name exactly one format (none); "
                                              "use --to"),
    (["translate", "{src}", "{tmp}/out.bin"], "{tmp}/out.bin: the suffix .bin does not name exactly one format"),
    (["translate", "{src}", "{tmp}/out"], "{tmp}/out: cannot tell the output format from a name without a suffix; "
                                          "use --to"),
    (["translate", "{src}", "{tmp}/d/"], "{tmp}/d/: a directory output needs --to"),
    (["translate", "{tmp}/missing.gguf", "{tmp}/o.safetensors"], "{tmp}/missing.gguf: no such file or directory"),
    (["translate", "{src}", "{tmp}/o.safetensors", "--to", "nope"], "unknown format 'nope' (known: "),
    (["translate", "{src}", "{tmp}/o.safetensors", "-O", "bogus=1"],
     "format safetensors has no writer option 'bogus' (options: generation_config, shard_size)"),
    (["translate", "{src}", "{tmp}/o.safetensors", "-O", "bogus"], "-O expects KEY=VALUE, got 'bogus'"),
    (["translate", "{src}", "{tmp}/d/", "--to", "safetensors", "-O", "shard_size=lots"],
     "-O shard_size=lots: not a size: 'lots'"),
    (["translate", "{src}", "{tmp}/o.safetensors", "--hparam", "n_heads=4"],
     "unknown hparam 'n_heads' (known: n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, norm_eps, rope_theta)"),
    (["translate", "{src}", "{tmp}/o.safetensors", "--hparam", "n_head=four"], "--hparam n_head=four: not a valid int"),
    (["translate", "{src}", "{tmp}/o.safetensors", "--dtype", "q9_9"], "unknown dtype 'q9_9'"),
    (["translate", "{src}", "{src}"], "output {src} is the input {src}; refusing to overwrite it"),
    (["inspect", "{src}.d"], "{src}.d: no such file or directory"),
])
def test_errors_are_one_line_with_exit_2(tmp_path, src, args, message):
    args = [a.format(src=src, tmp=tmp_path) for a in args]
    res = cli(*args)
    if message is None:  # no command: help, exit 0
        assert res.rc == 0 and "usage: mconv" in res.out
        return
    message = message.format(src=src, tmp=tmp_path)
    assert res.rc == 2, res.out
    assert res.err.startswith("mconv: error: " + message), res.err
    assert res.err.count("\n") == 1 and "Traceback" not in res.err
    assert sorted(os.listdir(tmp_path)) == ["src.safetensors"]


def test_unrecognised_input(tmp_path):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00junk" * 10)
    res = cli("inspect", junk)
    readable = ", ".join(sorted(n for n, e in get_registry().formats.items() if e.format.can_read))
    assert (res.rc, res.err) == (2, f"mconv: error: {junk}: no format recognises this file; use --from ({readable})\n")
    (tmp_path / "empty").mkdir()
    res = cli("inspect", tmp_path / "empty")
    assert res.err == f"mconv: error: {tmp_path / 'empty'}: no format recognises this directory; use --from ({readable})\n"


def test_existing_output_needs_force(tmp_path, src):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    res = cli("translate", src, out)
    assert (res.rc, res.err) == (2, f"mconv: error: {out} exists; use --force to replace it\n")
    assert out.read_bytes() == b"precious"
    assert cli("translate", src, out, "--force").rc == 0
    assert open_model(str(out)).tensors


def test_output_through_symlink_or_hardlink_to_input_is_refused(tmp_path, src):
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    before = src.read_bytes()
    for out in (link, hard):
        res = cli("translate", src, out, "--force")
        assert res.rc == 2 and res.err == f"mconv: error: output {out} is the input {src}; refusing to overwrite it\n"
    assert src.read_bytes() == before


def test_lossy_conversion_refused_without_flag(tmp_path, src):
    res = cli("translate", src, tmp_path / "o.safetensors", "--dtype", "f16")
    assert res.rc == 0, res.err  # an explicit --dtype consents to its cast
    assert "dtype: 21 tensor(s) bf16 -> f16 (converted)" in res.out

    class NoTokenizer(Format):
        name = "notok"
        extensions = (".notok",)
        dtypes = frozenset({"f32"})
        stores_tokenizer = False
        stored_hparams = frozenset()

        def write(self, model: Model, path: str, ctx: WriteContext) -> None:
            with open(path, "wb") as f:
                f.write(b"x")

    reg = get_registry()
    reg._add_format(NoTokenizer, "test")
    res = cli("translate", src, tmp_path / "o.notok")
    assert res.rc == 2
    assert res.err == ("mconv: error: converting to notok would lose information: tokenizer (384 tokens): notok "
                       "cannot store it; dropped; hparam n_ctx: 128 cannot be stored in notok and cannot be recovered "
                       "from the tensors; hparam n_head: 8 cannot be stored in notok and cannot be recovered from the "
                       "tensors; hparam n_head_kv: 2 cannot be stored in notok and cannot be recovered from the "
                       "tensors; hparam norm_eps: 1e-05 cannot be stored in notok and cannot be recovered from the "
                       "tensors (and 1 more); pass --allow-lossy to accept\n")
    assert not (tmp_path / "o.notok").exists()
    res = cli("translate", src, tmp_path / "o.notok", "--allow-lossy")
    assert res.rc == 0
    assert "dtype: 21 tensor(s) bf16 -> f32 (widened losslessly)" in res.out
    assert "LOSS: tokenizer (384 tokens): notok cannot store it; dropped" in res.out


def test_failed_write_leaves_nothing(tmp_path, src):
    class Failing(Format):
        name = "failing"
        extensions = (".fail",)
        dtypes = frozenset({"bf16"})

        def write(self, model: Model, path: str, ctx: WriteContext) -> None:
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise OSError(28, "No space left on device", path)

    get_registry()._add_format(Failing, "test")
    res = cli("translate", src, tmp_path / "o.fail")
    assert res.rc == 2
    assert res.err.startswith("mconv: error: ") and "No space left on device" in res.err
    assert sorted(os.listdir(tmp_path)) == ["src.safetensors"]


def test_stale_temp_of_dead_process_is_removed(tmp_path, src):
    dead = tmp_path / ".out.safetensors.mconv-999999.tmp"
    dead.write_bytes(b"left behind by a killed run")
    alive = tmp_path / f".out.safetensors.mconv-{os.getppid()}.tmp"
    alive.write_bytes(b"another live run")
    assert cli("translate", src, tmp_path / "out.safetensors").rc == 0
    assert not dead.exists() and alive.exists()


def test_parent_folders_are_created(tmp_path, src):
    out = tmp_path / "a" / "b" / "c.safetensors"
    assert cli("translate", src, out).rc == 0
    assert out.is_file()


def test_inspect_reads_headers_only_and_shows_origins(tmp_path, src):
    # corrupt every tensor byte: inspect must not notice, translate must copy them as they are
    blob = bytearray(src.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    blob[8 + n:] = b"\xff" * (len(blob) - 8 - n)
    src.write_bytes(bytes(blob))
    res = cli("inspect", src)
    assert res.rc == 0, res.err
    assert "format:    safetensors" in res.out
    assert "  n_head       8              (safetensors metadata)" in res.out
    assert "tokenizer: llama, 384 tokens, bos=1 eos=2 unk=0 pad=None" in res.out
    assert "  blk.0.attn_k.weight       bf16     8x32                      512" in res.out
    res = cli("inspect", "--json", src)
    data = json.loads(res.out)
    assert data["hparams"]["n_head_kv"] == 2 and data["tensors"][0]["name"] == "token_embd.weight"


def test_inspect_does_not_read_tensor_bytes(tmp_path, src, monkeypatch):
    from mconv.core import ir

    calls = []
    monkeypatch.setattr(ir.FileSlice, "read_rows", lambda self, a, b: calls.append((a, b)))
    monkeypatch.setattr(ir.MappedFile, "view", lambda self, a, b: calls.append((a, b)))
    assert cli("inspect", src).rc == 0
    assert calls == []


def test_hparam_override_wins(tmp_path, src):
    res = cli("translate", src, tmp_path / "o.safetensors", "--hparam", "n_ctx=4096", "--hparam", "rope_theta=1e6")
    assert res.rc == 0, res.err
    m = open_model(str(tmp_path / "o.safetensors"))
    assert (m.hparams["n_ctx"], m.hparams["rope_theta"]) == (4096, 1e6)
    res = cli("inspect", src, "--hparam", "n_ctx=99")
    assert "  n_ctx        99             (--hparam)" in res.out


def test_wrong_hparam_against_shapes_is_refused(tmp_path, src):
    res = cli("translate", src, tmp_path / "o.safetensors", "--hparam", "n_head=4")
    assert res.rc == 2
    assert res.err == (f"mconv: error: {src}: tensor 'blk.0.attn_k.weight': shape (8, 32) does not match the "
                       "hparams, which imply (16, 32)\n")


def test_module_entry_and_console_script(tmp_path, src):
    res = cli_subprocess("inspect", src)
    assert res.rc == 0 and "format:    safetensors" in res.out
    res = cli_subprocess("translate", src, tmp_path / "missing" / "x.what")
    assert res.rc == 2 and res.err.startswith("mconv: error: ") and "Traceback" not in res.err


def test_help_does_not_import_numpy():
    import subprocess
    import sys

    code = ("import sys; from mconv.core.cli import build_parser; build_parser(with_plugins=False)"
            ".parse_args(['formats']); print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "False"

