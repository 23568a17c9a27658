"""The `devmesh` command: parses arguments and calls `devmesh.commands`, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from devmesh import __version__, commands, handrun
from devmesh.config import ConfigError
from devmesh.control.client import ControlError, NoMesh

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run a project's dev services, supervise them, and share them across a team.",
)

FILE_HELP = "devmesh.toml or Procfile (default: found from the cwd)"
# `devmesh -f FILE COMMAND` (as docker compose does) and `COMMAND -f FILE` both work; only
# `logs` keeps -f for --follow and takes the file as --file (or the global -f).
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help=FILE_HELP)]
LongFileOpt = Annotated[Path | None, typer.Option("--file", help=FILE_HELP)]


def _complete_services(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of service names, from the project's config when it can be read."""
    given = ctx.params.get("file") or (ctx.parent.params.get("file") if ctx.parent else None)
    return [n for n in commands.service_names(given) if n.startswith(incomplete)]


Names = Annotated[
    list[str] | None,
    typer.Argument(help="services (default: all)", autocompletion=_complete_services),
]
Service = Annotated[str, typer.Argument(help="a service", autocompletion=_complete_services)]


def _file(ctx: typer.Context, file: Path | None) -> Path | None:
    """The command's own --file, or the global one given before the command."""
    return commands.pick_file(ctx.obj, file)


def _version(value: bool) -> None:
    if value:
        print(f"devmesh {__version__}")
        raise typer.Exit()


DetachOpt = Annotated[bool, typer.Option("--detach", "-d", help="run in the background")]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", help="mesh namespace (default: [mesh] namespace)")
]
DetachedChildOpt = Annotated[bool, typer.Option("--detached-child", hidden=True)]
LogLevelOpt = Annotated[
    str | None,
    typer.Option(
        "--log-level",
        help="debug, info, warning or error: how much of its own devmesh prints "
        "(over DEVMESH_LOG and [log] level)",
    ),
]


@app.callback()
def _main(
    ctx: typer.Context,
    file: FileOpt = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="show the version")
    ] = False,
) -> None:
    """devmesh: dev services, supervised and shared."""
    ctx.obj = file


@app.command()
def up(
    ctx: typer.Context,
    services: Names = None,
    file: FileOpt = None,
    detach: DetachOpt = False,
    namespace: NamespaceOpt = None,
    log_level: LogLevelOpt = None,
    detached_child: DetachedChildOpt = False,
) -> None:
    """Start the project's services (or just SERVICES and what they depend on)."""
    raise typer.Exit(
        commands.up(
            _file(ctx, file),
            services or [],
            detach=detach,
            namespace=namespace,
            log_level=log_level,
            detached_child=detached_child,
        )
    )


@app.command()
def proxy(
    ctx: typer.Context,
    file: FileOpt = None,
    detach: DetachOpt = False,
    namespace: NamespaceOpt = None,
    log_level: LogLevelOpt = None,
    detached_child: DetachedChildOpt = False,
) -> None:
    """Run the proxy and discovery only: every name is served by a peer that runs it."""
    raise typer.Exit(
        commands.up(
            _file(ctx, file),
            [],
            detach=detach,
            namespace=namespace,
            log_level=log_level,
            detached_child=detached_child,
            proxy_only=True,
        )
    )


@app.command()
def run(
    ctx: typer.Context,
    service: Annotated[
        str,
        typer.Argument(help="the service you run by hand", autocompletion=_complete_services),
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="-- CMD ARGS: run it in the foreground with $PORT set"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="its port, for a service not declared"),
    ] = None,
    file: FileOpt = None,
) -> None:
    """Register a service you run by hand (or run `-- CMD` with $PORT set): routed to and
    announced while its port answers, until Ctrl+C or `devmesh stop SERVICE`."""
    raise typer.Exit(handrun.run(_file(ctx, file), service, port=port, argv=command or []))


