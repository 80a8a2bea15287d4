"""mconv core: the IR, dtypes, naming tables, plugin registry, planner, executor and CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mconv")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
