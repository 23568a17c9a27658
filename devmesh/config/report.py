"""Collecting config issues with their lines, and reading typed values out of TOML tables.

A `Report` gathers every `ConfigIssue` of one file so that `devmesh check` shows all mistakes
at once; a `Table` reads one TOML table through the converters of `values.py`, turning each
`BadValue` into an issue and falling back to the default so that checking can go on.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TypeVar

from devmesh.config.locate import Key, dotted, find_line
from devmesh.config.model import ConfigIssue
from devmesh.config.values import BadValue, kind_of, show, suggest

T = TypeVar("T")


class Report:
    """The issues found in one file; each key is resolved to its line (or its parent's)."""

    def __init__(self, file: Path, lines: Mapping[Key, int] | None = None) -> None:
        self.file = file
        self.lines: Mapping[Key, int] = lines or {}
        self.issues: list[ConfigIssue] = []
        # Not mistakes that stop devmesh, but what the user must know: a key that does nothing
        # yet, a line skipped. `devmesh check` and `devmesh up` print them.
        self.warnings: list[ConfigIssue] = []

    def line(self, key: Key) -> int | None:
        """The line where `key` (or its nearest written parent) is."""
        return find_line(self.lines, key)

    def add(self, key: Key, message: str, fix: str = "", *, line: int | None = None) -> None:
        """Record one issue at `key` (an explicit `line` wins over the located one)."""
        where = line if line is not None else self.line(key)
        self.issues.append(ConfigIssue(self.file, where, dotted(key), message, fix))

    def warn(self, key: Key, message: str, fix: str = "", *, line: int | None = None) -> None:
        """Record one warning at `key` (an explicit `line` wins over the located one)."""
        where = line if line is not None else self.line(key)
        self.warnings.append(ConfigIssue(self.file, where, dotted(key), message, fix))

    def unknown_keys(
        self,
        data: Mapping[str, object],
        known: Collection[str],
        where: Key,
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        """An issue for each key of `data` not in `known`, with a did-you-mean."""
        for name in data:
            if name in known:
                continue
            close = suggest(name, known)
            if close:
                fix = f'did you mean "{close}"?'
            elif elsewhere and name in elsewhere:
                fix = f"it belongs under {elsewhere[name]}"
            else:
                fix = f"remove it; known keys here: {', '.join(known)}"
            self.add((*where, name), "unknown key", fix)


class Table:
    """Validated reads from one TOML table; a bad value is reported and the default used."""

    def __init__(
        self,
        report: Report,
        key: Key,
        data: object,
        known: Collection[str],
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        self.report = report
        self.key = key
        self.data: Mapping[str, object] = {}
        if isinstance(data, dict):
            self.data = data
            report.unknown_keys(data, known, key, elsewhere)
        elif data is not None:
            report.add(key, f"must be a table, not {kind_of(data)}", table_fix(key))

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def issue(self, name: str, message: str, fix: str = "") -> None:
        """Report an issue about key `name` of this table."""
        self.report.add((*self.key, name), message, fix)

    def warn(self, name: str, message: str, fix: str = "") -> None:
        """A warning about key `name` of this table."""
        self.report.warn((*self.key, name), message, fix)

    def get(self, name: str, convert: Callable[[object], T], default: T) -> T:
        """`convert(value)` of key `name`, or `default` if absent or invalid."""
        if name not in self.data:
            return default
        try:
            return convert(self.data[name])
        except BadValue as bad:
            self.report.add((*self.key, name, *bad.at), bad.message, bad.fix)
            return default

    def get_list(
        self, name: str, convert: Callable[[object], T], *, unique: bool = True
    ) -> tuple[T, ...]:
        """Key `name` as an array of converted elements; bad ones are reported and left out."""
        if name not in self.data:
            return ()
        value = self.data[name]
        if not isinstance(value, list):
            self.issue(name, f"must be an array, not {kind_of(value)}", 'write it like ["a", "b"]')
            return ()
        items: list[T] = []
        for index, element in enumerate(value):
            try:
                item = convert(element)
            except BadValue as bad:
                self.report.add((*self.key, name, index, *bad.at), bad.message, bad.fix)
                continue
            if unique and item in items:
                self.report.add(
                    (*self.key, name, index), f"{show(element)} is listed twice", "remove the copy"
                )
                continue
            items.append(item)
        return tuple(items)

    def get_map(self, name: str, convert: Callable[[object], T]) -> dict[str, T]:
        """Key `name` as a table of converted values; bad entries are reported and left out."""
        if name not in self.data:
            return {}
        value = self.data[name]
        if not isinstance(value, dict):
            self.issue(
                name,
                f"must be a table, not {kind_of(value)}",
                f'write {name} = {{ KEY = "value" }}',
            )
            return {}
        items: dict[str, T] = {}
        for sub, element in value.items():
            try:
                items[sub] = convert(element)
            except BadValue as bad:
                self.report.add((*self.key, name, sub, *bad.at), bad.message, bad.fix)
        return items


def table_fix(key: Key) -> str:
    """How to write a table header for `key`."""
    return f"write [{dotted(key)}] followed by key = value lines"
