"""The plugin registry: built-in formats and architectures register through the same pluggy hooks
as third-party plugins (entry-point group ``mconv``), loaded on first use.

``MCONV_LOAD_PLUGINS``: unset = every installed entry point; a comma list = only those entry-point
names; empty = built-ins only.

Loading has two stages so that ``mconv --help`` stays cheap.  Building the command line needs only
the ``register_commands`` hook: :func:`get_command_registry` imports the entry-point plugins (a
plugin that keeps its top level light, importing its format code inside ``register_formats``, costs
next to nothing) and the built-in modules listed in ``DEFAULT_COMMAND_PLUGINS``.  The built-in
format modules (and numpy with them) are imported only when formats or architectures are needed,
by :func:`get_registry`.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownFormatError

if TYPE_CHECKING:
    from .arch import Architecture
    from .format import Format

#: modules registered as plugins before any entry point (named as strings: core never imports a format)
DEFAULT_PLUGINS: tuple[str, ...] = (
    "mconv.core.arch.llama",
    "mconv.formats.safetensors",
    "mconv.formats.pth",
    "mconv.formats.llama2c",
    "mconv.formats.gguf",
    "mconv.formats.ggml",
)

#: built-in modules that implement ``register_commands``: imported to build the command line, before
#: the other built-ins (none today: core's own commands are added by cli.py directly)
DEFAULT_COMMAND_PLUGINS: tuple[str, ...] = ()

ENTRY_POINT_GROUP = "mconv"


@dataclass(frozen=True)
class FormatEntry:
    format: Format
    plugin: str
    builtin: bool


@dataclass(frozen=True)
class PluginInfo:
    name: str
    origin: str          # "built-in" or "entry point <dist> <version>"
    formats: tuple[str, ...]
    architectures: tuple[str, ...]


class Registry:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("mconv")
        self.pm.add_hookspecs(hookspecs)
        self.formats: dict[str, FormatEntry] = {}
        self.aliases: dict[str, str] = {}
        self.architectures: dict[str, tuple[Architecture, str]] = {}
        self.plugins: dict[str, str] = {}
        self._commands_loaded = False
        self._complete = False

    def load_commands(self) -> "Registry":
        """Stage 1: the plugins whose ``register_commands`` the command line needs."""
        if not self._commands_loaded:
            self._commands_loaded = True
            for module_name in DEFAULT_COMMAND_PLUGINS:
                self._register_builtin(module_name)
            self._load_entry_points()
        return self

    def load_all(self) -> "Registry":
        """Stage 2: every built-in, then formats and architectures collected from all plugins."""
        if not self._complete:
            self.load_commands()
            self._complete = True
            for module_name in DEFAULT_PLUGINS:
                origin = self.plugins.get(module_name)
                if origin is None:
                    self._register_builtin(module_name)
                elif origin != "built-in":
                    raise PluginError(f"two plugins are named {module_name!r}: built-in and {origin}")
            self._collect()
        return self

    def _register_builtin(self, module_name: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise PluginError(f"built-in plugin {module_name} failed to import: {e}")
        self.pm.register(module, name=module_name)
        self.plugins[module_name] = "built-in"

    def _ordered(self, impls: list[Any]) -> list[Any]:
        """Hook implementations with the built-ins first, in DEFAULT_PLUGINS order, then entry points
        in load order (what registration order was before loading had stages)."""
        rank = {name: i for i, name in enumerate([*DEFAULT_PLUGINS, *(p for p in self.plugins
                                                                       if p not in DEFAULT_PLUGINS)])}
        return sorted(impls, key=lambda impl: rank.get(impl.plugin_name, len(rank)))

    # -- loading -----------------------------------------------------------------------------------
    def _selected(self) -> Optional[set[str]]:
        env = os.environ.get("MCONV_LOAD_PLUGINS")
        if env is None:
            return None
        return {n.strip() for n in env.split(",") if n.strip()}

    def _load_entry_points(self) -> None:
        selected = self._selected()
        if selected is not None and not selected:
            return
        import importlib.metadata

        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if selected is not None and ep.name not in selected:
                continue
            dist = getattr(ep, "dist", None)
            origin = f"entry point {ep.value} ({dist.name} {dist.version})" if dist else f"entry point {ep.value}"
            key = f"{ep.name}={ep.value}"
            if key in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(key)
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not take the tool down with a traceback
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}")
            name = ep.name
            if name in self.plugins:
                raise PluginError(f"two plugins are named {name!r}: {self.plugins[name]} and {origin}")
            try:
                self.pm.register(obj, name=name)
            except ValueError as e:
                raise PluginError(f"plugin {name!r} ({ep.value}) cannot be registered: {e}")
            self.plugins[name] = origin

    def _collect(self) -> None:
        for impl in self._ordered(self.pm.hook.register_formats.get_hookimpls()):
            impl.function(register=lambda fmt, _p=impl.plugin_name: self._add_format(fmt, _p))
        for impl in self._ordered(self.pm.hook.register_architectures.get_hookimpls()):
            impl.function(register=lambda arch, _p=impl.plugin_name: self._add_arch(arch, _p))

    def _add_format(self, fmt: Any, plugin: str) -> None:
        from .format import Format

        if isinstance(fmt, type):
            fmt = fmt()
        if not isinstance(fmt, Format) or not fmt.name:
            raise PluginError(f"plugin {plugin!r} registered {fmt!r}, which is not a named Format")
        for name in (fmt.name, *fmt.aliases):
            if name in self.formats or name in self.aliases:
                owner = self.formats[self.aliases.get(name, name)].plugin
                raise PluginError(f"format {name!r} is registered by two plugins: {owner!r} and {plugin!r}")
        self.formats[fmt.name] = FormatEntry(fmt, plugin, self.plugins.get(plugin) == "built-in")
        for alias in fmt.aliases:
            self.aliases[alias] = fmt.name

    def _add_arch(self, arch: Any, plugin: str) -> None:
        from .arch import Architecture

        if not isinstance(arch, Architecture):
            raise PluginError(f"plugin {plugin!r} registered {arch!r}, which is not an Architecture")
        if arch.name in self.architectures:
            raise PluginError(f"architecture {arch.name!r} is registered by two plugins: "
                              f"{self.architectures[arch.name][1]!r} and {plugin!r}")
        self.architectures[arch.name] = (arch, plugin)
        from .names import register_table

        register_table(arch.table)

    # -- queries -----------------------------------------------------------------------------------
    def format(self, name: str) -> Format:
        key = name.lower()
        key = self.aliases.get(key, key)
        if key not in self.formats:
            raise UnknownFormatError(f"unknown format {name!r} (known: {', '.join(sorted(self.formats))})")
        return self.formats[key].format

    def architecture(self, name: str) -> Architecture:
        if name not in self.architectures:
            raise UnknownFormatError(f"unknown architecture {name!r} (known: {', '.join(sorted(self.architectures))})")
        return self.architectures[name][0]

    def sniff(self, path: str) -> Format:
        """The format that claims ``path`` with the highest confidence."""
        from .format import head_of

        try:
            head, size, is_dir = head_of(path)
        except OSError as e:
            raise UnknownFormatError(f"cannot open: {e.strerror}", path=path)
        scored = []
        for entry in self.formats.values():
            if not entry.format.can_read:
                continue
            conf = entry.format.sniff(path, head, size, is_dir)
            if conf > 0:
                scored.append((conf, entry.format.name))
        if not scored:
            what = "directory" if is_dir else "file"
            raise UnknownFormatError(f"no format recognises this {what}; use --from "
                                     f"({', '.join(sorted(n for n, e in self.formats.items() if e.format.can_read))})",
                                     path=path)
        scored.sort(key=lambda x: -x[0])
        return self.format(scored[0][1])

    def formats_for_suffix(self, suffix: str) -> list[Format]:
        return [e.format for e in self.formats.values() if suffix.lower() in e.format.extensions]

    def plugin_infos(self) -> list[PluginInfo]:
        out = []
        builtins = [n for n in DEFAULT_PLUGINS if n in self.plugins]
        for name in [*builtins, *(p for p in self.plugins if p not in builtins)]:
            origin = self.plugins[name]
            fmts = tuple(n for n, e in self.formats.items() if e.plugin == name)
            archs = tuple(n for n, (_, p) in self.architectures.items() if p == name)
            out.append(PluginInfo(name, origin, fmts, archs))
        return out


_REGISTRY: Optional[Registry] = None
_LOCK = threading.Lock()


def _shared() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def _loaded(stage: Callable[[Registry], Registry]) -> Registry:
    global _REGISTRY
    with _LOCK:
        try:
            return stage(_shared())
        except BaseException:
            _REGISTRY = None   # a plugin failed: the next call tries again (and fails the same way)
            raise


def get_registry() -> Registry:
    """The registry with every plugin loaded and every format and architecture collected."""
    return _loaded(Registry.load_all)


def get_command_registry() -> Registry:
    """The registry as far as the command line needs it (``register_commands``): entry-point plugins
    and DEFAULT_COMMAND_PLUGINS, no built-in format module."""
    return _loaded(Registry.load_commands)


def reset_registry() -> None:
    """Forget the loaded registry (tests change MCONV_LOAD_PLUGINS / sys.path between cases)."""
    global _REGISTRY
    with _LOCK:
        _REGISTRY = None
