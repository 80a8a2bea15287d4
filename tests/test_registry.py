"""Plugin system: built-ins through the same hooks, entry points (no pip), duplicates, filtering."""

from __future__ import annotations

import textwrap

import pytest
from conftest import NPZ_PLUGIN_DIR, install_fake_dist
from testlib import GQA, assert_same_tensors, cli, random_model

from mconv.core.registry import DEFAULT_PLUGINS, get_registry, reset_registry
from mconv.plugins import PluginError


def test_builtins_register_through_hooks():
    reg = get_registry()
    assert "safetensors" in reg.formats and reg.formats["safetensors"].builtin
    assert reg.formats["safetensors"].plugin == "mconv.formats.safetensors"
    assert "llama" in reg.architectures
    assert all(name in reg.plugins for name in DEFAULT_PLUGINS)


def test_entry_point_plugin_loads_and_round_trips(tmp_path, npz_plugin):
    reg = get_registry()
    assert reg.formats["npz"].plugin == "npz" and not reg.formats["npz"].builtin
    # the fake dist-info (0.0.1) or, where CI installed the plugin for real, the installed copy
    assert reg.plugins["npz"].startswith("entry point mconv_npz (mconv-npz ")
    res = cli("formats")
    assert res.rc == 0
    assert any(line.startswith("npz ") and line.rstrip().endswith(" npz") for line in res.out.splitlines())
    res = cli("plugins")
    assert "npz  [entry point mconv_npz (mconv-npz " in res.out and res.out.rstrip().endswith("format npz")
    model = random_model(GQA, seed=3)
    from mconv.core.convert import open_model, write_model

    write_model(model, str(tmp_path / "m.npz"), npz_plugin)
    assert_same_tensors(model, open_model(str(tmp_path / "m.npz")))


def test_load_plugins_env_filters_entry_points(tmp_path, monkeypatch):
    install_fake_dist(tmp_path, monkeypatch, "mconv-npz", "[mconv]\nnpz = mconv_npz\n", [NPZ_PLUGIN_DIR])
    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "")
    reset_registry()
    assert "npz" not in get_registry().formats
    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "something-else")
    reset_registry()
    assert "npz" not in get_registry().formats
    monkeypatch.delenv("MCONV_LOAD_PLUGINS")
    reset_registry()
    assert "npz" in get_registry().formats


def _plugin_module(tmp_path, name: str, body: str):
    code = tmp_path / f"code-{name}"
    code.mkdir()
    (code / f"{name}.py").write_text(textwrap.dedent(body))
    return code


DUP_FORMAT = """
    from mconv.plugins import Format, hookimpl

    class Clash(Format):
        name = "safetensors"

    @hookimpl
    def register_formats(register):
        register(Clash)
"""


def test_duplicate_format_name_is_an_error_naming_both(tmp_path, monkeypatch):
    code = _plugin_module(tmp_path, "clash_plugin", DUP_FORMAT)
    install_fake_dist(tmp_path, monkeypatch, "clash", "[mconv]\nclash = clash_plugin\n", [code])
    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "clash")
    reset_registry()
    with pytest.raises(PluginError) as e:
        get_registry()
    assert str(e.value) == ("format 'safetensors' is registered by two plugins: 'mconv.formats.safetensors' "
                            "and 'clash'")
    res = cli("formats")
    assert res.rc == 2
    assert res.err == ("mconv: error: format 'safetensors' is registered by two plugins: "
                       "'mconv.formats.safetensors' and 'clash'\n")


def test_broken_plugin_is_a_clear_error(tmp_path, monkeypatch):
    code = _plugin_module(tmp_path, "broken_plugin", "raise RuntimeError('boom')\n")
    install_fake_dist(tmp_path, monkeypatch, "broken", "[mconv]\nbroken = broken_plugin\n", [code])
    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "broken")
    reset_registry()
    res = cli("formats")
    assert res.rc == 2
    assert res.err == "mconv: error: plugin 'broken' (broken_plugin) failed to load: RuntimeError: boom\n"


def test_not_a_format_is_refused(tmp_path, monkeypatch):
    code = _plugin_module(tmp_path, "odd_plugin", """
        from mconv.plugins import hookimpl

        @hookimpl
        def register_formats(register):
            register(42)
    """)
    install_fake_dist(tmp_path, monkeypatch, "odd", "[mconv]\nodd = odd_plugin\n", [code])
    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "odd")
    reset_registry()
    with pytest.raises(PluginError, match=r"plugin 'odd' registered 42, which is not a named Format"):
        get_registry()


def test_plugin_can_add_a_command(tmp_path, monkeypatch):
    code = _plugin_module(tmp_path, "cmd_plugin", """
        from mconv.plugins import hookimpl

        @hookimpl
        def register_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("name")
            p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)
    """)
    install_fake_dist(tmp_path, monkeypatch, "cmd", "[mconv]\ncmd = cmd_plugin\n", [code])
    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "cmd")
    reset_registry()
    res = cli("hello", "world")
    assert (res.rc, res.out) == (0, "hello world\n")


def test_plugin_api_is_enough_for_formats():
    """formats/* and the example plugin import only mconv.plugins (the stable API)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    files = list((root / "formats").glob("*.py")) + list((root / "plugins" / "mconv-npz").rglob("*.py"))
    assert files
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mconv"):
                assert node.module == "mconv.plugins" or node.module.startswith("mconv.formats"), (f, node.module)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(("mconv.core", "torch")), (f, alias.name)
