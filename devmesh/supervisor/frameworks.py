"""Dev servers that ignore `$PORT`: the flags that make them listen where devmesh says.

A bare `vite`, `astro dev`, `ng serve` and a few others listen on their own default port
(5173, 4321, 4200...) whatever `$PORT` says, so two projects collide and the proxy routes to
nothing. As portless does, devmesh adds `--port N` (with `--strictPort` for Vite, so that it fails
instead of moving to the next port, and `--host 127.0.0.1` where the default may be `::1` only,
since the proxy connects to 127.0.0.1) to such a command, directly or through
`npx`/`pnpm exec`/`pnpm dlx`/`yarn`/`bunx`/`python -m`, or through `npm|pnpm|yarn|bun run
SCRIPT` whose script is one. Only when it is safe: a simple command (no `;`, `|`, `&&`,
redirection, `$`, comment), a server subcommand, and no port flag given by the user.

Next.js (`next dev`), Nuxt (`nuxi dev`), Create React App (`react-scripts start`), Rails
(`rails server`), gunicorn, and apps that read `process.env.PORT` or `os.environ["PORT"]` listen
on `$PORT` already and are left alone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from devmesh.config.model import ServiceConfig

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Framework:
    """How one dev server's command line reads: which words start a server, which flags take
    a value (to find the subcommand), and what to add."""

    servers: frozenset[str]  # subcommands that start a server
    bare_is_server: bool  # no subcommand at all starts one
    strict_port: bool = False  # add --strictPort (fail when the port is taken)
    host: str | None = LOOPBACK  # --host value to add; None: its default is loopback already
    not_servers: frozenset[str] = frozenset()
    positional_is_server: bool = False  # any other first word (a root dir, an app) serves
    value_flags: frozenset[str] | None = None  # None: unknown, so give up at any flag first
    port_flags: tuple[str, ...] = ("--port",)  # a user's own port choice
    host_flags: tuple[str, ...] = ("--host",)  # a user's own choice of interface


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FRAMEWORKS: dict[str, Framework] = {
    "vite": Framework(
        servers=_words("dev serve preview"),
        bare_is_server=True,
        strict_port=True,
        not_servers=_words("build optimize"),
        positional_is_server=True,  # `vite ROOT`
        # vite 6 and 7 options that consume the next word (from their CLI option tables).
        value_flags=_words(
            "--assetsDir --assetsInlineLimit --base --configLoader --host --manifest --minify "
            "--open --outDir --port --sourcemap --ssr --ssrManifest --target -c --config -d "
            "--debug -f --filter -l --logLevel -m --mode"
        ),
    ),
    "react-router": Framework(servers=_words("dev"), bare_is_server=False, strict_port=True),
    "rsbuild": Framework(
        servers=_words("dev preview"),
        bare_is_server=True,
        value_flags=_words(
            "--base --config-loader --dist-path --env-dir --env-mode --environment --host "
            "--log-level --output --port -c --config -m --mode -o --open -r --root"
        ),
    ),
    "astro": Framework(servers=_words("dev preview"), bare_is_server=False),
    "ng": Framework(servers=_words("serve s dev"), bare_is_server=False),
    "react-native": Framework(servers=_words("start"), bare_is_server=False),
    "expo": Framework(
        servers=_words("start serve"),
        bare_is_server=True,
        host="localhost",
        port_flags=("--port", "-p"),
        host_flags=("--host", "--localhost", "--lan", "--tunnel"),
    ),
    # Python servers that take --port and listen on 127.0.0.1 already.
    "uvicorn": Framework(
        servers=frozenset(),
        bare_is_server=False,
        host=None,
        positional_is_server=True,  # `uvicorn app:app`
        value_flags=_words(
            "--host --port --uds --fd --reload-dir --reload-include --reload-exclude "
            "--reload-delay --workers --loop --http --ws --ws-max-size --ws-max-queue "
            "--ws-ping-interval --ws-ping-timeout --ws-per-message-deflate --lifespan "
            "--interface --env-file --log-config --log-level --root-path --limit-concurrency "
            "--backlog --limit-max-requests --timeout-keep-alive --timeout-graceful-shutdown "
            "--ssl-keyfile --ssl-certfile --ssl-keyfile-password --ssl-version --ssl-cert-reqs "
            "--ssl-ca-certs --ssl-ciphers --header --app-dir --h11-max-incomplete-event-size "
            "--factory --forwarded-allow-ips"
        ),
    ),
    "flask": Framework(
        servers=_words("run"),
        bare_is_server=False,
        host=None,
        value_flags=_words("--app -A --env-file -e"),
        port_flags=("--port", "-p"),
    ),
}


@dataclass(frozen=True)
class _Runner:
    """A command that runs another program: the subcommands before it, flags with a value."""

    subcommands: frozenset[str] = frozenset()
    value_flags: frozenset[str] = frozenset()


RUNNERS: dict[str, _Runner] = {
    "npx": _Runner(value_flags=_words("-c --call -p --package -w --workspace")),
    "pnpx": _Runner(value_flags=_words("-p --package")),
    "bunx": _Runner(),
    "pnpm": _Runner(subcommands=_words("exec dlx")),
    "yarn": _Runner(subcommands=_words("exec dlx")),
}
SCRIPT_RUNNERS = frozenset(("npm", "pnpm", "yarn", "bun"))
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON = re.compile(r"^python[0-9.]*$")


@dataclass(frozen=True)
class PortFlags:
    """What devmesh adds to a command: for which program, the flags, and the new command."""

    program: str
    flags: tuple[str, ...]
    command: str

    @property
    def note(self) -> str:
        """The line devmesh logs (and `check` prints) about it."""
        return f"{self.program} ignores $PORT; adding {' '.join(self.flags)}"


def add_port_flags(command: str, port: str, cwd: Path) -> PortFlags | None:
    """`command` with the flags that make its dev server listen on `port`; None when it needs
    none (it reads $PORT, is no known server, or the user chose a port) or it is not safe."""
    words = _simple_words(command)
    if words is None:
        return None
    while words and (_ASSIGNMENT.match(words[0]) or words[0] == "exec"):
        words = words[1:]  # `NODE_ENV=development vite`, `exec vite`
    found = _invocation(words)
    if found is not None:
        flags = _flags(*found, port)
        return (
            PortFlags(found[0], flags, f"{command.rstrip()} {' '.join(flags)}") if flags else None
        )
    return _through_script(command, words, port, cwd)


def with_port_flags(config: ServiceConfig, port: int | None) -> tuple[str, str]:
    """The command to spawn for a service and what was added to it ('' when nothing); with no
    port yet (`devmesh check` of an automatic one) the flags say `$PORT`."""
    assert config.command is not None
    added = add_port_flags(config.command, "$PORT" if port is None else str(port), config.cwd)
    if added is None:
        return config.command, ""
    return added.command, f"{config.name}: {added.note}"


def _simple_words(command: str) -> list[str] | None:
    """The words of a simple command, or None when adding words at its end is not safe."""
    if any(c in command for c in "$`\n\\"):
        return None  # expansions and escapes: what the words are is up to the shell
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        words = list(lexer)
    except ValueError:
        return None
    for word in words:
        if word.startswith("#") or (word and all(c in "();<>|&" for c in word)):
            return None
    return words


def _invocation(words: list[str]) -> tuple[str, Framework, list[str]] | None:
    """The framework that `words` runs (directly or through a runner), with its arguments."""
    if not words:
        return None
    first = os.path.basename(words[0])
    if first in FRAMEWORKS:
        return _args(first, words[1:])
    if _PYTHON.match(first) and len(words) > 2 and words[1] == "-m" and words[2] in FRAMEWORKS:
        return _args(words[2], words[3:])
    runner = RUNNERS.get(first)
    if runner is None:
        return None
    i = _skip_options(words, 1, runner)
    if i < len(words) and words[i] in runner.subcommands:  # else `pnpm vite`: the same
        i = _skip_options(words, i + 1, runner)
    if i < len(words) and os.path.basename(words[i]) in FRAMEWORKS:
        return _args(os.path.basename(words[i]), words[i + 1 :])
    return None


def _args(name: str, args: list[str]) -> tuple[str, Framework, list[str]] | None:
    if "--" in args:
        return None  # the flags would have to go before it: not a plain append
    return name, FRAMEWORKS[name], args


def _skip_options(words: list[str], i: int, runner: _Runner) -> int:
    while i < len(words) and words[i].startswith("-"):
        option = words[i]
        i += 1
        if option == "--":
            break
        if "=" not in option and option in runner.value_flags:
            i += 1
    return i


def _flags(name: str, framework: Framework, args: list[str], port: str) -> tuple[str, ...]:
    """The flags to add, or () when it is not a server or the user chose the port."""
    if not _serves(framework, args) or any(_has(args, flag) for flag in framework.port_flags):
        return ()
    flags = ["--port", port]
    if framework.strict_port:
        flags.append("--strictPort")
    if framework.host is not None and not any(_has(args, f) for f in framework.host_flags):
        flags += ["--host", framework.host]
    return tuple(flags)


def _serves(framework: Framework, args: list[str]) -> bool:
    """Whether these arguments start the dev server (not `vite build`, `ng test`...)."""
    positionals: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            positionals.append(arg)
        elif "=" in arg:
            continue
        elif framework.value_flags is not None:
            if arg in framework.value_flags:
                i += 1
        elif not positionals:
            return False  # a flag before the subcommand, whose value we cannot tell apart
    if not positionals:
        return framework.bare_is_server
    if positionals[0] in framework.servers:
        return True
    if positionals[0] in framework.not_servers:
        return False
    return framework.positional_is_server


def _has(args: list[str], flag: str) -> bool:
    if flag.startswith("--"):
        return any(a == flag or a.startswith(flag + "=") for a in args)
    return any(a.startswith(flag) for a in args)  # -p 5000, -p5000


def _through_script(command: str, words: list[str], port: str, cwd: Path) -> PortFlags | None:
    """`npm run dev` whose package.json script `dev` is a bare dev server: the flags go after
    the script name (after `--` for npm, which would read them itself otherwise)."""
    if len(words) < 3 or os.path.basename(words[0]) not in SCRIPT_RUNNERS:
        return None
    if words[1] not in ("run", "run-script") or words[2].startswith("-"):
        return None
    try:
        scripts = json.loads((cwd / "package.json").read_text()).get("scripts") or {}
    except (OSError, ValueError, AttributeError):
        return None
    script = scripts.get(words[2]) if isinstance(scripts, dict) else None
    script_words = _simple_words(script) if isinstance(script, str) else None
    if script_words is None or "--" in script_words:
        return None
    extras = [w for w in words[3:] if w != "--"]
    found = _invocation(script_words + extras)
    if found is None:
        return None
    flags = _flags(*found, port)
    if not flags:
        return None
    separator = " --" if os.path.basename(words[0]) == "npm" and "--" not in words else ""
    return PortFlags(found[0], flags, f"{command.rstrip()}{separator} {' '.join(flags)}")
