"""Converters for single config values: each returns the typed value or raises `BadValue`.

A converter takes the raw TOML value (`object`) and knows nothing about where it came from;
the caller adds the file, line and key. Messages show the value as the user wrote it and the
fix says what to write instead.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
import signal
from collections.abc import Callable, Collection, Iterable
from datetime import date, datetime, time
from pathlib import Path
from typing import TypeVar

from devmesh.watch.patterns import split_glob

# A service name becomes a DNS label (`api.localhost`), hence the label's shape and length.
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$")
MAX_NAME = 63

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)(B?)", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}

E = TypeVar("E", bound=enum.StrEnum)


class BadValue(ValueError):
    """A value that cannot be used: what is wrong, what to do, and which element (if any)."""

    def __init__(self, message: str, fix: str = "", at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.at = at  # extra key parts below the key being read, e.g. an array index


def show(value: object) -> str:
    """A value as it would be written in TOML (strings quoted, `true`, arrays summarised)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def kind_of(value: object) -> str:
    """The TOML type of a value, with its article: "a string", "an integer"..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, date | datetime | time):
        return "a date/time"
    return type(value).__name__


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `word` (ignoring case), or None when nothing is close."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def one_of(choices: Collection[str]) -> str:
    """`"a", "b" or "c"` for messages."""
    quoted = [f'"{c}"' for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def did_you_mean(word: str, choices: Collection[str], otherwise: str) -> str:
    """A fix: `did you mean "x"?` when a choice is close, else `otherwise`."""
    close = suggest(word, choices)
    return f'did you mean "{close}"?' if close else otherwise


# -- plain types -------------------------------------------------------------------------------


def as_str(value: object) -> str:
    """A TOML string, as is."""
    if not isinstance(value, str):
        raise BadValue(
            f"expected a string, got {kind_of(value)} ({show(value)})", "put it in quotes"
        )
    return value


def as_text(value: object) -> str:
    """A non-empty string, stripped."""
    text = as_str(value).strip()
    if not text:
        raise BadValue("must not be empty", "give a value or remove the key")
    return text


def as_bool(value: object) -> bool:
    """A TOML boolean (`true`/`false`, not a string)."""
    if not isinstance(value, bool):
        raise BadValue(
            f"expected true or false, got {show(value)}", "write true or false, no quotes"
        )
    return value


def int_at_least(low: int) -> Callable[[object], int]:
    """A converter for integers >= `low`."""

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(
                f"expected an integer, got {show(value)}", f"write a whole number >= {low}"
            )
        if value < low:
            raise BadValue(f"{value} is too small (minimum {low})", f"use a number >= {low}")
        return value

    return convert


def as_port(value: object) -> int:
    """A TCP/UDP port number, 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadValue(
            f"{show(value)} is not a port number", "write a port between 1 and 65535, no quotes"
        )
    if not 1 <= value <= 65535:
        raise BadValue(f"{value} is not a port (1-65535)", "use a port between 1 and 65535")
    return value


def choice(kind: type[E], what: str) -> Callable[[object], E]:
    """A converter for one of an enum's values (case-insensitive, `_` read as `-`)."""
    values = [e.value for e in kind]

    def convert(value: object) -> E:
        if isinstance(value, str):
            wanted = value.strip().lower().replace("_", "-")
            for member in kind:
                if member.value == wanted:
                    return member
        word = value if isinstance(value, str) else show(value)
        fix = did_you_mean(word, values, f"use {one_of(values)}")
        raise BadValue(f"{show(value)} is not {what}", fix)

    return convert


