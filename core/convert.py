"""The library API behind the CLI: open a model in any registered format, write it to another."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import FormatError, MconvError, UsageError
from .format import Format, ReadContext, WriteContext
from .io import atomic_output
from .ir import Model, Step
from .plan import Plan, make_plan
from .progress import Progress
from .registry import get_registry


def open_model(path: str, fmt: Optional[str] = None, *, hparams: Optional[Mapping[str, Any]] = None,
               names: Optional[str] = None, check: bool = True) -> Model:
    """Read headers of ``path`` (a file or directory) into a lazy Model; no tensor bytes are read.
    ``check`` verifies the tensors against the architecture (off for ``inspect``)."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    if not (os.path.isfile(path) or os.path.isdir(path)):
        # a FIFO or a device would block or never end: refuse before opening it
        raise UsageError(f"{path}: not a regular file or directory")
    reg = get_registry()
    f = reg.format(fmt) if fmt else reg.sniff(path)
    if not f.can_read:
        raise UsageError(f"format {f.name} cannot be read")
    ctx = ReadContext(hparams=dict(hparams or {}), names=names)
    try:
        model = f.read(path, ctx)
    except MconvError as e:
        ctx.cache.close()
        raise e.at(path=path)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError) as e:
        # a reader that failed to anticipate some malformation still must not crash the tool
        ctx.cache.close()
        raise FormatError(f"malformed {f.name} input ({type(e).__name__}: {e})", path=path)
    except BaseException:
        ctx.cache.close()
        raise
    model.format = model.format or f.name
    if not model.files:
        model.files = (os.path.abspath(path),)
    model.history.insert(0, Step("read", f"{f.name}: {path}"))
    arch = reg.architectures.get(model.arch)
    if arch is not None and not arch[0].table.recognises(model.tensors):
        model.arch = ""  # arrays that are not a model of any known architecture: convertible, not runnable
        arch = None
    if arch is not None:
        model.tensors = {n: model.tensors[n] for n in arch[0].table.canonical_order(model.tensors)}
    if check and arch is not None and arch[0].check is not None:
        try:
            arch[0].check(model)
        except MconvError as e:
            model.close()
            raise e.at(path=path)
    return model


def target_format(out: str, to: Optional[str]) -> Format:
    reg = get_registry()
    if to:
        return reg.format(to)
    if out.endswith("/") or os.path.isdir(out):
        raise UsageError(f"{out}: a directory output needs --to")
    suffix = os.path.splitext(out)[1].lower()
    if not suffix:
        raise UsageError(f"{out}: cannot tell the output format from a name without a suffix; use --to")
    matches = reg.formats_for_suffix(suffix)
    if len(matches) != 1:
        names = ", ".join(sorted(m.name for m in matches)) or "none"
        raise UsageError(f"{out}: the suffix {suffix} does not name exactly one format ({names}); use --to")
    return matches[0]


@dataclass
class WriteResult:
    plan: Plan
    path: str
    format: Format
    seconds: float
    bytes: int


def write_model(model: Model, out: str, fmt: Format, *, dtype: Optional[str] = None,
                options: Optional[Mapping[str, str]] = None, allow_lossy: bool = False, force: bool = False,
                check: Optional[Callable[[str, Plan], None]] = None, quiet: bool = False,
                extra_inputs: Sequence[str] = (), on_plan: Optional[Callable[[Plan], None]] = None) -> WriteResult:
    """Plan and write ``model`` to ``out`` atomically; ``on_plan(plan)`` runs once the plan is made
    (before anything is written), ``check(temp_path, plan)`` before the output is committed."""
    if not fmt.can_write:
        raise UsageError(f"format {fmt.name} cannot be written")
    as_dir = out.endswith("/") or os.path.isdir(out)
    if as_dir and not fmt.has_directory_layout:
        raise UsageError(f"{out}: format {fmt.name} has no directory layout; give a file name")
    wctx = WriteContext(options=fmt.parse_options(options or {}), as_directory=as_dir,
                        final_path=os.path.abspath(out.rstrip("/") or out), dtype=dtype)
    plan = make_plan(model, fmt, wctx, dtype=dtype, allow_lossy=allow_lossy)
    if on_plan is not None:
        on_plan(plan)
    start = time.perf_counter()
    total = plan.model.nbytes()
    try:
        with atomic_output(out, directory=as_dir, force=force, inputs=[*model.files, *extra_inputs]) as ao, \
                Progress(total, f"{fmt.name}", enabled=None if not quiet else False) as bar:
            wctx.progress = bar.update
            wctx.sidecar = ao.sidecar
            try:
                fmt.write(plan.model, ao.main, wctx)
            except MconvError as e:
                raise e.at(path=out)
            bar.close()
            if check is not None:
                check(ao.main, plan)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            # a full disk or a file size limit, wherever it struck (a buffered write, close, fsync)
            raise MconvError(f"cannot write output: {e.strerror}", path=out)
        raise
    plan.model.history.append(Step("write", f"{fmt.name}: {out}"))
    return WriteResult(plan, wctx.final_path, fmt, time.perf_counter() - start, total)
