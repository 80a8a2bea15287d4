"""Hermetic test session: only built-in plugins load unless a test says otherwise, and every
test starts from a fresh registry."""

from __future__ import annotations

import os

import pytest

os.environ["MCONV_LOAD_PLUGINS"] = ""


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch):
    from mconv.core.registry import reset_registry

    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "")
    reset_registry()
    yield
    reset_registry()


NPZ_PLUGIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins", "mconv-npz")


def install_fake_dist(tmp_path, monkeypatch: pytest.MonkeyPatch, dist: str, entry_points: str, code_dirs=()):
    """Make an entry point visible to importlib.metadata without pip: a dist-info folder on sys.path."""

    site = tmp_path / f"site-{dist}"
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    for d in [str(site), *map(str, code_dirs)]:
        monkeypatch.syspath_prepend(d)
    return site


@pytest.fixture
def npz_plugin(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """The example plugin loaded through its entry point (no pip), and only it."""
    from mconv.core.registry import get_registry, reset_registry

    install_fake_dist(tmp_path, monkeypatch, "mconv-npz", "[mconv]\nnpz = mconv_npz\n", [NPZ_PLUGIN_DIR])
    monkeypatch.setenv("MCONV_LOAD_PLUGINS", "npz")
    reset_registry()
    return get_registry().format("npz")
