#!/usr/bin/env python3
"""``python pause_child.py MARKER N mconv-args...``: run mconv's command line, but after the N-th
progress report of the writer (N chunks written) create MARKER (holding the pid) and stop there for
good, so a test can kill the process in the middle of writing, deterministically."""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    marker, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    from mconv.core import progress
    from mconv.core.cli import main as cli_main

    original = progress.Progress.update
    calls = [0]

    def update(self: progress.Progress, nbytes: int) -> None:
        original(self, nbytes)
        calls[0] += 1
        if calls[0] == n:
            with open(marker + ".part", "w") as f:
                f.write(str(os.getpid()))
            os.rename(marker + ".part", marker)
            while True:
                time.sleep(3600)

    progress.Progress.update = update  # type: ignore[method-assign]
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
