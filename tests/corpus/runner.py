#!/usr/bin/env python3
"""Run many mconv command lines in a few resource-limited child processes.

Child side (``python runner.py``): reads one JSON job per line on stdin (``{"id", "argv"}``, or
``{"id", "exec"}`` with Python code instead, for testing the runner itself; an optional ``"env"``
sets environment variables for that job only, e.g. ``MCONV_LOAD_PLUGINS``), runs
``mconv.core.cli.main(argv)`` in-process with file descriptors 1 and 2 redirected to temporary files
(so output written by C code is caught too), and answers one JSON line per job:
``{"id", "rc", "out", "err", "escaped", "seconds"}``.  ``escaped`` is the traceback of anything
``main()`` let through (it must not).

Parent side (:class:`Pool`): a few children, each started with an address-space limit
(RLIMIT_AS) and fed one job at a time from a shared queue; a job that takes longer than its time
limit gets its child killed (status "hang"), a child that dies mid-job is reported (status
"crash", with its exit status and the tail of its own stderr), and a fresh child takes over.
Batching jobs in a long-lived child avoids paying the interpreter start-up per case; the limits
still hold per child process.
"""

from __future__ import annotations

import json
import os
import sys
import time

RUNNER = os.path.abspath(__file__)


# ==================================================================================================
# child
# ==================================================================================================

def _run_one(argv: list[str], code: str | None = None, env: dict[str, str] | None = None) -> dict[str, object]:
    import tempfile
    import traceback

    from mconv.core.cli import main
    from mconv.core.registry import reset_registry

    if code is not None:  # the runner's own tests: Python code instead of a command line
        def main(argv: object) -> int:  # type: ignore[misc] # noqa: F811
            exec(code, {})
            return 0

    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    reset_registry()
    escaped = None
    rc = None
    start = time.perf_counter()
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(fo.fileno(), 1)
        os.dup2(fe.fileno(), 2)
        try:
            rc = main(argv)
        except BaseException:  # noqa: BLE001 - reported, never swallowed
            escaped = traceback.format_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        fo.seek(0)
        fe.seek(0)
        out = fo.read().decode("utf-8", "replace")
        err = fe.read().decode("utf-8", "replace")
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_registry()
    return {"rc": rc, "out": out, "err": err, "escaped": escaped, "seconds": time.perf_counter() - start}


def serve() -> int:
    # answers go to a private copy of stdout: fd 1 itself is redirected while a job runs
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        result = _run_one(job.get("argv", []), job.get("exec"), job.get("env"))
        result["id"] = job["id"]
        answers.write(json.dumps(result) + "\n")
    return 0


# ==================================================================================================
# parent
# ==================================================================================================

#: defaults for hostile-input runs: 1 GiB of address space, 20 s per job
MEMORY_LIMIT = 1 << 30
TIME_LIMIT = 20.0


def _child_env(path: list[str]) -> dict[str, str]:
    """The children's environment: one BLAS thread, built-in plugins only unless a job's ``env``
    says otherwise, and ``path`` (this repository's plugins, loadable on demand) on PYTHONPATH."""
    env = dict(os.environ)
    env.update(MCONV_LOAD_PLUGINS=os.environ.get("MCONV_LOAD_PLUGINS", ""), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONFAULTHANDLER="1")
    env["PYTHONPATH"] = os.pathsep.join(path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class _Child:
    def __init__(self, memory: int, path: list[str]) -> None:
        import queue
        import subprocess
        import tempfile
        import threading

        def limits() -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=_child_env(path), preexec_fn=limits, text=True)
        self.answers: "queue.Queue[str | None]" = queue.Queue()
        stdout, answers = self.proc.stdout, self.answers

        def pump() -> None:
            assert stdout is not None
            for line in stdout:
                answers.put(line)
            answers.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def ask(self, job: dict[str, object], timeout: float) -> dict[str, object]:
        import queue

        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.answers.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"id": job["id"], "status": "hang", "detail": f"no answer within {timeout:.0f} s"}
        except BrokenPipeError:
            line = None
        if line is None:
            code = self.proc.wait()
            self.stderr.seek(0)
            tail = self.stderr.read()[-2000:].decode("utf-8", "replace")
            return {"id": job["id"], "status": "crash", "detail": f"runner exited with {code}: {tail}"}
        answer = json.loads(line)
        answer["status"] = "done"
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.kill()
        self.stderr.close()