def word_in(choices: Collection[str], what: str) -> Callable[[object], str]:
    """A converter for one of a few lower-case words."""

    def convert(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        word = value if isinstance(value, str) else show(value)
        raise BadValue(
            f"{show(value)} is not {what}", did_you_mean(word, choices, f"use {one_of(choices)}")
        )

    return convert


# -- units -------------------------------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Seconds from `"5s"`, `"250ms"`, `"1m30s"`, `"2h"`, or a bare number of seconds."""
    fix = 'write a number of seconds or a string like "5s", "250ms", "1m", "1.5s" or "2h"'
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadValue(f"{show(value)} is not a duration", fix)
    if isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            parts = list(_DURATION_PART.finditer(text))
            joined = "".join(p.group() for p in parts)
            if not parts or _SPACE.sub("", joined) != _SPACE.sub("", text):
                raise BadValue(f"{show(value)} is not a duration", fix)
            seconds = sum(float(p[1]) * _DURATION_UNITS[p[2].lower()] for p in parts)
    else:
        seconds = float(value)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise BadValue(f"{show(value)} is not a duration", fix)
    return seconds


def duration_at_least(low: float, *, strict: bool = False) -> Callable[[object], float]:
    """A duration converter with a lower bound (`strict`: must be greater than `low`)."""

    def convert(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < low or (strict and seconds == low):
            bound = (
                f"more than {format_duration(low)}"
                if strict
                else f"at least {format_duration(low)}"
            )
            raise BadValue(f"{show(value)} is too short", f"use a duration of {bound}")
        return seconds

    return convert


def format_duration(seconds: float) -> str:
    """The short spelling of a duration: `250ms`, `2s`, `1.5s`, `1m`, `1m30s`."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds == int(seconds):
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    return f"{seconds:g}s"


def parse_size(value: object) -> int:
    """Bytes from `"10MB"`, `"512KB"`, `"1GiB"`, `"10M"` or an integer (KB = KiB = 1024)."""
    fix = 'write a number of bytes or a string like "512KB", "10MB" or "1GiB"'
    if isinstance(value, bool | float):
        raise BadValue(f"{show(value)} is not a size", fix)
    if isinstance(value, int):
        if value < 0:
            raise BadValue(f"{value} is not a size", fix)
        return value
    if not isinstance(value, str):
        raise BadValue(f"{show(value)} is not a size", fix)
    m = _SIZE.fullmatch(value.strip())
    # "10i" or "10iB" without a prefix is not a unit.
    if not m or (m[3] and not m[2]):
        raise BadValue(f"{show(value)} is not a size", fix)
    # Log sizes follow supervisord: MB means 1024 * 1024, as does MiB.
    return int(float(m[1]) * 1024 ** _SIZE_POWERS[m[2].upper()])


def format_size(size: int) -> str:
    """The short spelling of a byte count: `10MB`, `512KB`, `100B`."""
    for unit, power in (("GB", 3), ("MB", 2), ("KB", 1)):
        if size >= 1024**power and size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return f"{size}B"


def parse_signal(value: object) -> signal.Signals:
    """A signal from `"TERM"`, `"SIGTERM"`, `"term"` or its number."""
    fix = 'use a signal name such as "TERM", "INT", "QUIT", "HUP" or "KILL"'
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            raise BadValue(f"{value} is not a signal number", fix) from None
    if not isinstance(value, str):
        raise BadValue(f"{show(value)} is not a signal", fix)
    name = value.strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        names = [s.name.removeprefix("SIG") for s in signal.Signals]
        close = suggest(name.removeprefix("SIG"), names)
        raise BadValue(
            f"{show(value)} is not a signal", f'did you mean "{close}"?' if close else fix
        ) from None


def existing_path(root: Path, *, directory: bool) -> Callable[[object], Path]:
    """A converter for a path relative to `root` that must exist (as a directory, or a file)."""

    def convert(value: object) -> Path:
        path = (root / as_text(value)).resolve()
        if directory and not path.is_dir():
            raise BadValue(
                f"{path} is not a directory", "create it or fix the path (relative to the project)"
            )
        if not directory and not path.is_file():
            raise BadValue(
                f"{path} does not exist", "create it or fix the path (relative to the project)"
            )
        return path

    return convert


def watched_path(cwd: Path) -> Callable[[object], str]:
    """A converter for a `watch` entry: a path or glob relative to `cwd` whose directory
    before the first wildcard (or the path itself, without one) exists."""

    def convert(value: object) -> str:
        entry = as_text(value)
        base, rest = split_glob(entry)
        path = (cwd / base).resolve()
        fix = "create it, or fix the path (watch entries are relative to the service's cwd)"
        if rest and not path.is_dir():
            what = f"{path} is not a directory" if path.exists() else f"{path} does not exist"
            raise BadValue(f"{show(entry)}: the directory before the wildcard, {what}", fix)
        if not rest and not path.exists():
            raise BadValue(f"{show(entry)} does not exist ({path})", fix)
        return entry

    return convert
