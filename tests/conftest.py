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
