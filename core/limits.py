"""Limits every reader applies to what a file claims before building anything from it, so that a
hostile header costs neither unbounded memory nor an exception from numpy (README: Limits and hostile input).

The checks raise FormatError without a location; the reader adds path, offset and tensor with
``FormatError.at``.
"""

from __future__ import annotations

from typing import Sequence

from .dtypes import DType
from .errors import FormatError

#: dimensions of one tensor (numpy's own limit)
MAX_DIMS = 64
#: bytes of one tensor, counting a zero dimension as 1: numpy's and the file offsets' int64 limit
MAX_TENSOR_BYTES = 1 << 63
#: tensors in one file.  The largest real checkpoints hold a few thousand (an unmerged MoE about
#: 100,000); each tensor costs a few hundred bytes of Python objects before any data is read
MAX_TENSORS = 1 << 18
#: tokens in one vocabulary (tokenizer.model pieces, tokenizer.bin entries, GGUF token arrays);
#: the largest real vocabularies have about 260,000
MAX_TOKENS = 1 << 20


def check_shape(shape: Sequence[int], dtype: DType) -> None:
    """A shape a tensor of ``dtype`` can have: at most MAX_DIMS non-negative integers, whole blocks
    per row, and under MAX_TENSOR_BYTES even with its zero dimensions counted as 1 (a tensor of
    shape [0, 2**62, 2**62] holds nothing, but no array of its rows can be made)."""
    if len(shape) > MAX_DIMS:
        raise FormatError(f"shape has {len(shape)} dimensions; at most {MAX_DIMS}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise FormatError(f"shape {list(shape)} is not a list of non-negative integers")
    cols = shape[-1] if shape else 1
    if cols % dtype.block_size:
        raise FormatError(f"rows of {cols} elements are not a multiple of the {dtype.name} block size "
                          f"{dtype.block_size}")
    rows = 1
    for d in shape[:-1]:
        rows *= d or 1
    if rows * dtype.row_bytes(cols or dtype.block_size) >= MAX_TENSOR_BYTES:
        raise FormatError(f"shape {list(shape)} is too large")


def check_tensor_count(n: int) -> None:
    if n > MAX_TENSORS:
        raise FormatError(f"{n} tensors exceed mconv's limit of {MAX_TENSORS} per file")


def check_token_count(n: int) -> None:
    if n > MAX_TOKENS:
        raise FormatError(f"{n} tokens exceed mconv's limit of {MAX_TOKENS} per vocabulary")
