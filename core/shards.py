"""Hugging Face sharded checkpoints (``model-0000i-of-0000n.safetensors``,
``pytorch_model-0000i-of-0000n.bin``): the index json's ``weight_map`` (tensor -> shard file) and the
checks that the shards and the index agree, shared by every format with that directory layout."""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, TypeVar

from .errors import FormatError
from .hparams import load_json_sidecar

T = TypeVar("T")


def read_weight_map(index_path: str) -> tuple[list[str], dict[str, str]]:
    """(shard paths in first-use order, weight_map) of an index json; every shard must be a plain
    file name in the index's own directory."""
    wmap = load_json_sidecar(index_path).get("weight_map")
    if not isinstance(wmap, dict) or not wmap:
        raise FormatError("weight_map missing or empty", path=index_path)
    shards: list[str] = []
    for tensor, shard in wmap.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard or shard in (".", ".."):
            raise FormatError(f"shard {shard!r} of tensor {tensor!r} is not a file name in the same directory",
                              path=index_path)
        if shard not in shards:
            shards.append(shard)
    directory = os.path.dirname(index_path)
    return [os.path.join(directory, s) for s in shards], wmap


def merge_shards(shards: Sequence[tuple[str, Mapping[str, T]]], weight_map: Optional[Mapping[str, str]],
                 index_path: str) -> dict[str, T]:
    """One dict of the shards' tensors: no name twice, each in the shard the index names, none of
    the index's missing."""
    index_name = os.path.basename(index_path)
    out: dict[str, T] = {}
    for path, tensors in shards:
        for name, t in tensors.items():
            if name in out:
                raise FormatError("tensor appears in two shards", path=path, tensor=name)
            if weight_map is not None and weight_map.get(name) != os.path.basename(path):
                raise FormatError(f"tensor is not listed for this shard in {index_name}", path=path, tensor=name)
            out[name] = t
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise FormatError(f"{len(missing)} tensor(s) listed in {index_name} are in no shard, e.g. {missing[0]!r}",
                              path=os.path.dirname(index_path))
    return out
