"""Hostile checkpoints (tests/hostile_pth.py): every one refused with its exact message, no payload
ever runs (the marker file never appears), nothing is written, and the cases that would make a
careless reader allocate gigabytes stay within a 1 GiB address space."""

from __future__ import annotations

import os
import resource

import pytest

import hostile_pth as H
from mconv.formats import _torch_file, _torch_pickle
from testlib import cli, cli_subprocess


@pytest.fixture
def workdir(tmp_path):  # noqa: ANN001, ANN201
    marker = str(tmp_path / "MARKER")
    yield str(tmp_path), marker
    assert not os.path.exists(marker), "a payload ran"


@pytest.mark.parametrize("case", H.CASES, ids=[c.name for c in H.CASES])
def test_refused_with_exact_message(workdir, case):
    directory, marker = workdir
    path, message = case.build(directory, marker)
    before = sorted(os.listdir(directory))
    r = cli("inspect", path)
    assert (r.rc, r.err.strip()) == (2, f"mconv: error: {message}")
    assert r.out == ""
    r = cli("translate", path, os.path.join(directory, "out.safetensors"))
    assert (r.rc, r.err.strip()) == (2, f"mconv: error: {message}")
    assert sorted(os.listdir(directory)) == before          # nothing written, no temp files left


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


HEAVY = [c for c in H.CASES if c.heavy]


def test_heavy_cases_stay_within_1_gib(workdir):
    """Size lies, huge views and bombs, each in a child process limited to 1 GiB of address space:
    refused with their messages (an allocation attempt would end in 'out of memory')."""
    directory, marker = workdir
    assert len(HEAVY) >= 6
    for case in HEAVY:
        path, message = case.build(directory, marker)
        r = cli_subprocess("inspect", path, preexec=_limit_address_space)
        assert (r.rc, r.err.strip()) == (2, f"mconv: error: {message}"), case.name


@pytest.mark.parametrize("limit,value,entry,message", [
    ("MAX_MEMO", 100, H.op.EMPTY_LIST + b"".join(H.op.put(i) for i in range(101)), "pickle memo exceeds 100 entries"),
    ("MAX_STACK", 100, H.op.NONE * 101, "pickle stack exceeds 100 items"),
    ("MAX_OBJECTS", 100, H.op.EMPTY_LIST + (H.op.NONE + H.op.APPEND) * 101,
     "pickle builds more than 100 objects and container slots"),
])
def test_vm_limits(workdir, monkeypatch, limit, value, entry, message):
    directory, marker = workdir
    monkeypatch.setattr(_torch_pickle, limit, value)
    ents = [("x", entry), ("w", H.tensor_expr())]
    path = os.path.join(directory, "limit.pth")
    with open(path, "wb") as f:
        f.write(H.torch_zip(H.state_dict_pickle(ents), {"0": H.F4}))
    r = cli("inspect", path)
    assert r.rc == 2
    assert r.err.startswith(f"mconv: error: {path}: member 'archive/data.pkl', offset ")
    assert r.err.strip().endswith(f": {message}")


def test_walk_limit_counts_shared_nodes(workdir, monkeypatch):
    """A tuple of 60 references to one list is 61 nodes to walk, though the pickle builds two objects."""
    directory, marker = workdir
    monkeypatch.setattr(_torch_file, "MAX_WALK_NODES", 50)
    shared = H.op.MARK + H.op.EMPTY_LIST + H.op.put(0) + H.op.get(0) * 59 + H.op.TUPLE
    path = os.path.join(directory, "walk.pth")
    with open(path, "wb") as f:
        f.write(H.torch_zip(H.state_dict_pickle([("x", shared), ("w", H.tensor_expr())]), {"0": H.F4}))
    r = cli("inspect", path)
    assert r.err.strip() == f"mconv: error: {path}: object has more than 50 nodes"
