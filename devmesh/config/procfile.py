"""`Procfile`, read the way honcho reads it (`.env` is `devmesh.config.dotenv`).

A Procfile line `web: command` becomes a service named `web` that restarts on failure and gets
`$PORT` 5000, 5100, 5200... in file order (the base is `PORT` from `.env` when set, as honcho
does). `.env` is read in both modes and given to every service.
"""

from __future__ import annotations

import re
from pathlib import Path

from devmesh.config.dotenv import DotEnv
from devmesh.config.model import RestartPolicy, ServiceConfig
from devmesh.config.report import Report
from devmesh.config.services import check_name
from devmesh.config.values import show

# honcho's own pattern: anything else that is not blank or a comment is a mistake.
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
BASE_PORT = 5000
PORT_STEP = 100


def base_port(env: DotEnv, report: Report) -> int:
    """honcho's first `$PORT`: `PORT` from `.env` if it is a port, else 5000."""
    text = env.values.get("PORT")
    if text is None:
        return BASE_PORT
    if text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    report.add(
        ("PORT",),
        f"{show(text)} is not a port (1-65535)",
        "set PORT to a port number, the first one given to the Procfile's processes",
        line=env.lines.get("PORT"),
    )
    return BASE_PORT


def read_procfile(
    text: str, report: Report, root: Path, first_port: int
) -> dict[str, ServiceConfig]:
    """Each `name: command` line as a service with a fixed port, in file order."""
    services: dict[str, ServiceConfig] = {}
    lower: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = PROCFILE_LINE.match(line)
        if not m:
            _bad_procfile_line(report, lineno, line)
            continue
        name, command = m[1], m[2].strip()
        bad_name = check_name(name)
        if bad_name:
            report.add((name,), *bad_name, line=lineno)
            continue
        if name.lower() in lower:
            first = services[lower[name.lower()]]
            report.add(
                (name,),
                f"process {show(name)} is already defined on line {first.line}"
                if name in services
                else f"same host name as {show(first.name)} on line {first.line} (case is ignored)",
                "give each process its own name",
                line=lineno,
            )
            continue
        port = first_port + PORT_STEP * len(services)
        if port > 65535:
            report.add(
                (name,),
                f"its $PORT would be {port}, above 65535",
                "lower PORT in .env or use fewer processes",
                line=lineno,
            )
            continue
        lower[name.lower()] = name
        services[name] = ServiceConfig(
            name=name,
            command=command,
            port=port,
            cwd=root,
            restart=RestartPolicy.ON_FAILURE,
            line=lineno,
        )
    if not services and not report.issues:
        report.add((), "no processes defined", "add a line like `web: python app.py`")
    return services


def _bad_procfile_line(report: Report, lineno: int, line: str) -> None:
    name = line.split(":", 1)[0].strip()
    if ":" in line and PROCFILE_LINE.match(name + ": x") and not line.split(":", 1)[1].strip():
        report.add((name,), "has no command", f"write `{name}: COMMAND`", line=lineno)
    else:
        report.add(
            (),
            f"expected `name: command`, got {show(line)}",
            "write `name: command` (name: letters, digits, - and _), or start with # for a comment",
            line=lineno,
        )
