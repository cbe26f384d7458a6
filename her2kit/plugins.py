"""Plugin manager: built-ins and third-party plugins through the same hooks.

Third-party plugins are modules named by entry points in the group
``her2kit``. They are loaded lazily, on the first lookup. A plugin that fails
to import is a warning naming it; two plugins claiming one name is a
:class:`PluginError` naming both. Set ``HER2KIT_DISABLE_PLUGINS=1`` to load
built-ins only.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from her2kit import hookspecs
from her2kit.errors import PluginError

ENTRY_POINT_GROUP = "her2kit"
DISABLE_ENV = "HER2KIT_DISABLE_PLUGINS"
# set for a run's local worker processes: the main process has already said
# which plugins failed, so the workers keep quiet (QA: each repeated it, raw)
SHOWN_ENV = "HER2KIT_PLUGIN_WARNINGS_SHOWN"
BUILTIN = "builtin"


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded."""


@dataclass(frozen=True)
class Registered:
    """A record with the kind it belongs to and the plugin that gave it."""

    kind: str
    record: Any
    origin: str  # "builtin" or the distribution's name
    plugin: str  # the plugin's registration name

    @property
    def name(self) -> str:
        return self.record.name


class Registry:
    """All records of all plugins, indexed by kind and name."""

    def __init__(self, load_entry_points: bool | None = None):
        self.pm = pluggy.PluginManager("her2kit")
        self.pm.add_hookspecs(hookspecs)
        self._origins: dict[str, str] = {}
        self._records: dict[str, dict[str, Registered]] | None = None
        self.failed: list[tuple[str, str]] = []
        self.conflicts: list[str] = []  # "KIND 'NAME' is claimed by two plugins: ..."
        self._shadowed: list[Registered] = []  # the second claimants, for `her2kit plugins`
        if load_entry_points is None:
            load_entry_points = os.environ.get(DISABLE_ENV, "").strip().lower() in ("", "0", "false", "no", "off")
        self._load_entry_points = load_entry_points
        self._discovered = False
        # a dask worker's threads may open slides at once: one of them loads
        # the plugins while the others wait (they saw no readers before)
        self._lock = threading.RLock()

    def register(self, plugin: object, name: str, origin: str) -> None:
        """Register a plugin module or object under ``name``."""
        with self._lock:
            self.pm.register(plugin, name=name)
            self._origins[name] = origin
            self._records = None

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        from her2kit import builtins

        for module in builtins.MODULES:
            self.register(module, name=f"builtin:{module.__name__}", origin=BUILTIN)
        if not self._load_entry_points:
            return
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.value
            try:
                plugin = ep.load()
                if self.pm.is_registered(plugin):  # pluggy's own error prints all plugins
                    _warn(f"her2kit plugin {ep.name!r} from {dist}: {ep.value} is already registered "
                          "under another entry point; skipped")
                    continue
                self.register(plugin, name=f"{dist}:{ep.name}", origin=dist)
            except (Exception, SystemExit) as exc:  # a broken plugin must not break the rest
                self.failed.append((dist, f"{type(exc).__name__}: {exc}"))
                _warn(f"her2kit plugin {ep.name!r} from {dist} failed to load: {type(exc).__name__}: {exc}")
        try:  # a hook with a misspelled name would otherwise be ignored without a word
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = getattr(exc.plugin, "__name__", type(exc.plugin).__name__)
            self.failed.append((name, str(exc)))
            _warn(f"her2kit plugin {name}: {' '.join(str(exc).split())}")

    def _collect(self) -> dict[str, dict[str, Registered]]:
        with self._lock:
            records = self._collect_locked()
        if self.conflicts:
            raise PluginError(self.conflicts[0])
        return records

    def _collect_locked(self) -> dict[str, dict[str, Registered]]:
        self._discover()
        if self._records is not None:
            return self._records
        records: dict[str, dict[str, Registered]] = {kind: {} for kind in hookspecs.KINDS}
        self.conflicts, self._shadowed = [], []
        for kind, hook_name in hookspecs.HOOK_OF_KIND.items():
            hook = getattr(self.pm.hook, hook_name)
            # pluggy calls the newest registration first; reverse for stable order
            for impl in reversed(hook.get_hookimpls()):
                origin = self._origins.get(impl.plugin_name, impl.plugin_name)
                try:
                    returned = impl.function() or []
                except Exception as exc:
                    self.failed.append((origin, f"{type(exc).__name__}: {exc}"))
                    _warn(f"her2kit plugin {impl.plugin_name} failed in {hook_name}: {type(exc).__name__}: {exc}")
                    continue
                expected = hookspecs.KINDS[kind]
                if isinstance(returned, (str, bytes, dict, expected)) or not hasattr(returned, "__iter__"):
                    raise PluginError(f"plugin {impl.plugin_name} returned {type(returned).__name__} "
                                      f"from {hook_name}, expected a list of {expected.__name__}")
                returned = list(returned)  # a generator too
                for record in returned:
                    _check_record(record, expected, impl.plugin_name, hook_name)
                    entry = Registered(kind, record, origin, impl.plugin_name)
                    other = records[kind].get(record.name)
                    if other is not None:
                        self.conflicts.append(
                            f"{kind} {record.name!r} is claimed by two plugins: "
                            f"{other.plugin} ({other.origin}) and "
                            f"{impl.plugin_name} ({origin})"
                        )
                        self._shadowed.append(entry)
                        continue
                    records[kind][record.name] = entry
        self._records = records
        return records

    def list(self, kind: str | None = None) -> list[Registered]:
        """Every registered record, optionally of one kind."""
        records = self._collect()
        kinds = [kind] if kind else list(records)
        return [entry for k in kinds for entry in records[k].values()]

    def list_all(self) -> tuple[list[Registered], list[str]]:
        """Every record, both claimants of a conflicting name included, and the
        conflicts (for `her2kit plugins`, which must show what clashes)."""
        with self._lock:
            records = self._collect_locked()
            entries = [entry for k in records for entry in records[k].values()] + self._shadowed
            return entries, list(self.conflicts)

    def get(self, kind: str, name: str) -> Any:
        """The record of ``kind`` called ``name``; a PluginError lists the known ones."""
        records = self._collect()[kind]
        if name not in records:
            known = ", ".join(sorted(records)) or "none"
            raise PluginError(f"unknown {kind} {name!r} (known: {known})")
        return records[name].record


def _warn(message: str) -> None:
    if os.environ.get(SHOWN_ENV) != "1":
        warnings.warn(message, PluginWarning, stacklevel=3)


def _check_record(record: Any, expected: type, plugin: str, hook_name: str) -> None:
    """A record of the right type, with a name and (readers) a list of endings."""
    what = f"plugin {plugin} returned"
    if not isinstance(record, expected):
        raise PluginError(f"{what} {type(record).__name__} from {hook_name}, expected {expected.__name__}")
    if not isinstance(record.name, str) or not record.name.strip():
        raise PluginError(f"{what} a {expected.__name__} from {hook_name} whose name is {record.name!r}")
    suffixes = getattr(record, "suffixes", ())
    if isinstance(suffixes, str) or not all(isinstance(x, str) for x in suffixes):
        # a bare ".qaf" would be taken as the endings "." "q" "a" "f"
        raise PluginError(f"{what} {expected.__name__} {record.name!r} whose suffixes are {suffixes!r}; "
                          "give a list of file endings such as ['.qaf']")


_registry: Registry | None = None
_registry_lock = threading.Lock()


def registry() -> Registry:
    """The process-wide registry, created on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset() -> None:
    """Forget the process-wide registry (tests, or after installing a plugin)."""
    global _registry
    _registry = None
