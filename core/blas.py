"""The thread count of the BLAS that numpy uses (OpenBLAS, as numpy's wheels bundle it), set through
its C API with ctypes.  OpenBLAS threads busy-wait for each other: on a machine whose cores are
shared with other work, one BLAS thread per product is often several times faster than one per core.
``MCONV_THREADS=N`` sets the count the executor uses.  Anything unexpected (another BLAS, a numpy
built differently) leaves the BLAS as it is."""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Any, Optional

_SET_NAMES = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
              "openblas_set_num_threads")
_GET_NAMES = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
              "openblas_get_num_threads")
_lib: Any = None
_searched = False


def _openblas() -> Any:
    global _lib, _searched
    if _searched:
        return _lib
    _searched = True
    import numpy

    root = os.path.dirname(numpy.__file__)
    candidates = glob.glob(os.path.join(root, os.pardir, "numpy.libs", "*openblas*"))
    candidates += glob.glob(os.path.join(root, ".libs", "*openblas*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
        except OSError:
            continue
        if any(hasattr(lib, n) for n in _SET_NAMES):
            _lib = lib
            break
    return _lib


def get_threads() -> Optional[int]:
    lib = _openblas()
    for name in _GET_NAMES:
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            return int(fn())
    return None


def set_threads(n: int) -> bool:
    """Use ``n`` BLAS threads; False when the BLAS could not be reached."""
    lib = _openblas()
    for name in _SET_NAMES:
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            fn(ctypes.c_int(max(1, int(n))))
            return True
    return False


def configured_threads() -> Optional[int]:
    """``MCONV_THREADS`` as an int (None when unset or not a positive integer)."""
    raw = os.environ.get("MCONV_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return None


def default_threads() -> int:
    """``MCONV_THREADS``, else one thread per core that the last minute's load average leaves idle
    (at least one): oversubscribed OpenBLAS threads spin against other processes and crawl."""
    configured = configured_threads()
    if configured is not None:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


_tuned: Optional[int] = None


def tune_threads() -> Optional[int]:
    """Apply :func:`default_threads` once per process (the executor's commands call this); returns
    the thread count set, or None when the BLAS could not be reached."""
    global _tuned
    if _tuned is None:
        n = default_threads()
        _tuned = n if set_threads(n) else -1
    return _tuned if _tuned > 0 else None
