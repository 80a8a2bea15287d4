"""The shared reader limits of core/limits.py: the shape check every reader applies, and the tensor and
token counts, exercised per reader with the limits lowered (the real limits are reached by sparse
files in the corpus, tests/hostile_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hostile_gguf as G
import hostile_llama2c as L
import hostile_pth as P
from mconv.core import limits
from mconv.plugins import FormatError, check_shape, get_dtype
from testlib import cli


@pytest.mark.parametrize("shape,dtype,message", [
    ((1,) * 65, "f32", "shape has 65 dimensions; at most 64"),
    ((-1, 4), "f32", "shape [-1, 4] is not a list of non-negative integers"),
    ((True, 4), "f32", "shape [True, 4] is not a list of non-negative integers"),
    ((4, 33), "q8_0", "rows of 33 elements are not a multiple of the q8_0 block size 32"),
    ((0, 1 << 62, 1 << 62), "f32", f"shape [0, {1 << 62}, {1 << 62}] is too large"),
    ((1 << 62, 1 << 62, 0), "f32", f"shape [{1 << 62}, {1 << 62}, 0] is too large"),
    ((1 << 61,), "f32", f"shape [{1 << 61}] is too large"),
])
def test_check_shape_refuses(shape, dtype, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FormatError) as e:
        check_shape(shape, get_dtype(dtype))
    assert str(e.value) == message


@pytest.mark.parametrize("shape,dtype", [((), "f32"), ((0,), "f32"), ((0, 0), "q4_k"), ((1 << 60,), "i8"),
                                         ((3, 256), "q4_k"), ((1,) * 64, "bf16")])
def test_check_shape_accepts(shape, dtype) -> None:  # type: ignore[no-untyped-def]
    check_shape(shape, get_dtype(dtype))


def _inspect(path: str, *args: str) -> str:
    r = cli("inspect", *args, path)
    assert r.rc == 2 and r.out == "", r
    return r.err.strip()


def test_gguf_tensor_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_TENSORS", 5)
    path = tmp_path / "m.gguf"
    path.write_bytes(G.tiny_gguf())
    assert _inspect(str(path)) == f"mconv: error: {path}: offset 8: 12 tensors exceed mconv's limit of 5 per file"


def test_ggml_tensor_and_token_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(G.tiny_ggml("ggjt", 3))
    monkeypatch.setattr(limits, "MAX_TENSORS", 5)
    assert _inspect(str(path), "--from", "ggml").endswith(": tensor 'layers.0.attention.wk.weight': 6 tensors exceed "
                                                          "mconv's limit of 5 per file")
    monkeypatch.setattr(limits, "MAX_TOKENS", 31)
    assert _inspect(str(path), "--from", "ggml") == f"mconv: error: {path}: offset 8: 32 tokens exceed mconv's " \
                                                    "limit of 31 per vocabulary"


def test_llama2c_tensor_and_token_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.bin").write_bytes(L.v0_file())
    (tmp_path / "tokenizer.bin").write_bytes(L.tokenizer_bytes(L.GOOD_TOKENS))
    monkeypatch.setattr(limits, "MAX_TOKENS", 3)
    assert _inspect(str(tmp_path)) == f"mconv: error: {tmp_path / 'tokenizer.bin'}: 4 tokens exceed mconv's limit " \
                                      "of 3 per vocabulary"
    monkeypatch.setattr(limits, "MAX_TENSORS", 11)
    assert _inspect(str(tmp_path)) == f"mconv: error: {tmp_path / 'model.bin'}: offset 8: 12 tensors exceed " \
                                      "mconv's limit of 11 per file"


def test_pth_tensor_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pth"
    path.write_bytes(P.checkpoint_zip())
    monkeypatch.setattr(limits, "MAX_TENSORS", 11)
    assert _inspect(str(path)) == f"mconv: error: {path}: 12 tensors exceed mconv's limit of 11 per file"


def test_gguf_token_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mconv.formats import _gguf_values

    monkeypatch.setattr(_gguf_values, "MAX_STRING_ARRAY", 31)
    path = tmp_path / "m.gguf"
    data = G.tiny_gguf()
    path.write_bytes(data)
    at = data.index(G.gstr("tokenizer.ggml.tokens")) + len(G.gstr("tokenizer.ggml.tokens")) + 4
    assert _inspect(str(path)) == f"mconv: error: {path}: offset {at}: array 'tokenizer.ggml.tokens' has 32 string " \
                                  "elements, over mconv's limit of 31"


def test_limits_are_generous_for_real_models() -> None:
    """Llama 3 405B: 126 blocks of 9 tensors; Gemma's vocabulary: 262144 tokens."""
    assert limits.MAX_TENSORS >= 126 * 9 * 100 and limits.MAX_TOKENS >= 4 * 262144
    assert np.iinfo(np.int64).max < limits.MAX_TENSOR_BYTES