def run_jobs(jobs: list[dict[str, object]], workers: int = 0, memory: int = MEMORY_LIMIT,
             timeout: float = TIME_LIMIT) -> dict[str, dict[str, object]]:
    """Run ``jobs`` (``{"id", "argv"[, "env"]}``) in ``workers`` limited children; id -> answer with
    ``status`` "done" (then rc/out/err/escaped/seconds), "hang" or "crash" (then detail)."""
    import queue
    import shutil
    import tempfile
    import threading

    from corpus.plugins import fake_site

    workers = workers or max(1, min(4, os.cpu_count() or 1))
    todo: "queue.Queue[dict[str, object]]" = queue.Queue()
    for job in jobs:
        todo.put(job)
    results: dict[str, dict[str, object]] = {}
    lock = threading.Lock()
    site = tempfile.mkdtemp(prefix="mconv-plugins-")
    path = fake_site(site)

    def work() -> None:
        child = _Child(memory, path)
        try:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                answer = child.ask(job, timeout)
                if answer["status"] != "done":
                    child.kill()
                    child.close()
                    child = _Child(memory, path)
                with lock:
                    results[str(job["id"])] = answer
        finally:
            child.close()

    threads = [threading.Thread(target=work) for _ in range(min(workers, len(jobs)) or 1)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        shutil.rmtree(site, ignore_errors=True)
    return results


# ==================================================================================================
# the corpus
# ==================================================================================================

class Report:
    """Outcome of a corpus run: per-run problems and per-format counts."""

    def __init__(self, cases: list, problems: dict[tuple[str, str], list[str]], seconds: float, runs: int) -> None:
        self.cases = cases
        self.by_run = problems
        self.seconds = seconds
        self.runs = runs

    @property
    def ok(self) -> bool:
        return not any(self.by_run.values())

    def problems(self, case_id: str | None = None) -> list[str]:
        return [f"{cid} [{cmd}]: {p}" for (cid, cmd), ps in sorted(self.by_run.items())
                if case_id in (None, cid) for p in ps]

    def summary(self) -> str:
        per: dict[str, list[int]] = {}
        bad_cases = {cid for (cid, _), ps in self.by_run.items() if ps}
        for c in self.cases:
            n = per.setdefault(c.format, [0, 0])
            n[0] += 1
            n[1] += c.id not in bad_cases
        parts = ", ".join(f"{fmt} {clean}/{total}" for fmt, (total, clean) in sorted(per.items()))
        clean = sum(v[1] for v in per.values())
        return (f"malformed-input corpus: {len(self.cases)} cases, {self.runs} runs in {self.seconds:.1f} s; "
                f"refused cleanly per format: {parts}; total {clean}/{len(self.cases)}")


def check_answer(case, command: str, answer: dict[str, object],  # type: ignore[no-untyped-def]
                 exact: str | None = None) -> list[str]:
    """What is wrong with one run of a malformed case (empty = refused cleanly); ``exact`` is the
    whole message after ``mconv: error: `` when the case's builder gave one."""
    if answer["status"] != "done":
        return [f"{answer['status']}: {answer.get('detail', '')}"]
    problems = []
    err, out = str(answer["err"]), str(answer["out"])
    if answer["escaped"]:
        problems.append(f"an exception escaped main(): {answer['escaped']}")
    if answer["rc"] != 2:
        problems.append(f"exit code {answer['rc']}, expected 2")
    lines = err.splitlines()
    if len(lines) != 1 or not lines[0].startswith("mconv: error: "):
        problems.append(f"stderr is not exactly one 'mconv: error: ' line: {err!r}")
    elif case.expect not in lines[0]:
        problems.append(f"message lacks {case.expect!r}: {lines[0]!r}")
    elif exact is not None and lines[0] != f"mconv: error: {exact}":
        problems.append(f"message is not exactly {'mconv: error: ' + exact!r}: {lines[0]!r}")
    if "Traceback" in err or "Traceback" in out:
        problems.append("a traceback was printed")
    return problems


def run_corpus(cases: list, inputs: dict[str, object], corpus_root: str, out_root: str, workers: int = 0,
               memory: int = MEMORY_LIMIT, timeout: float = TIME_LIMIT) -> Report:
    """Run every command of every case (built under ``corpus_root`` by make_corpus.write_corpus:
    case id -> input path, or (input path, exact message)); check the answers, that no output or
    temporary file was left, and that the case's directory is unchanged (same files, same bytes)."""
    from corpus.builders import tree_digest
    from corpus.make_corpus import split_input

    jobs = []
    outs: dict[str, str] = {}
    case_dir = {c.id: os.path.join(corpus_root, c.format, c.name) for c in cases}
    before = {c.id: tree_digest(case_dir[c.id]) for c in cases}
    for c in cases:
        for cmd in c.commands:
            d = os.path.join(out_root, c.format, c.name, cmd)
            os.makedirs(d)
            outs[f"{c.id}#{cmd}"] = d
            job: dict[str, object] = {"id": f"{c.id}#{cmd}",
                                      "argv": c.argv(cmd, split_input(inputs[c.id])[0], os.path.join(d, c.output))}
            if c.plugins:
                job["env"] = {"MCONV_LOAD_PLUGINS": ",".join(c.plugins)}
            jobs.append(job)
    start = time.perf_counter()
    answers = run_jobs(jobs, workers, memory, timeout)
    seconds = time.perf_counter() - start
    problems: dict[tuple[str, str], list[str]] = {}
    for c in cases:
        after = tree_digest(case_dir[c.id])
        for cmd in c.commands:
            ps = check_answer(c, cmd, answers[f"{c.id}#{cmd}"], split_input(inputs[c.id])[1])
            left = os.listdir(outs[f"{c.id}#{cmd}"])
            if left:
                ps.append(f"left files in the output directory: {left}")
            if after != before[c.id]:
                changed = sorted(set(after.items()) ^ set(before[c.id].items()))
                ps.append(f"the input tree changed: {changed[:4]}")
            problems[(c.id, cmd)] = ps
    return Report(cases, problems, seconds, len(jobs))


if __name__ == "__main__":
    sys.exit(serve())
