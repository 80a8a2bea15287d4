"""Summary lines that reach the terminal even while pytest captures output."""

from __future__ import annotations

import pytest


def say(request: pytest.FixtureRequest, line: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:
        print(line)
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)
