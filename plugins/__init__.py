"""The stable API for format and architecture plugins.

Built-in formats import only this module, which proves it is enough.  A plugin is a module (or
object) with pluggy hook implementations, exposed through an entry point in group ``mconv``::

    from mconv.plugins import Format, hookimpl

    class MyFormat(Format):
        name = "myfmt"
        ...

    @hookimpl
    def register_formats(register):
        register(MyFormat)

Names are imported on first use (PEP 562): a plugin whose top level takes only ``hookimpl`` and
``Format`` from here does not load numpy or the IR, which keeps ``mconv --help`` fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> (module, name in that module)
_EXPORTS: dict[str, tuple[str, str]] = {
    "Architecture": ("mconv.core.arch", "Architecture"),
    "BlockDType": ("mconv.core.dtypes", "BlockDType"),
    "DType": ("mconv.core.dtypes", "DType"),
    "PlainDType": ("mconv.core.dtypes", "PlainDType"),
    "all_dtypes": ("mconv.core.dtypes", "all_dtypes"),
    "bf16_bits_to_f32": ("mconv.core.dtypes", "bf16_bits_to_f32"),
    "exact_widenings": ("mconv.core.dtypes", "exact_widenings"),
    "f32_to_bf16_bits": ("mconv.core.dtypes", "f32_to_bf16_bits"),
    "get_dtype": ("mconv.core.dtypes", "get_dtype"),
    "FormatError": ("mconv.core.errors", "FormatError"),
    "LossyConversionError": ("mconv.core.errors", "LossyConversionError"),
    "MconvError": ("mconv.core.errors", "MconvError"),
    "PluginError": ("mconv.core.errors", "PluginError"),
    "QuantError": ("mconv.core.errors", "QuantError"),
    "UnknownFormatError": ("mconv.core.errors", "UnknownFormatError"),
    "UnsupportedError": ("mconv.core.errors", "UnsupportedError"),
    "UsageError": ("mconv.core.errors", "UsageError"),
    "ValidationError": ("mconv.core.errors", "ValidationError"),
    "DIR_CONSOLIDATED_PTH": ("mconv.core.format", "DIR_CONSOLIDATED_PTH"),
    "DIR_LLAMA2C": ("mconv.core.format", "DIR_LLAMA2C"),
    "DIR_OTHER_PTH": ("mconv.core.format", "DIR_OTHER_PTH"),
    "DIR_PYTORCH_BIN": ("mconv.core.format", "DIR_PYTORCH_BIN"),
    "DIR_SAFETENSORS": ("mconv.core.format", "DIR_SAFETENSORS"),
    "DIR_SAFETENSORS_INDEX": ("mconv.core.format", "DIR_SAFETENSORS_INDEX"),
    "Format": ("mconv.core.format", "Format"),
    "ReadContext": ("mconv.core.format", "ReadContext"),
    "WriteContext": ("mconv.core.format", "WriteContext"),
    "WriterOption": ("mconv.core.format", "WriterOption"),
    "jsonable": ("mconv.core.format", "jsonable"),
    "parse_bool": ("mconv.core.format", "parse_bool"),
    "parse_size": ("mconv.core.format", "parse_size"),
    "hookimpl": ("mconv.core.hookspecs", "hookimpl"),
    "infer_from_shapes": ("mconv.core.hparams", "infer_from_shapes"),
    "load_json_sidecar": ("mconv.core.hparams", "load_json_sidecar"),
    "resolve": ("mconv.core.hparams", "resolve"),
    "sidecar_hparams": ("mconv.core.hparams", "sidecar_hparams"),
    "fsync_path": ("mconv.core.io", "fsync_path"),
    "write_padding": ("mconv.core.io", "write_padding"),
    "write_tensor": ("mconv.core.io", "write_tensor"),
    "CHUNK_BYTES": ("mconv.core.ir", "CHUNK_BYTES"),
    "Derived": ("mconv.core.ir", "Derived"),
    "FileCache": ("mconv.core.ir", "FileCache"),
    "FileSlice": ("mconv.core.ir", "FileSlice"),
    "Graph": ("mconv.core.ir", "Graph"),
    "InMemory": ("mconv.core.ir", "InMemory"),
    "MappedFile": ("mconv.core.ir", "MappedFile"),
    "Model": ("mconv.core.ir", "Model"),
    "Node": ("mconv.core.ir", "Node"),
    "Source": ("mconv.core.ir", "Source"),
    "Step": ("mconv.core.ir", "Step"),
    "StridedView": ("mconv.core.ir", "StridedView"),
    "Tensor": ("mconv.core.ir", "Tensor"),
    "Tokenizer": ("mconv.core.ir", "Tokenizer"),
    "cast": ("mconv.core.ir", "cast"),
    "check_view_bounds": ("mconv.core.ir", "check_view_bounds"),
    "concat": ("mconv.core.ir", "concat"),
    "map_values": ("mconv.core.ir", "map_values"),
    "numel": ("mconv.core.ir", "numel"),
    "permute_rows": ("mconv.core.ir", "permute_rows"),
    "tensor_from_array": ("mconv.core.ir", "tensor_from_array"),
    "tensor_from_raw": ("mconv.core.ir", "tensor_from_raw"),
    "TOKEN_BYTE": ("mconv.core.ir", "TOKEN_BYTE"),
    "TOKEN_CONTROL": ("mconv.core.ir", "TOKEN_CONTROL"),
    "TOKEN_NORMAL": ("mconv.core.ir", "TOKEN_NORMAL"),
    "TOKEN_UNKNOWN": ("mconv.core.ir", "TOKEN_UNKNOWN"),
    "TOKEN_UNUSED": ("mconv.core.ir", "TOKEN_UNUSED"),
    "TOKEN_USER_DEFINED": ("mconv.core.ir", "TOKEN_USER_DEFINED"),
    "MAX_TENSORS": ("mconv.core.limits", "MAX_TENSORS"),
    "MAX_TOKENS": ("mconv.core.limits", "MAX_TOKENS"),
    "check_shape": ("mconv.core.limits", "check_shape"),
    "check_tensor_count": ("mconv.core.limits", "check_tensor_count"),
    "check_token_count": ("mconv.core.limits", "check_token_count"),
    "NameTable": ("mconv.core.names", "NameTable"),
    "rope_permute_order": ("mconv.core.names", "rope_permute_order"),
    "rope_unpermute_order": ("mconv.core.names", "rope_unpermute_order"),
    "table": ("mconv.core.names", "table"),
    "CONSENTED": ("mconv.core.plan", "CONSENTED"),
    "LOSSY": ("mconv.core.plan", "LOSSY"),
    "WARNING": ("mconv.core.plan", "WARNING"),
    "Loss": ("mconv.core.plan", "Loss"),
    "llama_file_type": ("mconv.core.quant.policy", "file_type"),
    "merge_shards": ("mconv.core.shards", "merge_shards"),
    "read_weight_map": ("mconv.core.shards", "read_weight_map"),
    "read_sentencepiece_file": ("mconv.core.tokenizers", "read_sentencepiece_file"),
    "sentencepiece_bytes": ("mconv.core.tokenizers", "sentencepiece_bytes"),
    "sentencepiece_from_tokenizer": ("mconv.core.tokenizers", "sentencepiece_from_tokenizer"),
    "tokenizer_from_json": ("mconv.core.tokenizers", "tokenizer_from_json"),
    "tokenizer_from_sentencepiece": ("mconv.core.tokenizers", "tokenizer_from_sentencepiece"),
    "tokenizer_to_json": ("mconv.core.tokenizers", "tokenizer_to_json"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # type checkers see the plain imports
    from mconv.core.arch import Architecture
    from mconv.core.dtypes import (
        BlockDType,
        DType,
        PlainDType,
        all_dtypes,
        bf16_bits_to_f32,
        exact_widenings,
        f32_to_bf16_bits,
        get_dtype,
    )
    from mconv.core.errors import (
        FormatError,
        LossyConversionError,
        MconvError,
        PluginError,
        QuantError,
        UnknownFormatError,
        UnsupportedError,
        UsageError,
        ValidationError,
    )
    from mconv.core.format import (
        DIR_CONSOLIDATED_PTH,
        DIR_LLAMA2C,
        DIR_OTHER_PTH,
        DIR_PYTORCH_BIN,
        DIR_SAFETENSORS,
        DIR_SAFETENSORS_INDEX,
        Format,
        ReadContext,
        WriteContext,
        WriterOption,
        jsonable,
        parse_bool,
        parse_size,
    )
    from mconv.core.hookspecs import hookimpl
    from mconv.core.hparams import infer_from_shapes, load_json_sidecar, resolve, sidecar_hparams
    from mconv.core.io import fsync_path, write_padding, write_tensor
    from mconv.core.ir import (
        CHUNK_BYTES,
        Derived,
        FileCache,
        FileSlice,
        Graph,
        InMemory,
        MappedFile,
        Model,
        Node,
        Source,
        Step,
        StridedView,
        Tensor,
        Tokenizer,
        cast,
        check_view_bounds,
        concat,
        map_values,
        numel,
        permute_rows,
        tensor_from_array,
        tensor_from_raw,
        TOKEN_BYTE,
        TOKEN_CONTROL,
        TOKEN_NORMAL,
        TOKEN_UNKNOWN,
        TOKEN_UNUSED,
        TOKEN_USER_DEFINED,
    )
    from mconv.core.limits import MAX_TENSORS, MAX_TOKENS, check_shape, check_tensor_count, check_token_count
    from mconv.core.names import NameTable, rope_permute_order, rope_unpermute_order, table
    from mconv.core.plan import CONSENTED, LOSSY, WARNING, Loss
    from mconv.core.quant.policy import file_type as llama_file_type
    from mconv.core.shards import merge_shards, read_weight_map
    from mconv.core.tokenizers import (
        read_sentencepiece_file,
        sentencepiece_bytes,
        sentencepiece_from_tokenizer,
        tokenizer_from_json,
        tokenizer_from_sentencepiece,
        tokenizer_to_json,
    )
