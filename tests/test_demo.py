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


def test_executor_reproduces_the_training_scripts_logits():
    """examples/train_demo.py's torch forward pass on the bf16 weights ("Return the" with BOS)."""
    import numpy as np

    from mconv.core.convert import open_model
    from mconv.core.executor import Session

    model = open_model(str(ROOT / "examples" / "pydoc-llama"))
    ref = np.load(ROOT / "tests" / "golden" / "pydoc_llama_reference_logits.npy")
    tokens = [1, 374, 266]  # TRAINING.md: the sentencepiece ids of "Return the" after BOS
    logits = Session(model).forward(tokens)
    assert logits.shape == ref.shape == (3, 512)
    assert np.abs(logits - ref).max() < 1e-4
    assert (logits.argmax(-1) == ref.argmax(-1)).all()
