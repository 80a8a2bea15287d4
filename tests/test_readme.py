"""The README's commands are the ones CI and the demo use."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_readme_has_exactly_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    assert "examples/demo.sh" in cmds[0] and "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == readme_commands()[1]


def test_demo_model_is_small_and_complete():
    model = ROOT / "examples" / "pydoc-llama"
    files = sorted(p.name for p in model.iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                     "tokenizer.model", "tokenizer_config.json"]
    assert sum(p.stat().st_size for p in model.iterdir()) < 2 * 1024 * 1024
