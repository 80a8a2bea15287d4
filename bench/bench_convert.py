"""Conversion speed and peak memory at a real model size, as whole-process figures.

    python bench/bench_convert.py [--dir DIR] [--runs 3] [--only ROW,ROW...] [--keep]

Generates a TinyLlama-1.1B-shaped llama (dim 2048, 22 layers, 32 heads, 4 kv heads, hidden 5632,
vocab 32000; random weights from a fixed seed, a synthetic 32000-token SentencePiece-style
vocabulary) with mconv's own writers, streaming (the generator is a lazy source, so the model is
never in memory): a Meta directory (``consolidated.00.pth`` in bf16 + params.json +
tokenizer.model) and an HF safetensors directory.  Then it runs each row as a child process
(``mconv`` itself, exactly as a user would) ``--runs`` times and reports the median wall time and
the median of the child's peak resident set size (``os.wait4``: ru_maxrss covers the child and the
processes it waited for).  Each output is deleted right after it is measured.

Rows (``--only`` takes a comma list of these names):

    cp          cp IN OUT && sync OUT on the 2.2 GB .pth (warm cache; the first run is discarded):
                the physical limit, since mconv fsyncs its output too
    bf16        pth -> gguf, dtype kept (bf16; 1-D norms widened to f32 as llama.cpp needs)
    f16         pth -> gguf --dtype f16
    q8_0        pth -> gguf --dtype q8_0
    q4_k_m      pth -> gguf --dtype q4_k_m
    st-f16      safetensors dir -> gguf --dtype f16
    llama2c     pth -> llama2.c v0 directory (f32 model.bin + tokenizer.bin)
    ggml        gguf q8_0 -> ggml (ggjt v3)
    inspect     mconv inspect on the .pth directory
    help        mconv --help

Targets (2-core machine), as ratios to ``cp`` measured in the same run (scaled to the bytes each row
reads, for the smaller q8_0 GGUF input): a conversion that keeps the
dtype within 1.5x, a cast (bf16 -> f16/f32) within 4x, q8_0 within 8x (q4_k_m reported); peak RSS
under 10 % of the input for every conversion; inspect under 0.5 s; --help under 0.3 s.

Needs free disk for the inputs (2.2 GB .pth, 2.2 GB safetensors, 1.2 GB q8_0 GGUF, as the rows
need them) plus the largest output (4.4 GB f32 llama2.c) plus a margin; refuses to start otherwise.
The generated inputs are deleted at the end unless ``--keep`` (a later run with the same ``--dir``
reuses kept inputs).  Never part of .ci/run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

HPARAMS = dict(n_vocab=32000, n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_ctx=2048,
               norm_eps=1e-5, rope_theta=10000.0)
SEED = 1234
#: rows of random values generated from one seed (so values do not depend on how a writer chunks)
GEN_BLOCK = 64
MB = 10**6
MARGIN = 2 * 10**9
STAMP = "bench-model.json"


# ==================================================================================================
# the model
# ==================================================================================================

def param_count(hp: dict) -> int:
    """Parameters of a llama with untied classifier (computed here: this process imports no mconv)."""
    d, ff, kv = hp["n_embd"], hp["n_ff"], hp["n_embd"] // hp["n_head"] * hp["n_head_kv"]
    per_layer = 2 * d + 2 * d * d + 2 * kv * d + 3 * ff * d
    return 2 * hp["n_vocab"] * d + d + hp["n_layer"] * per_layer


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def synthetic_tokenizer(n_vocab: int):  # type: ignore[no-untyped-def]
    """A llama (SentencePiece BPE, byte fallback) vocabulary of ``n_vocab`` distinct pieces:
    <unk> <s> </s>, the 256 byte tokens, then made-up pieces, half of them word starts (▁)."""
    import numpy as np

    from mconv.plugins import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, Tokenizer

    letters = "etaoinshrdlucmfwypvbgkqjxz"
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    i = 0
    while len(tokens) < n_vocab:
        k, word = i, ""
        while True:
            word += letters[k % 26]
            k //= 26
            if k == 0:
                break
        tokens.append((("\u2581" if i % 2 == 0 else "") + word).encode())
        types.append(TOKEN_NORMAL)
        i += 1
    scores = np.zeros(n_vocab, np.float32)
    scores[259:] = -np.arange(n_vocab - 259, dtype=np.float32)
    return Tokenizer("llama", tuple(tokens), scores, np.asarray(types, np.int32), bos_id=1, eos_id=2, unk_id=0)


def synthetic_model(hp: dict, seed: int = SEED):  # type: ignore[no-untyped-def]
    """The model as lazy tensors: values are generated per block of GEN_BLOCK rows when a writer
    pulls them (on mconv's thread pool), N(0, 1/in) for matrices and 1 + N(0, 0.01) for norms."""
    import numpy as np

    from mconv.core.arch.llama import expected_shapes
    from mconv.plugins import Derived, Model, Tensor, get_dtype, table

    bf16 = get_dtype("bf16")
    shapes = expected_shapes(hp)
    tensors = {}
    for index, name in enumerate(table("llama").canonical_order(shapes)):
        shape = shapes[name]
        cols = shape[-1]

        def rows(start: int, stop: int, _i: int = index, _shape: tuple = shape, _cols: int = cols) -> np.ndarray:
            first, last = start // GEN_BLOCK, -(-stop // GEN_BLOCK)
            parts = []
            for block in range(first, last):
                rng = np.random.default_rng((seed, _i, block))
                n = min(GEN_BLOCK, (_numel(_shape) // _cols) - block * GEN_BLOCK)
                v = rng.standard_normal((n, _cols), dtype=np.float32)
                if len(_shape) == 1:
                    v *= np.float32(0.1)
                    v += np.float32(1.0)
                else:
                    v *= np.float32(1.0 / np.sqrt(_shape[1]))
                parts.append(v)
            values = np.concatenate(parts) if len(parts) > 1 else parts[0]
            lo = start - first * GEN_BLOCK
            return bf16.encode(values[lo:lo + stop - start])

        tensors[name] = Tensor(name, shape, bf16, Derived("random", [], rows, {"seed": seed}))
    return Model("llama", dict(hp), tensors, tokenizer=synthetic_tokenizer(hp["n_vocab"]),
                 hparam_origin={k: "bench" for k in hp}, format="memory")


def generate(inputs: "Inputs", need: set[str], log: Callable[[str], None]) -> None:
    from mconv.core.convert import open_model, write_model
    from mconv.core.registry import get_registry

    reg = get_registry()
    stamp = {"hparams": HPARAMS, "seed": SEED, "block": GEN_BLOCK}
    stamp_path = os.path.join(inputs.root, STAMP)
    have: dict = {}
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            have = json.load(f)
        if have.get("model") != stamp:
            log("kept inputs were made with other settings: regenerating")
            for p in (inputs.pth_dir, inputs.st_dir, inputs.q8_gguf):
                _remove(p)
            have = {}
    done = set(have.get("made", []))

    def record(what: str) -> None:
        done.add(what)
        with open(stamp_path, "w") as f:
            json.dump({"model": stamp, "made": sorted(done)}, f)

    if "pth" in need and not ("pth" in done and os.path.isdir(inputs.pth_dir)):
        t = time.perf_counter()
        write_model(synthetic_model(HPARAMS), inputs.pth_dir + "/", reg.format("pth"), quiet=True, force=True)
        log(f"generated {inputs.pth_dir} in {time.perf_counter() - t:.1f} s")
        record("pth")
    if "st" in need and not ("st" in done and os.path.isdir(inputs.st_dir)):
        t = time.perf_counter()
        write_model(synthetic_model(HPARAMS), inputs.st_dir + "/", reg.format("safetensors"), quiet=True,
                    force=True)
        log(f"generated {inputs.st_dir} in {time.perf_counter() - t:.1f} s")
        record("st")
    if "q8" in need and not ("q8" in done and os.path.isfile(inputs.q8_gguf)):
        t = time.perf_counter()
        with open_model(inputs.pth_dir) as model:
            write_model(model, inputs.q8_gguf, reg.format("gguf"), dtype="q8_0", quiet=True, force=True)
        log(f"generated {inputs.q8_gguf} in {time.perf_counter() - t:.1f} s")
        record("q8")


# ==================================================================================================
# measuring
# ==================================================================================================

@dataclass
class Inputs:
    root: str

    @property
    def pth_dir(self) -> str:
        return os.path.join(self.root, "tinyllama-pth")

    @property
    def pth_file(self) -> str:
        return os.path.join(self.pth_dir, "consolidated.00.pth")

    @property
    def st_dir(self) -> str:
        return os.path.join(self.root, "tinyllama-hf")

    @property
    def q8_gguf(self) -> str:
        return os.path.join(self.root, "tinyllama-q8_0.gguf")

    @property
    def out(self) -> str:
        return os.path.join(self.root, "out")


@dataclass
class Row:
    name: str
    label: str
    #: inputs it needs: "pth", "st", "q8"
    needs: tuple[str, ...]
    #: argv after the mconv command (or a full argv for cp), given the inputs and an output path
    argv: Callable[[Inputs, str], list[str]]
    #: the input whose size gives MB/s and the RSS bound
    input_path: Callable[[Inputs], str]
    #: target: ratio to cp, or seconds for inspect/help
    ratio_target: Optional[float] = None
    seconds_target: Optional[float] = None
    rss_bound: bool = True
    out_suffix: str = ""
    walls: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    #: bytes of the input (recorded while it exists: inputs may be deleted before the report)
    size: int = 0


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def mconv_argv() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "mconv")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "mconv.core"]


def rows_table() -> list[Row]:
    m = mconv_argv()

    def translate(src: Callable[[Inputs], str], *extra: str) -> Callable[[Inputs, str], list[str]]:
        return lambda i, out: [*m, "translate", src(i), out, *extra]

    pth: Callable[[Inputs], str] = lambda i: i.pth_dir  # noqa: E731
    pth_file: Callable[[Inputs], str] = lambda i: i.pth_file  # noqa: E731
    return [
        Row("cp", "cp IN OUT && sync OUT", ("pth",),
            lambda i, out: ["sh", "-c", f"cp {shlex.quote(i.pth_file)} {shlex.quote(out)} && sync {shlex.quote(out)}"],
            pth_file, rss_bound=False),
        Row("bf16", "pth -> gguf bf16 (kept)", ("pth",), translate(pth), pth_file, ratio_target=1.5,
            out_suffix=".gguf"),
        Row("f16", "pth -> gguf f16", ("pth",), translate(pth, "--dtype", "f16"), pth_file, ratio_target=4.0,
            out_suffix=".gguf"),
        Row("q8_0", "pth -> gguf q8_0", ("pth",), translate(pth, "--dtype", "q8_0"), pth_file, ratio_target=8.0,
            out_suffix=".gguf"),
        Row("q4_k_m", "pth -> gguf q4_k_m", ("pth",), translate(pth, "--dtype", "q4_k_m"), pth_file,
            out_suffix=".gguf"),
        Row("st-f16", "safetensors -> gguf f16", ("st",), translate(lambda i: i.st_dir, "--dtype", "f16"),
            lambda i: os.path.join(i.st_dir, "model.safetensors"), ratio_target=4.0, out_suffix=".gguf"),
        Row("llama2c", "pth -> llama2c v0 (f32)", ("pth",),
            lambda i, out: [*m, "translate", i.pth_dir, out + "/", "--to", "llama2c", "-O", "version=0"],
            pth_file, ratio_target=4.0),
        Row("ggml", "gguf q8_0 -> ggml", ("q8",), translate(lambda i: i.q8_gguf, "--to", "ggml"),
            lambda i: i.q8_gguf, ratio_target=1.5, out_suffix=".bin"),
        Row("inspect", "mconv inspect (pth dir)", ("pth",), lambda i, out: [*m, "inspect", i.pth_dir], pth_file,
            seconds_target=0.5),
        Row("help", "mconv --help", (), lambda i, out: [*m, "--help"], lambda i: "", seconds_target=0.3,
            rss_bound=False),
    ]


TIME = "/usr/bin/time"


def child_env(root: str) -> dict[str, str]:
    """The children's environment: bytecode cached (in ROOT/pycache, so the source tree stays clean)
    as it is for an installed package, even where PYTHONDONTWRITEBYTECODE is set."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(root, "pycache")
    return env


def settle() -> None:
    """Flush dirty pages and let the file system finish freeing the last output (ext4 mounted with
    ``discard`` trims freed blocks at the next journal commit), so one run does not pay for the
    previous one."""
    os.sync()
    time.sleep(0.5)


def measure(argv: list[str], log_path: str, env: dict[str, str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit status) of one child process.

    The peak comes from /usr/bin/time when it is there: Linux carries a process's high-water RSS
    across exec, so a child forked (or vforked) straight from this Python process could inherit this
    process's peak; /usr/bin/time is a small C program that forks the command itself.  Without it,
    ``os.wait4``'s ru_maxrss is used (this process never imports numpy or mconv, and the generator
    runs in a child of its own, so that floor stays near 10 MB)."""
    use_time = os.access(TIME, os.X_OK)
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf, open(log_path, "ab") as log:
        full = [TIME, "-f", "%M", "-o", tf.name, *argv] if use_time else argv
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        peak_kb = usage.ru_maxrss
        if use_time:
            lines = [ln for ln in tf.read().split() if ln.isdigit()]
            if lines:
                peak_kb = int(lines[-1])
    return wall, peak_kb * 1024, rc


def warm(path: str) -> None:
    """Read a file or directory once so that every row starts from a warm page cache."""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else [path]
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def disk_needed(rows: list[Row], inputs: Inputs, model_bytes: int) -> int:
    need = {n for r in rows for n in r.needs}
    if "q8" in need:
        need.add("pth")
    missing = 0
    for what, path, size in (("pth", inputs.pth_dir, model_bytes), ("st", inputs.st_dir, model_bytes),
                             ("q8", inputs.q8_gguf, model_bytes * 17 // 32)):
        if what in need and not os.path.exists(path):
            missing += size
    largest = 2 * model_bytes if any(r.name == "llama2c" for r in rows) else model_bytes
    return missing + largest + MARGIN


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="working folder (default: a new folder under /tmp)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row; the median is reported (default 3)")
    ap.add_argument("--only", help="comma list of rows (default: all): "
                    + ",".join(r.name for r in rows_table()))
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs for a later run with --dir")
    ap.add_argument("--generate", help=argparse.SUPPRESS)  # internal: the generator child
    args = ap.parse_args()
    if args.generate is not None:
        generate(Inputs(args.dir), set(args.generate.split(",")), lambda m: print(m, file=sys.stderr, flush=True))
        return 0
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    rows = rows_table()
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in {r.name for r in rows}]
        if unknown:
            ap.error(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(r.name for r in rows)}")
        # cp is the yardstick of every ratio: always measured
        rows = [r for r in rows if r.name in wanted or (r.name == "cp" and any(
            rr.ratio_target is not None or rr.name == "q4_k_m" for rr in rows if rr.name in wanted))]

    root = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="mconv-bench-", dir="/tmp")
    os.makedirs(root, exist_ok=True)
    inputs = Inputs(root)
    model_bytes = 2 * param_count(HPARAMS)
    free = shutil.disk_usage(root).free
    needed = disk_needed(rows, inputs, model_bytes)
    if free < needed:
        print(f"bench_convert: not enough free disk in {root}: {free / 1e9:.1f} GB free, {needed / 1e9:.1f} GB "
              f"needed (inputs {model_bytes / 1e9:.1f} GB each, largest output, {MARGIN / 1e9:.0f} GB margin); "
              "use --dir on a larger disk or --only fewer rows", file=sys.stderr)
        return 2
    log_path = os.path.join(root, "bench.log")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"bench_convert: {root}; {os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{param_count(HPARAMS) / 1e9:.2f} B parameters ({model_bytes / 1e9:.2f} GB bf16); child output in {log_path}")
    need = {n for r in rows for n in r.needs}
    if "q8" in need:
        need.add("pth")
    try:
        # in a child: this process stays small (see measure) and never imports numpy or mconv
        subprocess.run([sys.executable, os.path.abspath(__file__), "--dir", root, "--generate", ",".join(sorted(need))],
                       check=True)
        for p in (inputs.pth_dir, inputs.st_dir, inputs.q8_gguf):
            if os.path.exists(p):
                warm(p)
        os.makedirs(inputs.out, exist_ok=True)
        env = child_env(root)
        # compile every module once (bytecode cache), untimed
        warmups = [[*mconv_argv(), "--help"]]
        if need:
            warmups.append([*mconv_argv(), "inspect", inputs.pth_dir if "pth" in need else
                            inputs.st_dir if "st" in need else inputs.q8_gguf])
        for argv in warmups:
            measure(argv, log_path, env)
        load_start = os.getloadavg()
        for row in rows:
            runs = args.runs + (1 if row.name == "cp" else 0)   # cp: the first run is discarded
            for k in range(runs):
                out = os.path.join(inputs.out, f"{row.name}-{k}{row.out_suffix}")
                settle()
                wall, rss, rc = measure(row.argv(inputs, out), log_path, env)
                if os.path.lexists(out):
                    _remove(out)
                if rc != 0:
                    log(f"{row.name}: exit status {rc}; see {log_path}")
                    return 1
                if row.name == "cp" and k == 0:
                    continue
                path = row.input_path(inputs)
                row.size = _size(path) if path else 0
                row.walls.append(wall)
                row.rss.append(rss)
                log(f"  {row.name:<8} run {len(row.walls)}: {wall:7.2f} s, peak RSS {rss / 2**20:7.1f} MiB")
        load_end = os.getloadavg()
    finally:
        _remove(inputs.out)
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
        elif not args.keep:
            for p in (inputs.pth_dir, inputs.st_dir, inputs.q8_gguf, os.path.join(root, STAMP)):
                _remove(p)

    report(rows, inputs, args, load_start, load_end, model_bytes)
    return 0


