"""The executor's commands: ``run``, ``validate`` and ``roundtrip``.  Heavy imports stay inside the
command functions so ``mconv --help`` does not pay for numpy."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")


def _float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if value != value:
        raise argparse.ArgumentTypeError("NaN is not a valid value")
    return value


# -- run ----------------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from .cli import EXIT_OK, _open
    from .errors import UsageError

    if args.temperature < 0:
        raise UsageError(f"--temperature must be 0 (greedy) or more, got {args.temperature:g}")
    if not 0.0 <= args.top_p <= 1.0:
        raise UsageError(f"--top-p must be between 0 and 1, got {args.top_p:g}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be between 0 and 2^64-1, got {args.seed}")
    if args.n < 0:
        raise UsageError(f"-n must be 0 (n_ctx) or more, got {args.n}")

    from .blas import tune_threads
    from .generate import generate
    from .sampler import Sampler

    tune_threads()
    model = _open(args.model, args.from_, args)
    sampler = Sampler(args.temperature, args.top_p, args.seed)

    def emit(text: str) -> None:
        out = sys.stdout
        out.write(text)
        out.flush()

    try:
        g = generate(model, args.prompt, args.n, sampler, emit)
    finally:
        model.close()
    emit("\n")
    stop = {"steps": "-n positions reached", "bos": "BOS sampled", "eos": "EOS sampled"}[g.stop]
    print(f"prompt: {len(g.prompt_tokens)} tokens in {g.prompt_seconds:.3f} s ({g.prompt_rate:.1f} tok/s); "
          f"generated: {len(g.tokens)} tokens in {g.sample_seconds:.3f} s ({g.sample_rate:.1f} tok/s); "
          f"stop: {stop}; seed {g.seed}", file=sys.stderr)
    return EXIT_OK


# -- validate -----------------------------------------------------------------------------------------

def _tokens_for(args: argparse.Namespace, a: Any, b: Any) -> tuple[list[int], str]:
    from .errors import UsageError
    from .validate import DEFAULT_TOKENS, default_tokens

    if args.prompt is not None and args.tokens is not None:
        raise UsageError("give --prompt or --tokens, not both")
    if args.prompt is not None:
        tok = a.tokenizer or b.tokenizer
        if tok is None:
            raise UsageError("--prompt needs a tokenizer, and neither model has one; use --tokens N")
        from .textcodec import TextCodec

        codec = TextCodec(tok)
        ids = codec.encode(args.prompt, bos=True)
        n_vocab = int(a.hparams["n_vocab"])
        if not ids:
            raise UsageError("the prompt encodes to no tokens")
        if max(ids) >= n_vocab:
            raise UsageError(f"the prompt encodes to token {max(ids)}, outside the vocabulary of {n_vocab}")
        how = "sentencepiece" if codec.uses_sentencepiece else "llama2.c encode"
        return ids, f"{len(ids)} (BOS + --prompt, {how})"
    n = DEFAULT_TOKENS if args.tokens is None else args.tokens
    bos = a.tokenizer.bos_id if a.tokenizer is not None else 1
    return default_tokens(int(a.hparams["n_vocab"]), n, bos), f"{n} (BOS + ids from a generator seeded with 0)"


def _describe(model: Any) -> str:
    from collections import Counter

    dts = Counter(t.dtype.name for t in model.tensors.values())
    mix = ", ".join(f"{n} {d}" for d, n in dts.most_common())
    return f"{model.format}, {len(model.tensors)} tensors ({mix})"


def cmd_validate(args: argparse.Namespace) -> int:
    from .cli import EXIT_DIFFER, EXIT_OK, _open
    from .errors import UsageError

    if args.tolerances:
        from .validate import table_lines

        print("\n".join(table_lines()))
        return EXIT_OK
    if args.a is None or args.b is None:
        raise UsageError("validate needs two models: mconv validate A B")
    from .blas import tune_threads
    from .validate import check_comparable, tolerance_by_name, tolerance_for_models, validate

    tune_threads()
    if args.tokens is not None and args.tokens < 1:
        raise UsageError(f"--tokens must be at least 1, got {args.tokens}")
    a = _open(args.a, args.from_, args)
    b = _open(args.b, args.from_b, args)
    try:
        check_comparable(a, b)
        tokens, how = _tokens_for(args, a, b)
        tol = tolerance_by_name(args.tolerance) if args.tolerance else tolerance_for_models(a, b)
        print(f"A: {args.a} ({_describe(a)})")
        print(f"B: {args.b} ({_describe(b)})")
        print(f"tokens: {how}")
        t0 = time.perf_counter()
        report = validate(a, b, tokens, tol)
        seconds = time.perf_counter() - t0
    finally:
        a.close()
        b.close()
    for line in report.lines(per_position=not args.brief):
        print(line)
    print(f"({2 * len(tokens)} positions run in {seconds:.2f} s)", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_DIFFER


# -- roundtrip ----------------------------------------------------------------------------------------

def cmd_roundtrip(args: argparse.Namespace) -> int:
    from .blas import tune_threads
    from .cli import EXIT_DIFFER, EXIT_OK, _kv_list, _open
    from .errors import UsageError
    from .registry import get_registry

    tune_threads()
    from .roundtrip import roundtrip
    from .validate import default_tokens

    via = get_registry().format(args.via)
    if args.tokens is not None and args.tokens < 1:
        raise UsageError(f"--tokens must be at least 1, got {args.tokens}")
    model = _open(args.input, args.from_, args)
    try:
        tokens = None
        if args.tokens is not None:
            bos = model.tokenizer.bos_id if model.tokenizer is not None else 1
            tokens = default_tokens(int(model.hparams["n_vocab"]), args.tokens, bos)
        result = roundtrip(model, args.input, via, dtype=args.dtype, options=_kv_list(args.option, "-O"),
                           allow_lossy=args.allow_lossy, tokens=tokens)
    finally:
        model.close()
    print(f"round trip: {args.input} ({model.format}) -> {via.name} -> {model.format}")
    for line in result.lines():
        print(line)
    return EXIT_OK if result.ok else EXIT_DIFFER


# -- parser -------------------------------------------------------------------------------------------

def add_commands(sub: Any, add_read_options: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("run", help="generate text with the reference executor (llama2.c run's sampler)",
                       description="Generate text from MODEL with mconv's numpy executor, streaming tokens to "
                       "stdout and tokens/s to stderr.  Sampling is llama2.c run.c's: the same --seed picks "
                       "the same token ids from the same logits.")
    p.add_argument("model", metavar="MODEL")
    add_read_options(p)
    p.add_argument("--prompt", "-p", dest="prompt", metavar="TEXT", help="prompt (default: start from BOS alone)")
    p.add_argument("-n", type=_int_arg, default=256, metavar="N",
                   help="positions to run, prompt included, as run.c's -n (default 256; 0 = n_ctx)")
    p.add_argument("--temperature", "-t", type=_float_arg, default=1.0, metavar="T",
                   help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=_float_arg, default=0.9, metavar="P",
                   help="nucleus sampling; <= 0 or >= 1 samples the full distribution (default 0.9)")
    p.add_argument("--seed", "-s", type=_int_arg, default=None, metavar="S",
                   help="xorshift seed (default, or 0: the current time, as run.c)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="compare the logits of two models (exit 1 beyond tolerance)",
                       description="Run A and B on the same tokens and compare logits per position: max "
                       "|Δlogit|, cosine similarity, top-1 agreement.  The tolerance row comes from the "
                       "loosest dtype involved (`--tolerances` prints the table); models made of the same "
                       "values must give bit-equal logits.  Exit 0 within tolerance, 1 beyond, 2 on error.")
    p.add_argument("a", metavar="A", nargs="?")
    p.add_argument("b", metavar="B", nargs="?")
    add_read_options(p)
    p.add_argument("--from-b", metavar="FORMAT", help="format of B (default: sniffed; --from applies to A)")
    p.add_argument("--prompt", metavar="TEXT", help="encode TEXT (after BOS) with the models' tokenizer")
    p.add_argument("--tokens", type=_int_arg, metavar="N",
                   help="BOS + N-1 ids from a generator seeded with 0 (default: 32)")
    p.add_argument("--tolerance", metavar="ROW", help="use this row of the table (or a dtype's row)")
    p.add_argument("--tolerances", action="store_true", help="print the tolerance table and exit")
    p.add_argument("--brief", action="store_true", help="no per-position lines")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("roundtrip", help="convert A -> B -> A in a temporary directory and compare",
                       description="Write IN in FORMAT, read it back, write it in IN's own format, and compare "
                       "tensors, hparams, tokenizer and logits with IN.  Lossless legs must reproduce IN "
                       "exactly (bit-equal logits); lossy legs must stay within tolerance.  Exit 1 otherwise.")
    p.add_argument("input", metavar="IN")
    p.add_argument("--via", required=True, metavar="FORMAT", help="the intermediate format")
    add_read_options(p)
    p.add_argument("--dtype", metavar="D", help="store tensors as D in FORMAT")
    p.add_argument("-O", dest="option", action="append", default=[], metavar="KEY=VALUE",
                   help="writer option of FORMAT")
    p.add_argument("--allow-lossy", action="store_true", help="accept value-changing steps")
    p.add_argument("--tokens", type=_int_arg, metavar="N", help="tokens to compare logits on (default 32)")
    p.set_defaults(func=cmd_roundtrip)
