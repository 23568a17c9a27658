"""Line numbers for TOML keys, which `tomllib` does not give.

`locate(text)` scans a TOML document (already known to parse, or nearly so) and maps every key
path, e.g. `("services", "api", "port")`, to the line where it is first written. Array elements
get an `int` index part so that one bad entry of a multi-line array points at its own line.
The scanner follows strings, arrays and inline tables so that their inner lines, `#` and `=`
characters never look like keys.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

Key = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# A scalar (number, bool, date) ends at the first of these; dates may contain spaces.
_SCALAR_END = re.compile(r"[,\]}#\n]")


def dotted(key: Key) -> str:
    """Spell a key path as a user writes it: `services.api.env."A.B"`, `routes[1]`."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        word = part if _BARE_KEY.fullmatch(part) else '"' + part.replace('"', '\\"') + '"'
        text = f"{text}.{word}" if text else word
    return text


@dataclass
class Located:
    """What `locate` learnt about a document."""

    lines: dict[Key, int] = field(default_factory=dict)  # key path -> first line (1-based)
    duplicate: tuple[Key, int] | None = None  # first key assigned twice, and where
    unclosed: int | None = None  # line where an unterminated string/array/table begins

    def line_of(self, key: Key) -> int | None:
        """The line of `key`, else of its nearest parent that is written in the file."""
        return find_line(self.lines, key)


def find_line(lines: Mapping[Key, int], key: Key) -> int | None:
    """The line of `key` or of its nearest located parent; None if none of them is known."""
    for end in range(len(key), 0, -1):
        line = lines.get(key[:end])
        if line is not None:
            return line
    return None


def _unescape(raw: str) -> str:
    # TOML's common escapes are JSON's; a rarer one (\e, \x..) just stays as written.
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def locate(text: str) -> Located:
    """Map each key path of a TOML document to the line where it first appears."""
    return _Scanner(text).run()


class _Scanner:
    """A forgiving single-pass TOML scanner: it never raises and always moves forward."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]
        self.found = Located()
        self.assigned: set[Key] = set()
        self.array_tables: dict[Key, int] = {}  # [[name]] -> how many seen so far

    # -- helpers -------------------------------------------------------------------------------

    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def record(self, key: Key, pos: int) -> None:
        self.found.lines.setdefault(key, self.line_at(pos))

    def record_path(self, base: Key, parts: Key, pos: int) -> Key:
        # `a.b.c = 1` also writes the tables `a` and `a.b` on this line.
        for end in range(1, len(parts) + 1):
            self.record(base + parts[:end], pos)
        return base + parts

    def unclosed(self, start: int) -> None:
        if self.found.unclosed is None:
            self.found.unclosed = self.line_at(start)

    def skip_space(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_to_eol(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def skip_blank(self) -> None:
        """Skip whitespace, newlines and comments (between array items)."""
        while self.pos < len(self.text):
            c = self.peek()
            if c in (" ", "\t", "\r", "\n"):
                self.pos += 1
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    # -- document ------------------------------------------------------------------------------

    def run(self) -> Located:
        table: Key = ()
        while self.pos < len(self.text):
            start = self.pos
            self.skip_space()
            c = self.peek()
            if c in ("\r", "\n", "#", ""):
                self.skip_to_eol()
                continue
            if c == "[":
                table = self.header()
            else:
                self.assignment(table)
            self.skip_to_eol()
            if self.pos <= start:  # cannot happen, but never loop forever on odd input
                self.pos = start + 1
        return self.found

    def header(self) -> Key:
        start = self.pos
        is_array = self.peek(2) == "[["
        self.pos += 2 if is_array else 1
        parts = self.key()
        if not is_array:
            return self.record_path((), parts, start)
        self.record_path((), parts, start)
        index = self.array_tables.get(parts, 0)
        self.array_tables[parts] = index + 1
        self.record((*parts, index), start)
        return (*parts, index)

    def assignment(self, table: Key) -> None:
        start = self.pos
        parts = self.key()
        if not parts:
            return
        self.skip_space()
        if self.peek() != "=":
            return
        self.pos += 1
        full = self.record_path(table, parts, start)
        if full in self.assigned and self.found.duplicate is None:
            self.found.duplicate = (full, self.line_at(start))
        self.assigned.add(full)
        self.value(full)

    def key(self) -> Key:
        """A possibly dotted and quoted key; stops before `=`, `]` or anything unexpected."""
        parts: list[str | int] = []
        while True:
            self.skip_space()
            c = self.peek()
            if c in ('"', "'"):
                parts.append(self.string())
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                if not m:
                    break
                parts.append(m.group())
                self.pos = m.end()
            self.skip_space()
            if self.peek() != ".":
                break
            self.pos += 1
        return tuple(parts)

    # -- values --------------------------------------------------------------------------------

    def value(self, key: Key | None) -> None:
        self.skip_space()
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.array(key)
        elif c == "{":
            self.inline_table(key)
        else:
            m = _SCALAR_END.search(self.text, self.pos)
            self.pos = len(self.text) if m is None else m.start()

    def string(self) -> str:
        """Skip a string of any of the four kinds; return its text (enough for keys)."""
        start = self.pos
        quote = self.peek()
        basic = quote == '"'
        if self.peek(3) == quote * 3:
            self.pos += 3
            end = self.find_close(quote * 3, escapes=basic)
            if end < 0:
                self.unclosed(start)
                self.pos = len(self.text)
                return ""
            # Up to two quotes right before the closing three belong to the content.
            extra = 0
            while extra < 2 and self.text.startswith(quote, end + 3):
                end += 1
                extra += 1
            raw = self.text[self.pos : end]
            self.pos = end + 3
            return raw
        self.pos += 1
        end = self.find_close(quote, escapes=basic, stop_at_newline=True)
        if end < 0 or self.text[end] != quote:
            self.unclosed(start)
            self.pos = len(self.text) if end < 0 else end
            return ""
        raw = self.text[self.pos : end]
        self.pos = end + 1
        return _unescape(raw) if basic else raw

    def find_close(self, closing: str, *, escapes: bool, stop_at_newline: bool = False) -> int:
        i = self.pos
        while i < len(self.text):
            c = self.text[i]
            if escapes and c == "\\":
                i += 2
                continue
            if stop_at_newline and c == "\n":
                return i
            if self.text.startswith(closing, i):
                return i
            i += 1
        return -1

    def array(self, key: Key | None) -> None:
        start = self.pos
        self.pos += 1
        index = 0
        while True:
            self.skip_blank()
            c = self.peek()
            if c == "":
                self.unclosed(start)
                return
            if c == "]":
                self.pos += 1
                return
            if c == ",":  # a stray comma: tomllib rejects it, so just move on
                self.pos += 1
                continue
            item = None if key is None else (*key, index)
            if item is not None:
                self.record(item, self.pos)
            before = self.pos
            self.value(item)
            index += 1
            self.skip_blank()
            # Step over the comma, or over one odd character so that the loop always advances.
            if self.peek() == "," or self.pos == before:
                self.pos += 1

    def inline_table(self, key: Key | None) -> None:
        start = self.pos
        self.pos += 1
        while True:
            self.skip_blank()
            c = self.peek()
            if c == "":
                self.unclosed(start)
                return
            if c == "}":
                self.pos += 1
                return
            before = self.pos
            parts = self.key()
            self.skip_space()
            if parts and self.peek() == "=":
                self.pos += 1
                full = None if key is None else self.record_path(key, parts, before)
                self.value(full)
            self.skip_blank()
            # Step over the comma, or over one odd character so that the loop always advances.
            if self.peek() == "," or self.pos == before:
                self.pos += 1
