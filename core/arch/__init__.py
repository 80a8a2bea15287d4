"""Architectures: what a model computes.  An architecture couples a naming table with a graph
builder (hparams -> Graph) and the ops its graph needs beyond the executor's built-in table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from ..ir import Graph, Model
from ..names import NameTable


@dataclass(frozen=True)
class Architecture:
    name: str
    table: NameTable
    #: hparams -> the compute graph of one forward step (None: the model cannot be executed)
    build_graph: Optional[Callable[[Mapping[str, Any]], Graph]] = None
    #: extra executor ops: op name -> kernel
    ops: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    #: raises ValidationError when a model's tensors do not fit its hparams
    check: Optional[Callable[[Model], None]] = None
