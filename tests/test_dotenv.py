"""`.env` is read as honcho reads it: a table of lines with the value devmesh reads, checked
against fixed expectations and, when honcho is installed (the `bench` extra), against honcho's
own parser; the lines where devmesh differs on purpose are listed with honcho's reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from devmesh.config import load
from devmesh.config.dotenv import parse_dotenv
from devmesh.config.report import Report

SKIP = None  # the line is skipped, with a warning naming it
ERROR = "<error>"  # a ConfigError naming the line (honcho stops with a traceback)

# (line of .env, what devmesh reads): honcho reads the same.
SAME: list[tuple[str, str | None]] = [
    ("FOO=bar", "bar"),
    ("FOO = bar", "bar"),
    ("  FOO=x", "x"),
    ('FOO="bar baz"', "bar baz"),
    ("FOO='bar baz'", "bar baz"),
    ('FOO=""', ""),
    ("FOO=''", ""),
    # Escapes inside double quotes: \n \t \" \\; any other backslash stays.
    (r'FOO="a\nb"', "a\nb"),
    (r'FOO="a\tb"', "a\tb"),
    (r'FOO="a\"b"', 'a"b'),
    (r'FOO="a\\b"', "a\\b"),
    (r'FOO="a\$b"', r"a\$b"),
    (r'FOO="a\rb"', r"a\rb"),
    # Single quotes: literal, except \n and \t, which honcho unescapes everywhere.
    (r"FOO='a\nb'", "a\nb"),
    (r"FOO='a\tb'", "a\tb"),
    (r"FOO='a\'", "a\\"),
    ("FOO='a\"b'", 'a"b'),
    ('FOO="a\'b"', "a'b"),
    ("FOO='it''s'", "its"),
    # Outside quotes a backslash escapes the next character, \" included.
    (r"FOO=a\"b", 'a"b'),
    (r"FOO=a\nb", "anb"),
    (r"FOO=a\ b", "a b"),
    (r"FOO=a\#b", "a#b"),
    (r"FOO=\\", "\\"),
    ('FOO=a"b c"d', "ab cd"),
    # Comments start at a word.
    ("FOO=a #b", "a"),
    ("FOO=x # c # d", "x"),
    ('FOO="a#b"', "a#b"),
    ('FOO="a" # c', "a"),
    ("FOO=a=b", "a=b"),
    ("FOO==b", "=b"),
    ("FOO=https://x.test/?a=1&b=2", "https://x.test/?a=1&b=2"),
    ("FOO=${BAR}", "${BAR}"),
    ("FOO=a;b", "a;b"),
    ("FOO=é", "é"),
    ("_F1=1", "1"),
    # Lines honcho skips.
    ("FOO=", SKIP),
    ("FOO=#x", SKIP),
    ("1FOO=x", SKIP),
    ("FOO-BAR=x", SKIP),
    ("FOO.BAR=x", SKIP),
    ("FOO", SKIP),
    ("just some words", SKIP),
    ("=x", SKIP),
]

# (line, what devmesh reads, what honcho reads): on purpose, as the README says.
DIFFERENT: list[tuple[str, str | None, str | None]] = [
    ("export FOO=bar", "bar", SKIP),
    ("FOO=bar baz", "bar baz", "barbaz"),
    ('FOO="a" b', "a b", "ab"),
    ("FOO=a#b", "a#b", "a"),
    (r'FOO="a\\nb"', r"a\nb", "a\nb"),  # honcho unescapes twice
    ("FÖO=x", SKIP, "x"),
    ("FOO=a\\", ERROR, ERROR),
    ('FOO="unclosed', ERROR, ERROR),
]


def devmesh_reads(line: str) -> str | None:
    """The value of FOO (or FÖO) that devmesh reads from a one-line .env; SKIP or ERROR."""
    report = Report(Path(".env"))
    env = parse_dotenv(line + "\n", report)
    if report.issues:
        assert not env.values
        assert report.issues[0].line == 1
        return ERROR
    if not env.values:
        assert [w.line for w in report.warnings] == [1], report.warnings
        return SKIP
    assert not report.warnings
    [value] = env.values.values()
    return value


def honcho_reads(line: str) -> str | None:
    """What honcho 2 reads from the same line (its parser, run as the reference)."""
    environ = pytest.importorskip("honcho.environ")
    try:
        values: dict[str, str] = environ.parse(line + "\n")
    except ValueError:  # shlex: "No closing quotation", "No escaped character"
        return ERROR
    return next(iter(values.values()), SKIP)


@pytest.mark.parametrize(("line", "expected"), SAME)
def test_read_as_honcho_reads(line: str, expected: str | None) -> None:
    assert devmesh_reads(line) == expected


@pytest.mark.parametrize(("line", "expected"), SAME)
def test_honcho_reads_the_same(line: str, expected: str | None) -> None:
    assert honcho_reads(line) == expected


@pytest.mark.parametrize(("line", "ours", "theirs"), DIFFERENT)
def test_differences_from_honcho_are_the_documented_ones(
    line: str, ours: str | None, theirs: str | None
) -> None:
    assert devmesh_reads(line) == ours
    assert honcho_reads(line) == theirs


def test_a_quoted_value_may_run_over_lines(tmp_path: Path) -> None:
    report = Report(tmp_path / ".env")
    env = parse_dotenv('A="multi\nline" # comment\nB=2\n', report)
    assert env.values == {"A": "multi\nline", "B": "2"}
    assert env.lines == {"A": 1, "B": 3}
    assert not report.issues and not report.warnings


def test_skipped_lines_are_warnings_with_file_and_line_and_the_rest_loads(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("A=1\n\n# comment\n1X=2\nFOO=\nB=two words\nnot a line\n")
    (tmp_path / "devmesh.toml").write_text('[services.web]\ncommand = "x"\nport = 5000\n')
    config = load(tmp_path / "devmesh.toml")
    assert config.dotenv == {"A": "1", "B": "two words"}
    assert [str(w) for w in config.warnings] == [
        '.env:4: "1X" is not a variable name: line skipped, as honcho does; '
        "use letters, digits and _, not starting with a digit",
        '.env:5: FOO: no value: not set, as honcho does; write FOO="" for an empty value',
        '.env:7: "not a line" is not KEY=value: line skipped, as honcho does; '
        "write KEY=value, or start the line with # to make it a comment",
    ]
