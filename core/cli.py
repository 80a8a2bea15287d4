"""``mconv`` command line (DESIGN.md Contracts: exit 0 ok, 2 any error printed as one line
``mconv: error: ...``, 1 when validate/roundtrip ran but the models differ).

Imports stay lazy so ``mconv --help`` does not pay for numpy and the formats."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, NoReturn, Optional, Sequence

EXIT_OK, EXIT_DIFFER, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing its usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        from .errors import UsageError

        raise UsageError(message)


def _kv_list(pairs: Sequence[str], flag: str) -> dict[str, str]:
    from .errors import UsageError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _hparams(args: argparse.Namespace) -> dict[str, Any]:
    from .hparams import parse_cli_hparams
    from .names import table

    return parse_cli_hparams(getattr(args, "hparam", None) or [], table("llama"))


def _open(path: str, fmt: Optional[str], args: argparse.Namespace, check: bool = True) -> Any:
    from .convert import open_model

    return open_model(path, fmt, hparams=_hparams(args), names=getattr(args, "names", None), check=check)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# -- commands ----------------------------------------------------------------------------------------

def cmd_translate(args: argparse.Namespace) -> int:
    from .convert import target_format, write_model

    fmt = target_format(args.output, args.to)
    model = _open(args.input, args.from_, args)
    out = sys.stdout

    def report(plan: Any) -> None:
        # before the (possibly long) write, so the user sees what will change while it runs
        print(f"read   {args.input} ({model.format}, {len(model.tensors)} tensors, {_human(model.nbytes())})",
              file=out)
        for line in plan.report():
            print(f"  {line}", file=out)
        out.flush()

    try:
        check = None
        if args.validate:
            from .validate import translate_check

            check = translate_check(model, fmt, args)
        result = write_model(model, args.output, fmt, dtype=args.dtype, options=_kv_list(args.option, "-O"),
                             allow_lossy=args.allow_lossy, force=args.force, check=check, quiet=args.quiet,
                             on_plan=report)
    except BaseException:
        model.close()
        raise
    rate = result.bytes / result.seconds / 2**20 if result.seconds > 0 else 0.0
    print(f"wrote  {result.path} ({fmt.name}, {len(result.plan.model.tensors)} tensors, "
          f"{_human(result.bytes)}) in {result.seconds:.2f} s ({rate:.0f} MiB/s)", file=out)
    model.close()
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    model = _open(args.path, args.from_, args, check=False)
    from .registry import get_registry

    fmt = get_registry().format(model.format)
    notes = fmt.notes(model) if hasattr(fmt, "notes") else []
    if args.json:
        print(json.dumps(_inspect_json(model, notes), indent=1))
        return EXIT_OK
    print(f"path:      {args.path}")
    print(f"format:    {model.format}")
    print(f"arch:      {model.arch}")
    print("hparams:")
    for key in sorted(model.hparams):
        print(f"  {key:<12} {model.hparams[key]!r:<14} ({model.hparam_origin.get(key, '?')})")
    tok = model.tokenizer
    if tok is None:
        print("tokenizer: none")
    else:
        print(f"tokenizer: {tok.model}, {len(tok)} tokens, bos={tok.bos_id} eos={tok.eos_id} unk={tok.unk_id} "
              f"pad={tok.pad_id}")
    for note in notes:
        print(f"note:      {note}")
    if model.metadata:
        print("metadata:")
        for k in sorted(model.metadata):
            v = repr(model.metadata[k])
            print(f"  {k} = {v if len(v) <= 100 else v[:97] + '...'}")
    print(f"tensors:   {len(model.tensors)}, {_human(model.nbytes())}")
    width = max((len(n) for n in model.tensors), default=4)
    for t in model.tensors.values():
        shape = "x".join(str(d) for d in t.shape) or "scalar"
        print(f"  {t.name:<{width}}  {t.dtype.label:<8} {shape:<16} {t.nbytes:>12}")
    print("history:")
    for step in model.history:
        print(f"  {step.kind}: {step.detail}")
    model.close()
    return EXIT_OK


def _inspect_json(model: Any, notes: list[str]) -> dict[str, Any]:
    tok = model.tokenizer
    return {
        "format": model.format,
        "arch": model.arch,
        "hparams": model.hparams,
        "hparam_origin": model.hparam_origin,
        "tokenizer": None if tok is None else {"model": tok.model, "size": len(tok), "bos_id": tok.bos_id,
                                               "eos_id": tok.eos_id, "unk_id": tok.unk_id, "pad_id": tok.pad_id},
        "metadata": {k: (v if isinstance(v, (str, int, float, bool)) or v is None else repr(v))
                     for k, v in model.metadata.items()},
        "tensors": [{"name": t.name, "dtype": t.dtype.label, "shape": list(t.shape), "bytes": t.nbytes}
                    for t in model.tensors.values()],
        "notes": notes,
        "history": [{"kind": s.kind, "detail": s.detail} for s in model.history],
    }


def cmd_formats(args: argparse.Namespace) -> int:
    from .registry import get_registry

    reg = get_registry()
    rows = [("format", "read", "write", "extensions", "hparams", "tokenizer", "dtypes", "options", "plugin")]
    for name in sorted(reg.formats):
        e = reg.formats[name]
        f = e.format
        hp = "all" if f.stored_hparams is None else (",".join(sorted(f.stored_hparams)) or "none")
        rows.append((
            name + (f" ({', '.join(f.aliases)})" if f.aliases else ""),
            "yes" if f.can_read else "no",
            "yes" if f.can_write else "no",
            " ".join(f.extensions) or "-",
            hp,
            "yes" if f.stores_tokenizer else "no",
            ",".join(sorted(f.dtypes)) or "-",
            ",".join(sorted(f.writer_options)) or "-",
            e.plugin,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    for info in get_registry().plugin_infos():
        what = ", ".join([*(f"format {f}" for f in info.formats), *(f"arch {a}" for a in info.architectures)])
        print(f"{info.name}  [{info.origin}]  {what or '-'}")
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------------

def _add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_", metavar="FORMAT", help="input format (default: sniffed)")
    p.add_argument("--hparam", action="append", default=[], metavar="K=V",
                   help="set a hyper-parameter (highest priority), e.g. n_head=32")
    p.add_argument("--names", metavar="CONVENTION", help="naming convention of a generic container (meta, hf, gguf)")


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(prog="mconv", description="Translate LLM weight files between formats without PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("translate", help="convert a model to another format")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT", help="file, or directory (ending in /) for the format's layout")
    _add_read_options(p)
    p.add_argument("--to", metavar="FORMAT", help="output format (default: from OUT's suffix)")
    p.add_argument("--dtype", metavar="D", help="store tensors as D (f32 f16 bf16 q8_0 q4_0 ... q4_k_m)")
    p.add_argument("-O", dest="option", action="append", default=[], metavar="KEY=VALUE",
                   help="writer option of the output format (see `mconv formats`)")
    p.add_argument("--allow-lossy", action="store_true", help="accept value-changing steps")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--validate", action="store_true",
                   help="re-read the output and compare logits with the source before committing it "
                   "(beyond tolerance: nothing is written, exit 1)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("inspect", help="show format, hparams, tokenizer and tensors (reads headers only)")
    p.add_argument("path", metavar="PATH")
    _add_read_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("formats", help="list formats and what they can store")
    p.set_defaults(func=cmd_formats)
    p = sub.add_parser("plugins", help="list loaded plugins")
    p.set_defaults(func=cmd_plugins)

    from .commands import add_commands

    add_commands(sub, _add_read_options)

    if with_plugins:
        # only the plugins that may add commands: no built-in format module, no numpy (registry.py)
        from .registry import get_command_registry

        get_command_registry().pm.hook.register_commands(subparsers=sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    signal.signal(signal.SIGTERM, _on_sigterm)
    from .errors import MconvError, ModelsDiffer

    try:
        parser = build_parser(with_plugins=True)
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(f"mconv {__version__}")
            return EXIT_OK
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_OK
        from .memory import tune_allocator

        tune_allocator()
        return int(args.func(args))
    except ModelsDiffer as e:
        print(f"mconv: validation failed: {e}", file=sys.stderr)
        return EXIT_DIFFER
    except MconvError as e:
        return _fail(str(e), debug)
    except BrokenPipeError:
        # the reader of our output went away (mconv inspect | head): nothing left to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", debug)
    except MemoryError:
        return _fail("out of memory", debug)
    except KeyboardInterrupt:
        return _fail("interrupted", debug)
    except RecursionError:
        return _fail("input nests too deeply", debug)
    except SystemExit as e:
        if isinstance(e.code, int) and e.code == 0:
            return EXIT_OK
        return _fail(f"terminated ({e.code})", debug) if e.code not in (None, 0) else EXIT_OK
    except Exception as e:  # an mconv bug: still one line, and the traceback with --debug
        return _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", debug)


def _on_sigterm(signum: int, frame: object) -> None:
    # unwinding through the atomic-output context managers removes temporary files
    raise SystemExit(f"signal {signum}")


def _fail(message: str, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"mconv: error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
