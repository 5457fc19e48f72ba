"""Name -> function tables for the algorithm pieces. Config checks list the valid names from
here, so a new entry needs no second list anywhere."""

from __future__ import annotations

from typing import Any, Callable

from rlhf.core.errors import ConfigError


class Registry:
    def __init__(self, field: str):
        self.field = field  # the config field that names an entry, for error messages
        self._entries: dict[str, tuple[Callable, dict[str, Any]]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable], Callable]:
        """Decorator: `@REGISTRY.register("name", key=value)` stores the function with its info."""
        def add(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.field}: {name!r} is registered twice")
            self._entries[name] = (fn, info)
            return fn
        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def problem(self, name: str) -> str | None:
        """The config error for an unknown name, or None."""
        if name in self._entries:
            return None
        return f"{self.field}={name!r}: choose one of {', '.join(self.names())}"

    def __getitem__(self, name: str) -> Callable:
        return self._entry(name)[0]

    def info(self, name: str) -> dict[str, Any]:
        return self._entry(name)[1]

    def _entry(self, name: str):
        if name not in self._entries:
            raise ConfigError(self.problem(name))
        return self._entries[name]
