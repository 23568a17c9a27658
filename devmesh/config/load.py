"""Finding a project's config file and loading it into a `Config`.

`load` never lets a user's mistake escape as a traceback: unreadable files, TOML syntax errors
and invalid values all become `ConfigIssue`s, collected and raised as one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from devmesh.config.dotenv import DotEnv, parse_dotenv
from devmesh.config.locate import locate
from devmesh.config.model import Config, ConfigError, ConfigIssue, ConfigSource
from devmesh.config.procfile import base_port, read_procfile
from devmesh.config.report import Report
from devmesh.config.sections import (
    SECTIONS,
    read_dashboard,
    read_discovery,
    read_log,
    read_mesh,
    read_proxy,
    read_tracing,
    where_keys_belong,
)
from devmesh.config.services import read_services

TOML_NAME = "devmesh.toml"
PROCFILE_NAME = "Procfile"
DOTENV_NAME = ".env"

# tomllib appends its position to every message; Python 3.14 also has attributes for it.
_TOML_POSITION = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)


def find_project(start: Path, file: Path | None = None) -> Path:
    """The config file to use: `file` (resolved against `start`) or the nearest one above `start`.

    A directory, given or found, yields its `devmesh.toml`, else its `Procfile`.
    """
    if file is not None:
        path = (start / file).resolve()
        if not path.exists():
            raise _error(
                path, f"no such file or directory in {path.parent}", "check the path given to -f"
            )
        return _in_directory(path) if path.is_dir() else path
    here = start.resolve()
    if here.is_file():
        here = here.parent
    for directory in (here, *here.parents):
        found = _project_file(directory)
        if found is not None:
            return found
    raise _error(
        here,
        f"no {TOML_NAME} or {PROCFILE_NAME} in {here} or any parent directory",
        "create one or pass -f",
    )


def load(path: Path) -> Config:
    """Read a `devmesh.toml`, a `Procfile`, or a directory holding one, into a `Config`."""
    path = path.resolve()
    if path.is_dir():
        path = _in_directory(path)
    text = _read(path)
    root = path.parent
    env_path = root / DOTENV_NAME
    env_report = Report(env_path)
    env = parse_dotenv(_read(env_path), env_report) if env_path.is_file() else DotEnv()
    if path.suffix == ".toml":
        report, config = _load_toml(path, text, root)
    else:
        report = Report(path)
        services = read_procfile(text, report, root, base_port(env, env_report))
        config = Config(path=path, root=root, source=ConfigSource.PROCFILE, services=services)
    # Sorted by line so that the list reads like the file; `sorted` keeps the order within a line.
    issues = _by_line(report.issues) + _by_line(env_report.issues)
    if issues:
        raise ConfigError(issues)
    return dataclasses.replace(
        config,
        env_file=env_path if env_path.is_file() else None,
        dotenv=env.values,
        warnings=(*_by_line(report.warnings), *_by_line(env_report.warnings)),
    )


def _load_toml(path: Path, text: str, root: Path) -> tuple[Report, Config]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_issue(path, text, error)]) from None
    located = locate(text)
    report = Report(path, located.lines)
    report.unknown_keys(data, SECTIONS, (), where_keys_belong())
    proxy = read_proxy(report, data.get("proxy"), root)
    return report, Config(
        path=path,
        root=root,
        source=ConfigSource.TOML,
        mesh=read_mesh(report, data.get("mesh"), root),
        proxy=proxy,
        discovery=read_discovery(report, data.get("discovery")),
        log=read_log(report, data.get("log")),
        dashboard=read_dashboard(report, data.get("dashboard")),
        tracing=read_tracing(report, data.get("tracing")),
        services=read_services(report, data.get("services"), root, proxy.port),
    )


def _syntax_issue(path: Path, text: str, error: tomllib.TOMLDecodeError) -> ConfigIssue:
    """A TOML syntax error as `devmesh.toml:3: ...`, the line taken from tomllib's message."""
    m = _TOML_POSITION.match(str(error))
    message = m["msg"] if m else str(error)
    line = int(m["line"]) if m and m["line"] else None
    column = int(m["col"]) if m and m["col"] else None
    fix = "see https://toml.io for the syntax"
    if line is None:
        # "at end of document" is not much help; our scanner knows where things went wrong.
        located = locate(text)
        if located.duplicate is not None and "overwrite" in message:
            line = located.duplicate[1]
        elif located.unclosed is not None:
            line = located.unclosed
            fix = "close the string, array or table that starts on this line"
        else:
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    if "overwrite" in message or "twice" in message:
        fix = "remove or rename the repeated key"
    where = f" (column {column})" if column else ""
    return ConfigIssue(path, line, "", f"invalid TOML: {message}{where}", fix)


def _by_line(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda issue: issue.line or 0)


def _read(path: Path) -> str:
    try:
        # utf-8-sig: some editors on Windows start files with a byte order mark.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise _error(path, f"no such file in {path.parent}", "create it or pass -f") from None
    except UnicodeDecodeError as error:
        raise _error(path, f"is not UTF-8 text ({error.reason})", "save it as UTF-8") from None
    except OSError as error:
        raise _error(path, f"cannot be read: {error.strerror}", "check its permissions") from None


def _project_file(directory: Path) -> Path | None:
    for name in (TOML_NAME, PROCFILE_NAME):
        if (directory / name).is_file():
            return directory / name
    return None


def _in_directory(directory: Path) -> Path:
    found = _project_file(directory)
    if found is None:
        raise _error(
            directory,
            f"no {TOML_NAME} or {PROCFILE_NAME} in {directory}",
            "create one or pass the file itself",
        )
    return found


def _error(path: Path, message: str, fix: str) -> ConfigError:
    return ConfigError([ConfigIssue(path, None, "", message, fix)])
