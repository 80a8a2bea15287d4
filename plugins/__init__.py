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
"""

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
from mconv.core.limits import (
    MAX_TENSORS,
    MAX_TOKENS,
    check_shape,
    check_tensor_count,
    check_token_count,
)
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

__all__ = [name for name in dir() if not name.startswith("_")]
