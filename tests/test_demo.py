"""The demo the README's first command runs works on the shipped model."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_demo_script_runs(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    p = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh"), str(tmp_path / "out")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "wrote  " in p.stdout
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]