def report(rows: list[Row], inputs: Inputs, args: argparse.Namespace, load_start: tuple, load_end: tuple,
           model_bytes: int) -> None:
    cp = next((r for r in rows if r.name == "cp"), None)
    cp_wall = statistics.median(cp.walls) if cp else None
    cp_size = cp.size if cp else 0
    head = f"{'row':<8} {'what':<28} {'wall s':>8} {'MB/s':>8} {'peak RSS':>10} {'RSS/in':>7} {'x cp':>6}  target"
    print(f"\nmedian of {args.runs} run(s); load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; "
          f"input {model_bytes / 1e9:.2f} GB")
    print(head)
    print("-" * len(head))
    all_ok = True
    for r in rows:
        wall = statistics.median(r.walls)
        rss = statistics.median(r.rss)
        size = r.size
        rate = f"{size / wall / MB:8.0f}" if size and r.name not in ("inspect", "help") else f"{'':>8}"
        frac = rss / size if size else 0.0
        # cp of as many bytes as this row reads (the q8_0 GGUF is smaller than the .pth cp copies)
        ratio = wall / (cp_wall * size / cp_size) if cp_wall and size else None
        checks = []
        if r.ratio_target is not None and ratio is not None:
            ok = ratio <= r.ratio_target
            checks.append(f"<= {r.ratio_target:g}x cp {'ok' if ok else 'MISSED'}")
            all_ok &= ok
        if r.seconds_target is not None:
            ok = wall <= r.seconds_target
            checks.append(f"<= {r.seconds_target:g} s {'ok' if ok else 'MISSED'}")
            all_ok &= ok
        if r.rss_bound and size:
            ok = frac < 0.10
            checks.append(f"RSS < 10% {'ok' if ok else 'MISSED'}")
            all_ok &= ok
        ratio_s = f"{ratio:6.2f}" if ratio is not None and r.name not in ("inspect", "help") else f"{'':>6}"
        frac_s = f"{100 * frac:6.1f}%" if size else f"{'':>7}"
        print(f"{r.name:<8} {r.label:<28} {wall:8.2f} {rate} {rss / 2**20:7.0f} MiB {frac_s} {ratio_s}  "
              f"{'; '.join(checks)}")
    print(f"targets: {'all met' if all_ok else 'NOT all met'}")


if __name__ == "__main__":
    sys.exit(main())
