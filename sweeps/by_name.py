"""A small registry of built-ins of one kind, chosen by name (``samplers.get("tpe")``, like ``keras.losses.get``).

The spec's validation, the CLI help and the README read a kind's names from its registry, so a
new built-in is one `register` call.
"""
from __future__ import annotations

from typing import Generic, TypeVar

from siamese_core.errors import ConfigError

T = TypeVar("T")


class ByName(Generic[T]):
    """Entries of one kind by name, in registration order."""

    def __init__(self, kind: str, *, field: str) -> None:
        self.kind = kind
        self.field = field  # the spec field that names an entry, for errors
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(self.field, f"{self.expected()}; received: {name!r}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def expected(self) -> str:
        """``Input should be 'a', 'b' or 'c'`` (pydantic's wording for a choice)."""
        quoted = [repr(n) for n in self._entries]
        listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        return f"Input should be {listed}"