@app.command()
def down(ctx: typer.Context, file: FileOpt = None) -> None:
    """Stop the project's running mesh."""
    raise typer.Exit(commands.down(_file(ctx, file)))


@app.command()
def check(ctx: typer.Context, file: FileOpt = None) -> None:
    """Validate the config and print the resolved services."""
    raise typer.Exit(commands.check(_file(ctx, file)))


@app.command()
def status(
    ctx: typer.Context,
    file: FileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    routes: Annotated[
        bool, typer.Option("--routes", help="which instance serves each name, and why")
    ] = False,
) -> None:
    """Show services, their state, pid, port and restarts."""
    raise typer.Exit(commands.status(_file(ctx, file), as_json=as_json, routes=routes))


@app.command()
def dashboard(
    ctx: typer.Context,
    file: FileOpt = None,
    no_open: Annotated[
        bool, typer.Option("--no-open", help="only print the URL, do not open a browser")
    ] = False,
) -> None:
    """Open the live dashboard of the running mesh in a browser (and print its URL)."""
    raise typer.Exit(commands.dashboard(_file(ctx, file), open_browser=not no_open))


@app.command()
def route(
    ctx: typer.Context,
    service: Annotated[
        str, typer.Argument(help="the service to route", autocompletion=_complete_services)
    ],
    peer: Annotated[
        str | None, typer.Option("--peer", help="a peer's node id (a prefix will do) or name")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the pin")] = False,
    file: FileOpt = None,
) -> None:
    """Pin a service to a peer's copy (or --clear the pin)."""
    raise typer.Exit(commands.route(_file(ctx, file), service, peer=peer, clear=clear))


@app.command()
def graph(
    ctx: typer.Context,
    file: FileOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="ascii, json or dot (Graphviz)")] = "ascii",
) -> None:
    """The mesh as this node sees it: nodes, their services, and where each name is routed."""
    raise typer.Exit(commands.graph(_file(ctx, file), fmt))


@app.command()
def peers(
    ctx: typer.Context,
    file: FileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show the devmesh nodes of this namespace found on the LAN, and their services."""
    raise typer.Exit(commands.peers(_file(ctx, file), as_json=as_json))


@app.command()
def logs(
    ctx: typer.Context,
    services: Names = None,
    file: LongFileOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    lines: Annotated[
        int | None, typer.Option("--lines", "-n", min=0, help="only the last N lines")
    ] = None,
) -> None:
    """Show service logs (all services interleaved in time order when none is named)."""
    raise typer.Exit(commands.logs(_file(ctx, file), services or [], follow=follow, lines=lines))


def _action(name: str, action: str, file: Path | None) -> None:
    raise typer.Exit(commands.service_action(file, name, action))


@app.command()
def start(ctx: typer.Context, service: Service, file: FileOpt = None) -> None:
    """Start a stopped, exited or failed service."""
    _action(service, "start", _file(ctx, file))


@app.command()
def stop(ctx: typer.Context, service: Service, file: FileOpt = None) -> None:
    """Stop a service; it stays stopped until started again."""
    _action(service, "stop", _file(ctx, file))


@app.command()
def restart(ctx: typer.Context, service: Service, file: FileOpt = None) -> None:
    """Stop a service and start it again."""
    _action(service, "restart", _file(ctx, file))


def main() -> None:
    """Console-script entry point: user mistakes become one line on stderr and exit code 1 or 2."""
    try:
        # One name, however it was started: `python -m devmesh` completes and helps as `devmesh`.
        app(prog_name="devmesh")
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"devmesh: {issue}", file=sys.stderr)
        sys.exit(2)
    except (commands.UserError, NoMesh, ControlError) as exc:
        for line in str(exc).splitlines():
            print(f"devmesh: {line}", file=sys.stderr)
        sys.exit(getattr(exc, "code", 1))
    except KeyboardInterrupt:
        sys.exit(130)
