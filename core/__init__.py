"""mconv core: the IR, dtypes, naming tables, plugin registry, planner, executor and CLI."""

from typing import Any


def __getattr__(name: str) -> Any:
    # the version is looked up on first use: importlib.metadata costs ``mconv --help`` tens of ms
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("mconv")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
