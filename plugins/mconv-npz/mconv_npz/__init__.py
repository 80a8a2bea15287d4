"""mconv-npz: the whole mconv IR in a NumPy ``.npz`` archive (an example third-party plugin).

The format lives in :mod:`mconv_npz.npz`.  This module is what the entry point loads: it stays light
(no numpy, no IR) and imports the format only when mconv collects formats, so installing the plugin
does not slow ``mconv --help`` down, which loads entry points to look for ``register_commands``.
"""

from __future__ import annotations

from typing import Callable

from mconv.plugins import hookimpl


@hookimpl
def register_formats(register: Callable[[object], None]) -> None:
    from .npz import NpzFormat

    register(NpzFormat)
