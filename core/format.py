"""The Format contract shared by built-in and third-party formats."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Optional

from .errors import UsageError

if TYPE_CHECKING:   # the IR (and numpy) is imported only when a model is read or written
    from .ir import FileCache, Model, Tensor


#: sniff confidences of directory inputs, encoding DESIGN's precedence: safetensors index >
#: model*.safetensors > pytorch_model*.bin (+ index) > consolidated.*.pth > other *.pth/*.pt >
#: llama2.c *.bin (+ tokenizer.bin).  A file whose magic matches sniffs 1.0.
DIR_SAFETENSORS_INDEX = 0.95
DIR_SAFETENSORS = 0.9
DIR_PYTORCH_BIN = 0.8
DIR_CONSOLIDATED_PTH = 0.75
DIR_OTHER_PTH = 0.7
DIR_LLAMA2C = 0.6


def parse_size(text: str) -> int:
    """'5GB', '500MiB', '1000000' -> bytes (decimal units for KB/MB/GB, binary for KiB/MiB/GiB)."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}
    s = text.strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r}")
    if unit not in units or value < 0:
        raise ValueError(f"not a size: {text!r}")
    return int(value * units[unit])


def parse_bool(text: str) -> bool:
    s = text.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class WriterOption:
    """A ``-O KEY=VALUE`` option a writer declares."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str


@dataclass
class ReadContext:
    """What a reader gets besides the path."""

    #: --hparam overrides (canonical keys), highest priority
    hparams: dict[str, Any] = field(default_factory=dict)
    #: --names: force a naming convention for generic containers
    names: Optional[str] = None
    cache: FileCache = field(default_factory=lambda: _file_cache())


@dataclass
class WriteContext:
    """What a writer gets besides the model and the (temporary) output path."""

    options: dict[str, Any] = field(default_factory=dict)
    #: write the format's directory layout instead of a single file
    as_directory: bool = False
    #: the path the output will finally have (the writer writes to a temporary path)
    final_path: str = ""
    #: reports bytes written (progress bar); a no-op by default
    progress: Callable[[int], None] = lambda n: None
    #: returns a temporary path for a file written beside the output (committed with it)
    sidecar: Callable[[str], str] = lambda name: name
    #: the ``--dtype`` request of this conversion, if any (GGUF records it as general.file_type)
    dtype: Optional[str] = None


class Format:
    """Base class of a format.  Capabilities are class attributes; core derives lossiness from them."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: suffixes that name this format for ``--to`` inference (".gguf")
    extensions: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    can_read: ClassVar[bool] = True
    can_write: ClassVar[bool] = True
    #: dtype names the format can store
    dtypes: ClassVar[frozenset[str]] = frozenset()
    #: dtype names it stores for 1-D tensors, when its loaders need fewer (None: ``dtypes``)
    dtypes_1d: ClassVar[Optional[frozenset[str]]] = None
    #: canonical hparams the format stores (None = all of them)
    stored_hparams: ClassVar[Optional[frozenset[str]]] = None
    #: hparams the format cannot store but its loaders take at load time: key -> loader flag
    load_time_hparams: ClassVar[Mapping[str, str]] = {}
    #: values the format's loaders assume for hparams it cannot store
    fixed_hparams: ClassVar[Mapping[str, Any]] = {}
    stores_tokenizer: ClassVar[bool] = True
    stores_metadata: ClassVar[bool] = True
    #: whether a directory output gets its own layout
    has_directory_layout: ClassVar[bool] = False
    writer_options: ClassVar[Mapping[str, WriterOption]] = {}

    def sniff(self, path: str, head: bytes, size: int, is_dir: bool) -> float:
        """Confidence in [0, 1] that ``path`` is in this format (head = its first bytes)."""
        return 0.0

    def read(self, path: str, ctx: ReadContext) -> Model:
        raise NotImplementedError

    def write(self, model: Model, path: str, ctx: WriteContext) -> None:
        raise NotImplementedError

    def output_dtypes(self, model: Model, ctx: WriteContext) -> frozenset[str]:
        """dtype names this output can store given its writer options (default: ``dtypes``);
        e.g. llama2.c v0/v1 hold only f32 although the format also has an int8 version."""
        return self.dtypes

    def dtype_request(self, model: Model, request: Optional[str], ctx: WriteContext) -> Optional[str]:
        """The ``--dtype`` request as this output's writer options refine it: a parametric block
        size (``l2c_q8`` -> ``l2c_q8@32``), or a type an explicit option implies.  The result consents
        to its casts like ``--dtype`` does, so return a new request only for what the user asked for.
        Default: unchanged."""
        return request

    def dtypes_for(self, t: Tensor) -> frozenset[str]:
        """The dtype names this format stores for tensor ``t``: ``dtypes_1d`` for a 1-D tensor when the
        format sets it, else ``dtypes``.  The planner widens tensors outside it losslessly (GGUF/ggjt:
        1-D norms in f32, as llama.cpp multiplies only by f32).  Override for other rules."""
        if self.dtypes_1d is not None and len(t.shape) <= 1:
            return self.dtypes_1d
        return self.dtypes

    def plan_losses(self, model: Model, ctx: WriteContext) -> list["Loss"]:  # noqa: F821
        """Format-specific losses beyond dtypes/hparams/tokenizer (core adds those)."""
        return []

    def accepts_tensor(self, canonical: str) -> bool:
        """Whether the format can store a tensor of this canonical name (positional formats can't
        store arbitrary extras)."""
        return True

    def parse_options(self, raw: Mapping[str, str]) -> dict[str, Any]:
        out = {k: o.default for k, o in self.writer_options.items()}
        for key, value in raw.items():
            if key not in self.writer_options:
                known = ", ".join(sorted(self.writer_options)) or "none"
                raise UsageError(f"format {self.name} has no writer option {key!r} (options: {known})")
            try:
                out[key] = self.writer_options[key].parse(value)
            except ValueError as e:
                raise UsageError(f"-O {key}={value}: {e}")
        return out


def _file_cache() -> "FileCache":
    from .ir import FileCache

    return FileCache()


def jsonable(value: Any) -> Any:
    """Metadata as JSON-able values (numpy scalars and arrays as numbers and lists, bytes as text),
    for formats that keep free metadata as JSON."""
    import numpy as np

    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def head_of(path: str, n: int = 64) -> tuple[bytes, int, bool]:
    if os.path.isdir(path):
        return b"", 0, True
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        return f.read(n), size, False
