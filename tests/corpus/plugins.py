"""Third-party plugins of this repository (plugins/<dist>/) made loadable without pip, for the corpus
children and the in-process fuzzer: a ``*.dist-info`` folder declaring the entry point, on sys.path
together with the plugin's code (the same trick as conftest's ``install_fake_dist``).

A plugin loads only when ``MCONV_LOAD_PLUGINS`` names it (the test session sets it empty), so
putting these folders on sys.path changes nothing for other tests or cases."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: entry-point name -> (distribution name, module, folder holding the module)
PLUGINS: dict[str, tuple[str, str, str]] = {
    "npz": ("mconv-npz", "mconv_npz", os.path.join(REPO, "plugins", "mconv-npz")),
}


def fake_site(root: str, names: tuple[str, ...] = tuple(PLUGINS)) -> list[str]:
    """Write dist-info folders for ``names`` under ``root``; the sys.path entries to add."""
    paths = [root]
    for name in names:
        dist, module, code = PLUGINS[name]
        info = os.path.join(root, f"{dist.replace('-', '_')}-0.0.1.dist-info")
        os.makedirs(info, exist_ok=True)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write(f"[mconv]\n{name} = {module}\n")
        paths.append(code)
    return paths
