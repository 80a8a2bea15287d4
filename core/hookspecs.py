"""Hook specifications: the three ways a plugin extends mconv (pluggy project name ``mconv``)."""

from __future__ import annotations

import argparse
from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("mconv")
hookimpl = pluggy.HookimplMarker("mconv")


@hookspec
def register_formats(register: Callable[[object], None]) -> None:
    """Call ``register(FormatSubclassOrInstance)`` for every format the plugin provides."""


@hookspec
def register_architectures(register: Callable[[object], None]) -> None:
    """Call ``register(Architecture(...))`` for every architecture (graph builder + naming table)."""


@hookspec
def register_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add sub-commands; set ``func=callable(args) -> int`` as the parser default."""
