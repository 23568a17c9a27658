"""`.env`, read the way honcho reads it, because devmesh replaces honcho.

Each line is `KEY=value`, split into shell-like words: `\\x` outside quotes is `x`; inside double
quotes `\\"`, `\\\\`, `\\n` and `\\t` are escapes and any other backslash stays; inside single
quotes everything is literal except `\\n` and `\\t` (honcho turns those into a newline and a tab
wherever they are). A `#` at the start of a word starts a comment. A line honcho skips (no `=`,
an invalid name, no value) is skipped here too, with a warning that names the line.

Where devmesh differs from honcho (README, "Procfile + .env"), it is on purpose: `export KEY=`
lines are read, the spaces between unquoted words are kept (honcho drops them), a `#` inside a
word is kept, and a quoted value may run over several lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from devmesh.config.report import Report
from devmesh.config.values import show

_ASSIGN = re.compile(r"^(?:export\s+)?([^\s=]+)\s*=(.*)$", re.DOTALL)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# honcho unescapes these after splitting, in every kind of quote.
_HONCHO_ESCAPES = {"n": "\n", "t": "\t"}
_DOUBLE_ESCAPES = {**_HONCHO_ESCAPES, '"': '"', "\\": "\\"}
_BLANK = " \t"


@dataclass(frozen=True)
class DotEnv:
    """The variables of a `.env` file and the line each was (last) set on."""

    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


class _OpenQuote(Exception):
    """The value's quote is not closed on this line: the next one continues it."""

    def __init__(self, quote: str) -> None:
        super().__init__(quote)
        self.quote = quote


class _Bad(Exception):
    """A value that cannot be read (honcho stops with a traceback on these)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def parse_dotenv(text: str, report: Report) -> DotEnv:
    """Parse `.env` text; skipped lines become warnings and unreadable values issues."""
    env = DotEnv()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        stripped = lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        m = _ASSIGN.match(stripped)
        if not m:
            report.warn(
                (),
                f"{show(stripped)} is not KEY=value: line skipped, as honcho does",
                "write KEY=value, or start the line with # to make it a comment",
                line=lineno,
            )
            continue
        name, rest = m[1], m[2]
        if not _NAME.fullmatch(name):
            report.warn(
                (),
                f"{show(name)} is not a variable name: line skipped, as honcho does",
                "use letters, digits and _, not starting with a digit",
                line=lineno,
            )
            continue
        while True:
            try:
                value = _value(rest)
                break
            except _OpenQuote as open_quote:
                if i == len(lines):  # a value runs on over lines, like in a shell, up to its end
                    report.add(
                        (name,),
                        f"the {open_quote.quote} quote is never closed",
                        f"end the value with {open_quote.quote}",
                        line=lineno,
                    )
                    return env
                rest += "\n" + lines[i]
                i += 1
            except _Bad as bad:
                report.add((name,), bad.message, bad.fix, line=lineno)
                value = None
                break
        if value is None:
            continue
        if value == "" and not _quoted(rest):
            report.warn(
                (name,),
                "no value: not set, as honcho does",
                f'write {name}="" for an empty value',
                line=lineno,
            )
            continue
        env.values[name] = value
        env.lines[name] = lineno
    return env


def _value(rest: str) -> str:
    """The words of `rest` joined as written, quotes and escapes resolved, comment cut off."""
    out: list[str] = []
    pos = 0
    rest = rest.lstrip(_BLANK)
    word_start = True
    while pos < len(rest):
        c = rest[pos]
        if c in _BLANK:
            end = pos
            while end < len(rest) and rest[end] in _BLANK:
                end += 1
            if end == len(rest) or rest[end] == "#":
                break  # trailing blanks, or a comment after them
            out.append(rest[pos:end])
            pos, word_start = end, True
            continue
        if c == "#" and word_start:
            break
        word_start = False
        if c == "\\":
            if pos + 1 == len(rest):
                raise _Bad("ends with a lone \\", "write \\\\ for a backslash, or quote the value")
            out.append(rest[pos + 1])
            pos += 2
        elif c in "\"'":
            pos = _quoted_part(rest, pos, out)
        else:
            out.append(c)
            pos += 1
    return "".join(out)


def _quoted_part(rest: str, pos: int, out: list[str]) -> int:
    """Append the part quoted from `rest[pos]` to `out`; the position after its closing quote."""
    quote = rest[pos]
    escapes = _DOUBLE_ESCAPES if quote == '"' else _HONCHO_ESCAPES
    pos += 1
    while pos < len(rest):
        c = rest[pos]
        if c == quote:
            return pos + 1
        if c == "\\" and pos + 1 < len(rest) and rest[pos + 1] in escapes:
            out.append(escapes[rest[pos + 1]])
            pos += 2
            continue
        out.append(c)
        pos += 1
    raise _OpenQuote(quote)


def _quoted(rest: str) -> bool:
    """Whether an empty value was written as quotes (`KEY=""`), which honcho does set."""
    head = rest.lstrip(_BLANK)
    return head[:1] in ("'", '"')
