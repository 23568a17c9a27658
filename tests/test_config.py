"""Tests for devmesh.config: loading devmesh.toml / Procfile / .env, errors, locator, describe."""

from __future__ import annotations

import pickle
import random
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from devmesh.config import (
    Config,
    ConfigError,
    ConfigIssue,
    ConfigSource,
    DependCondition,
    DiscoveryConfig,
    HealthCheck,
    LanAccess,
    LogConfig,
    MeshConfig,
    ProxyConfig,
    RestartPolicy,
    ServiceConfig,
    describe,
    find_project,
    load,
)
from devmesh.config.describe import runtime_warnings
from devmesh.config.locate import dotted, locate
from devmesh.config.network import parse_health
from devmesh.config.values import (
    BadValue,
    format_duration,
    parse_duration,
    parse_signal,
    parse_size,
)

# -- helpers -----------------------------------------------------------------------------------


def write(directory: Path, text: str, name: str = "devmesh.toml") -> Path:
    """Write a dedented file and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    """The issues `load` raises for `path` (fails the test when it loads fine)."""
    with pytest.raises(ConfigError) as caught:
        load(path)
    return caught.value.issues


def only_issue(path: Path) -> ConfigIssue:
    """The single issue `load` raises for `path`."""
    issues = issues_of(path)
    assert len(issues) == 1, [str(i) for i in issues]
    return issues[0]


def toml_issue(tmp_path: Path, text: str) -> ConfigIssue:
    """The single issue of a devmesh.toml with `text`."""
    return only_issue(write(tmp_path, text))


MINIMAL = """
[services.web]
command = "python -m http.server"
"""


# -- a complete, valid file --------------------------------------------------------------------


FULL = """
[mesh]
namespace = "feature-x"
secret_file = "secret.txt"

[proxy]
port = 9090
workers = 3
lan_access = "any"
retries = 4
tls = true
cert = "certs/node.pem"
key = "certs/node.key"
ca = "certs/ca.pem"
version_strict = true

[discovery]
port = 36000
broadcast_addr = "10.0.0.255"
interval = "500ms"
ipv6 = false
peers = ["10.8.0.2:36000", "[fd00::2]:36000"]
enabled = true

[log]
level = "DEBUG"
format = "json"
requests = "stdout"
max_size = "512KB"
backups = 7

[services.db]
command = "postgres -D data"
port = 5432
health = "tcp://localhost:5432"
restart = "always"
stop_signal = "INT"

[services.migrate]
run = "alembic upgrade head"
restart = "no"
depends_on = ["db"]

[services.mono]
port = 3000
version = "1.0.0"
command = "pnpm dev"
cwd = "apps/mono"
env = { NODE_ENV = "development", WORKERS = 4, DEBUG = true, RATIO = 0.5 }
restart = "on-failure"
depends_on = { db = "healthy", migrate = "completed" }
health = "http://localhost:3000/health"
health_interval = "5s"
health_timeout = "1.5s"
healthy_threshold = 2
unhealthy_threshold = 4
start_period = "1m"
restart_on_unhealthy = true
routes = ["/api/*", "/ws"]
aliases = ["mono.test", "app"]
host_header = "keep"
watch = ["src/**"]
watch_ignore = ["*.log"]
watch_restart_dependents = true
stop_signal = "SIGQUIT"
stop_timeout = "10s"
start_secs = 2
max_restarts = 9
backoff = "250ms"
"""


@pytest.fixture
def full(tmp_path: Path) -> Config:
    """A project using every key, loaded."""
    write(tmp_path, "s3cret\n", "secret.txt")
    for name in ("certs/node.pem", "certs/node.key", "certs/ca.pem"):
        write(tmp_path, "x\n", name)
    (tmp_path / "apps" / "mono" / "src").mkdir(parents=True)
    return load(write(tmp_path, FULL))


def test_full_file_node_sections(full: Config, tmp_path: Path) -> None:
    root = tmp_path.resolve()
    assert full.root == root
    assert full.path == root / "devmesh.toml"
    assert full.source is ConfigSource.TOML
    assert full.mesh == MeshConfig(
        namespace="feature-x", secret="", secret_file=root / "secret.txt"
    )
    assert full.proxy == ProxyConfig(
        port=9090,
        workers=3,
        lan_access=LanAccess.ANY,
        retries=4,
        tls=True,
        cert=root / "certs/node.pem",
        key=root / "certs/node.key",
        ca=root / "certs/ca.pem",
        version_strict=True,
    )
    assert full.discovery == DiscoveryConfig(
        port=36000,
        broadcast_addr="10.0.0.255",
        interval=0.5,
        ipv6=False,
        peers=("10.8.0.2:36000", "[fd00::2]:36000"),
        enabled=True,
    )
    assert full.log == LogConfig(
        level="debug", format="json", requests="stdout", max_size=512 * 1024, backups=7
    )


def test_full_file_services(full: Config, tmp_path: Path) -> None:
    root = tmp_path.resolve()
    assert list(full.services) == ["db", "migrate", "mono"]
    db, migrate, mono = full.services.values()
    assert db.health == HealthCheck("tcp", "localhost:5432")
    assert db.restart is RestartPolicy.ALWAYS
    assert db.stop_signal is signal.SIGINT
    assert db.line == 31
    assert migrate.command == "alembic upgrade head"
    assert migrate.depends_on == {"db": DependCondition.STARTED}
    assert migrate.port is None
    assert mono == ServiceConfig(
        name="mono",
        command="pnpm dev",
        port=3000,
        version="1.0.0",
        cwd=root / "apps/mono",
        env={"NODE_ENV": "development", "WORKERS": "4", "DEBUG": "true", "RATIO": "0.5"},
        restart=RestartPolicy.ON_FAILURE,
        depends_on={"db": DependCondition.HEALTHY, "migrate": DependCondition.COMPLETED},
        health=HealthCheck("http", "http://localhost:3000/health"),
        health_interval=5.0,
        health_timeout=1.5,
        healthy_threshold=2,
        unhealthy_threshold=4,
        start_period=60.0,
        restart_on_unhealthy=True,
        routes=("/api/*", "/ws"),
        aliases=("mono.test", "app"),
        host_header="keep",
        watch=("src/**",),
        watch_ignore=("*.log",),
        watch_restart_dependents=True,
        stop_signal=signal.SIGQUIT,
        stop_timeout=10.0,
        start_secs=2.0,
        max_restarts=9,
        backoff=0.25,
        line=43,
    )


def test_minimal_file_uses_model_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL))
    assert config.mesh == MeshConfig()
    assert config.proxy == ProxyConfig()
    assert config.discovery == DiscoveryConfig()
    assert config.log == LogConfig()
    root = tmp_path.resolve()
    assert config.services["web"] == ServiceConfig(
        name="web", command="python -m http.server", cwd=root, line=1
    )
    assert config.env_file is None
    assert config.dotenv == {}


def test_config_survives_pickling(full: Config) -> None:
    # Configs travel to spawned workers through pipes.
    assert pickle.loads(pickle.dumps(full)) == full


def test_devmesh_01x_file_is_accepted(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            """
            [proxy]
            port = 8081
            version_strict = true

            [discovery]
            port = 35556
            broadcast_addr = "192.168.1.255"

            [services.mono]
            port = 3000
            version = "1.2.0"

            [services.auth]
            port = 3001
            version = "0.9.1"
            """,
        )
    )
    assert config.proxy.port == 8081 and config.proxy.version_strict
    assert config.discovery.broadcast_addr == "192.168.1.255"
    assert config.services["mono"].command is None  # external
    assert config.services["auth"].version == "0.9.1"


def test_run_is_a_synonym_of_command(tmp_path: Path) -> None:
    config = load(write(tmp_path, '[services.a]\nrun = "node server.js"\n'))
    assert config.services["a"].command == "node server.js"


def test_command_and_run_together_is_an_error(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services.a]\ncommand = "x"\nrun = "y"\n')
    assert (issue.line, issue.key) == (3, "services.a.run")
    assert "both command and run" in issue.message


def test_load_accepts_a_directory_and_prefers_toml(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL)
    write(tmp_path, "other: sleep 1\n", "Procfile")
    config = load(tmp_path)
    assert config.source is ConfigSource.TOML
    assert list(config.services) == ["web"]
    # Naming the Procfile explicitly reads it even next to a devmesh.toml.
    assert load(tmp_path / "Procfile").source is ConfigSource.PROCFILE


# -- error format and collection ---------------------------------------------------------------


def test_issue_text_names_file_line_key_and_fix(tmp_path: Path) -> None:
    text = "\n" * 11 + "[services.api]\nport = 70000\n"
    path = write(tmp_path, "# header\n" + text)
    issue = only_issue(path)
    assert str(issue) == (
        "devmesh.toml:14: services.api.port: 70000 is not a port (1-65535); "
        "use a port between 1 and 65535"
    )
    assert issue.file == path.resolve()


def test_all_issues_are_collected_and_sorted_by_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [services.b]
        command = "x"
        restart = "sometimes"
        [proxy]
        workers = 0
        [services.a]
        port = 0
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load(path)
    lines = [(i.line, i.key) for i in caught.value.issues]
    assert lines == [
        (3, "services.b.restart"),
        (5, "proxy.workers"),
        (7, "services.a.port"),
    ]
    assert str(caught.value).splitlines()[1].startswith("devmesh.toml:5: proxy.workers: ")


def test_no_services_section(tmp_path: Path) -> None:
    """A file without services loads (`devmesh proxy` serves only teammates' services)."""
    for text in ("[proxy]\nport = 8080\n", "[proxy]\nport = 8080\n\n[services]\n"):
        path = tmp_path / "devmesh.toml"
        path.write_text(text)
        assert load(path).services == {}


def test_service_must_be_a_table(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services]\napi = "npm start"\n')
    assert (issue.line, issue.key) == (2, "services.api")
    assert "must be a table" in issue.message


def test_section_must_be_a_table(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, "proxy = 8080\n" + MINIMAL)
    assert (issue.line, issue.key) == (1, "proxy")
    assert issue.fix.startswith("write [proxy]")


# -- unknown keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "fix"),
    [
        ('[service.web]\ncommand = "x"\n' + MINIMAL, 1, "service", 'did you mean "services"?'),
        ("[proxy]\nprot = 1\n" + MINIMAL, 2, "proxy.prot", 'did you mean "port"?'),
        ("[discovery]\nbroadcast = 1\n" + MINIMAL, 2, "discovery.broadcast", "did you mean"),
        ("[log]\nlevl = 1\n" + MINIMAL, 2, "log.levl", 'did you mean "level"?'),
        ("[mesh]\nsecrets = 1\n" + MINIMAL, 2, "mesh.secrets", 'did you mean "secret"?'),
        (MINIMAL + "comand = 1\n", 3, "services.web.comand", 'did you mean "command"?'),
        (MINIMAL + "depends = []\n", 3, "services.web.depends", 'did you mean "depends_on"?'),
        (MINIMAL + "HEALTH = 1\n", 3, "services.web.HEALTH", 'did you mean "health"?'),
        ("workers = 2\n" + MINIMAL, 1, "workers", "it belongs under [proxy]"),
        (MINIMAL + "zzz = 1\n", 3, "services.web.zzz", "remove it; known keys here: command, run"),
    ],
)
def test_unknown_keys_suggest_a_fix(
    tmp_path: Path, text: str, line: int, key: str, fix: str
) -> None:
    issue = toml_issue(tmp_path, text)
    assert (issue.line, issue.key, issue.message) == (line, key, "unknown key")
    assert issue.fix.startswith(fix)


def test_unknown_key_in_dotted_form(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services]\nweb.command = "x"\nweb.prot = 1\n')
    assert (issue.line, issue.key) == (3, "services.web.prot")


# -- TOML syntax errors ------------------------------------------------------------------------


def test_syntax_error_line_from_tomllib(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services.web]\ncommand = "x"\nport = \n')
    assert issue.line == 3
    assert issue.key == ""
    assert str(issue).startswith("devmesh.toml:3: invalid TOML: Invalid value (column 8)")


def test_syntax_error_has_no_chained_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, "[services\n"))
    assert caught.value.__suppress_context__
    assert caught.value.issues[0].line == 1


def test_duplicate_key_points_at_the_repeat(tmp_path: Path) -> None:
    # tomllib reports this one "at end of document"; the locator finds the line.
    issue = toml_issue(tmp_path, '[services.web]\ncommand = "x"\nport = 1\n\n\nport = 2')
    assert issue.line == 6
    assert "Cannot overwrite a value" in issue.message
    assert issue.fix == "remove or rename the repeated key"


def test_unterminated_multiline_string_points_at_its_start(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services.web]\ncommand = """\nnpm\nstart\n')
    assert issue.line == 2
    assert "Unterminated string" in issue.message


def test_table_declared_twice(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + "[services.web]\nport = 1\n")
    assert issue.line == 3
    assert "twice" in issue.message


# -- values: durations, sizes, signals, health ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5s", 5.0),
        ("250ms", 0.25),
        ("1m", 60.0),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        ("1m30s", 90.0),
        ("10", 10.0),
        ("5 s", 5.0),
        ("1m 30s", 90.0),
        (" 3S ", 3.0),
        (3, 3.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5 sec", "s", "", "abc", "5s junk", "-1s", -1, True, [5]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(BadValue, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (2.0, "2s"), (1.5, "1.5s"), (90.0, "1m30s"), (0, "0s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("10MB", 10 * 1024 * 1024),
        ("512KB", 512 * 1024),
        ("1GiB", 1024**3),
        ("10M", 10 * 1024 * 1024),
        ("2kb", 2048),
        ("100B", 100),
        ("1.5KB", 1536),
        (4096, 4096),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["10XB", "MB", "10iB", -1, 1.5, True, ""])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(BadValue, match="is not a size"):
        parse_size(value)


@pytest.mark.parametrize("value", ["TERM", "SIGTERM", "term", "sigterm", 15])
def test_signals(value: object) -> None:
    assert parse_signal(value) is signal.SIGTERM


def test_signal_did_you_mean() -> None:
    with pytest.raises(BadValue) as caught:
        parse_signal("TREM")
    assert caught.value.fix == 'did you mean "TERM"?'


@pytest.mark.parametrize(
    ("value", "check"),
    [
        ("http://localhost:3000/health", HealthCheck("http", "http://localhost:3000/health")),
        ("https://api.test/ready", HealthCheck("http", "https://api.test/ready")),
        ("tcp://localhost:5432", HealthCheck("tcp", "localhost:5432")),
        ("tcp://[::1]:6379", HealthCheck("tcp", "[::1]:6379")),
        ("cmd:pg_isready -h localhost", HealthCheck("cmd", "pg_isready -h localhost")),
    ],
)
def test_health_checks(value: str, check: HealthCheck) -> None:
    assert parse_health(value) == check


@pytest.mark.parametrize(
    "value", ["ftp://x", "localhost:3000", "tcp://localhost", "cmd:", "http://"]
)
def test_bad_health_checks(value: str) -> None:
    with pytest.raises(BadValue):
        parse_health(value)


def test_bad_duration_in_file(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + 'stop_timeout = "10 seconds"\n')
    assert (issue.line, issue.key) == (3, "services.web.stop_timeout")
    assert issue.message == '"10 seconds" is not a duration'


def test_bad_signal_in_file(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + 'stop_signal = "SIGFOO"\n')
    assert (issue.line, issue.key) == (3, "services.web.stop_signal")


def test_bad_health_in_file(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + 'health = "ping localhost"\n')
    assert (issue.line, issue.key) == (3, "services.web.health")
    assert "tcp://host:port" in issue.fix


# -- field validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("port = 0", "services.web.port", "0 is not a port (1-65535)"),
        ("port = 65536", "services.web.port", "65536 is not a port (1-65535)"),
        ('port = "3000"', "services.web.port", '"3000" is not a port number'),
        ('restart = "allways"', "services.web.restart", '"allways" is not a restart policy'),
        ("healthy_threshold = 0", "services.web.healthy_threshold", "0 is too small (minimum 1)"),
        ("unhealthy_threshold = 0", "services.web.unhealthy_threshold", "0 is too small"),
        ("max_restarts = -1", "services.web.max_restarts", "-1 is too small (minimum 0)"),
        ('health_interval = "0s"', "services.web.health_interval", '"0s" is too short'),
        ("restart_on_unhealthy = 1", "services.web.restart_on_unhealthy", "expected true or false"),
        ("command = 42", "services.web.command", "expected a string, got an integer (42)"),
        ('command = "  "', "services.web.command", "must not be empty"),
        ("version = 1.0", "services.web.version", "expected a string, got a float"),
        ('host_header = "bad host"', "services.web.host_header", '"bad host" is not a Host value'),
        ('host_header = ""', "services.web.host_header", "must not be empty"),
        ('routes = "/api"', "services.web.routes", "must be an array, not a string"),
        ('aliases = ["bad_"]', "services.web.aliases[0]", '"bad_" is not a host name'),
        ('routes = ["/a", "/a"]', "services.web.routes[1]", '"/a" is listed twice'),
    ],
)
def test_service_field_errors(tmp_path: Path, extra: str, key: str, message: str) -> None:
    issue = toml_issue(tmp_path, f"[services.web]\n{extra}\n")
    assert (issue.line, issue.key) == (2, key)
    assert issue.message.startswith(message)


def test_watch_errors_name_the_entry_and_its_line(tmp_path: Path) -> None:
    (tmp_path / "api" / "src").mkdir(parents=True)
    (tmp_path / "lib").mkdir()  # in the project, but watch entries are relative to cwd
    (tmp_path / "api" / "app.py").write_text("")
    issues = issues_of(
        write(
            tmp_path,
            """
            [services.api]
            command = "python app.py"
            cwd = "api"
            watch = [
              "src/",
              "app.py",
              "",
              "lib/",
              "lib/**/*.py",
              "app.py/*.py",
            ]
            watch_restart_dependents = "yes"

            [services.ext]
            port = 3000
            watch = ["."]

            [services.web]
            command = "x"
            watch_ignore = ["*.log"]
            """,
        )
    )
    got = [(i.line, i.key, i.message) for i in issues]
    api = tmp_path.resolve() / "api"
    assert got == [
        (7, "services.api.watch[2]", "must not be empty"),
        (8, "services.api.watch[3]", f'"lib/" does not exist ({api}/lib)'),
        (
            9,
            "services.api.watch[4]",
            f'"lib/**/*.py": the directory before the wildcard, {api}/lib does not exist',
        ),
        (
            10,
            "services.api.watch[5]",
            f'"app.py/*.py": the directory before the wildcard, {api}/app.py is not a directory',
        ),
        (12, "services.api.watch_restart_dependents", 'expected true or false, got "yes"'),
        (
            16,
            "services.ext.watch",
            "an external service (no command) is not run by devmesh, so nothing restarts it",
        ),
        (20, "services.web.watch_ignore", "does nothing without watch"),
    ]
    assert issues[1].fix == (
        "create it, or fix the path (watch entries are relative to the service's cwd)"
    )


def test_restart_did_you_mean(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + 'restart = "allways"\n')
    assert issue.fix == 'did you mean "always"?'


def test_restart_accepts_underscore_spelling(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL + 'restart = "ON_FAILURE"\n'))
    assert config.services["web"].restart is RestartPolicy.ON_FAILURE


def test_route_must_start_with_slash_points_at_the_element(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + 'routes = [\n  "/api",\n  "ws",\n]\n')
    assert (issue.line, issue.key) == (5, "services.web.routes[1]")
    assert issue.fix == 'start it with "/", like "/ws"'


def test_host_header_values(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            """
            [services.a]
            host_header = "CANONICAL"
            [services.b]
            host_header = "api.example.test:8443"
            """,
        )
    )
    assert config.services["a"].host_header == "canonical"
    assert config.services["b"].host_header == "api.example.test:8443"


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ('[proxy]\nlan_access = "all"', "proxy.lan_access", '"all" is not a LAN access policy'),
        ("[proxy]\nworkers = 0", "proxy.workers", "0 is too small (minimum 1)"),
        ("[proxy]\nport = 99999", "proxy.port", "99999 is not a port"),
        ("[proxy]\nretries = -1", "proxy.retries", "-1 is too small"),
        ('[proxy]\ntls = "yes"', "proxy.tls", "expected true or false"),
        ('[proxy]\nca = "ca.pem"', "proxy.ca", "does not exist"),
        ('[discovery]\nbroadcast_addr = "x.y"', "discovery.broadcast_addr", "is not an IPv4"),
        ("[discovery]\ninterval = 0", "discovery.interval", "0 is too short"),
        ('[discovery]\npeers = "10.0.0.1:1"', "discovery.peers", "must be an array"),
        ('[log]\nlevel = "verbose"', "log.level", '"verbose" is not a log level'),
        ('[log]\nformat = "xml"', "log.format", '"xml" is not a log format'),
        ('[log]\nmax_size = "big"', "log.max_size", '"big" is not a size'),
        ('[mesh]\nnamespace = ""', "mesh.namespace", "must not be empty"),
        ('[mesh]\nsecret_file = "nope"', "mesh.secret_file", "does not exist"),
    ],
)
def test_section_field_errors(tmp_path: Path, section: str, key: str, message: str) -> None:
    issue = toml_issue(tmp_path, section + "\n" + MINIMAL)
    assert (issue.line, issue.key) == (2, key)
    assert message in issue.message


def test_bad_static_peer_points_at_the_element(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[discovery]\npeers = ["10.0.0.2:35555", "10.0.0.3"]\n' + MINIMAL)
    assert (issue.line, issue.key) == (2, "discovery.peers[1]")
    assert '"10.0.0.3" is not host:port' in issue.message


def test_cert_without_key(tmp_path: Path) -> None:
    write(tmp_path, "x", "c.pem")
    issue = toml_issue(tmp_path, '[proxy]\ncert = "c.pem"\n' + MINIMAL)
    assert (issue.line, issue.key) == (2, "proxy.cert")
    assert issue.message == "cert is set but key is not"


def test_secret_and_secret_file_together(tmp_path: Path) -> None:
    write(tmp_path, "s", "s.txt")
    issue = toml_issue(tmp_path, '[mesh]\nsecret = "a"\nsecret_file = "s.txt"\n' + MINIMAL)
    assert (issue.line, issue.key) == (3, "mesh.secret_file")


def test_cwd_is_resolved_from_the_root(tmp_path: Path) -> None:
    (tmp_path / "apps" / "api").mkdir(parents=True)
    config = load(write(tmp_path, MINIMAL + 'cwd = "apps/api"\n'))
    assert config.services["web"].cwd == tmp_path.resolve() / "apps" / "api"


def test_missing_cwd_is_an_error(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + 'cwd = "apps/nope"\n')
    assert (issue.line, issue.key) == (3, "services.web.cwd")
    assert issue.message == f"{tmp_path.resolve() / 'apps/nope'} is not a directory"


def test_env_values_are_strings(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL + 'env = { A = "x", B = 1, C = false, D = 2.5 }\n'))
    assert config.services["web"].env == {"A": "x", "B": "1", "C": "false", "D": "2.5"}


def test_env_table_value_is_an_error_on_the_env_line(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + "env = { A = { B = 1 } }\n")
    assert (issue.line, issue.key) == (3, "services.web.env.A")
    assert issue.message == "a table cannot be an environment value"


def test_env_name_with_equals_sign(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + 'env = { OK = "1", "A=B" = "x" }\n')
    assert (issue.line, issue.key) == (3, 'services.web.env."A=B"')
    assert issue.message == "is not a valid variable name"


def test_env_array_value_in_a_sub_table(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, MINIMAL + '\n[services.web.env]\nOK = "1"\nLIST = [1, 2]\n')
    assert (issue.line, issue.key) == (6, "services.web.env.LIST")


# -- service names, ports, claims --------------------------------------------------------------


@pytest.mark.parametrize("name", ['"my app"', '"-api"', "api_", '"a.b"', "a" * 64])
def test_invalid_service_names(tmp_path: Path, name: str) -> None:
    issue = toml_issue(tmp_path, f'[services.{name}]\ncommand = "x"\n')
    assert issue.line == 1
    assert issue.key.startswith("services.")


def test_valid_service_names(tmp_path: Path) -> None:
    text = "".join(f'[services.{n}]\ncommand = "x"\n' for n in ("a", "api-2", "db_main", "X" * 63))
    assert len(load(write(tmp_path, text)).services) == 4


def test_names_equal_ignoring_case(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services.Api]\ncommand = "x"\n[services.api]\ncommand = "y"\n')
    assert (issue.line, issue.key) == (3, "services.api")
    assert issue.message == 'same host name as service "Api" (names ignore case)'


def test_two_services_with_one_port(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, "[services.a]\nport = 3000\n[services.b]\nport = 3000\n")
    assert (issue.line, issue.key) == (4, "services.b.port")
    assert issue.message == 'port 3000 is already used by service "a"'


def test_service_on_the_proxy_port(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, "[proxy]\nport = 9000\n[services.a]\nport = 9000\n")
    assert (issue.line, issue.key) == (4, "services.a.port")
    assert "proxy's port" in issue.message


def test_route_claimed_twice(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services.a]\nroutes = ["/x"]\n[services.b]\nroutes = ["/x"]\n')
    assert (issue.line, issue.key) == (4, "services.b.routes[0]")


def test_alias_equal_to_another_service(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services.a]\naliases = ["B"]\n[services.b]\nport = 1\n')
    assert (issue.line, issue.key) == (2, "services.a.aliases[0]")
    assert issue.message == 'alias "B" is the name of service "b"'


# -- depends_on --------------------------------------------------------------------------------


DEPS = """
[services.db]
command = "db"
[services.cache]
command = "cache"
"""


def test_depends_on_list_and_table(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            DEPS
            + '[services.api]\ncommand = "api"\ndepends_on = ["db", "cache"]\n'
            + '[services.web]\ncommand = "web"\ndepends_on = { api = "healthy", db = "started" }\n',
        )
    )
    assert config.services["api"].depends_on == {
        "db": DependCondition.STARTED,
        "cache": DependCondition.STARTED,
    }
    assert config.services["web"].depends_on == {
        "api": DependCondition.HEALTHY,
        "db": DependCondition.STARTED,
    }


def test_unknown_dependency_in_table(tmp_path: Path) -> None:
    text = DEPS + '[services.api]\ncommand = "api"\n[services.api.depends_on]\ndbb = "healthy"\n'
    issue = toml_issue(tmp_path, text)
    assert (issue.line, issue.key) == (8, "services.api.depends_on.dbb")
    assert str(issue).endswith('unknown service "dbb"; did you mean "db"?')


def test_unknown_dependency_in_multiline_list(tmp_path: Path) -> None:
    text = DEPS + '[services.api]\ncommand = "api"\ndepends_on = [\n  "db",\n  "cahce",\n]\n'
    issue = toml_issue(tmp_path, text)
    assert (issue.line, issue.key) == (9, "services.api.depends_on[1]")
    assert issue.fix == 'did you mean "cache"?'


def test_unknown_dependency_without_close_match(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, DEPS + '[services.api]\ndepends_on = ["zzzz"]\n')
    assert issue.fix == "add that service or remove the dependency"


def test_self_dependency(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, '[services.api]\ncommand = "x"\ndepends_on = ["api"]\n')
    assert (issue.line, issue.key) == (3, "services.api.depends_on[0]")
    assert issue.message == 'service "api" depends on itself'


def test_two_service_cycle(tmp_path: Path) -> None:
    text = """
    [services.api]
    command = "api"
    depends_on = { db = "healthy" }
    [services.db]
    command = "db"
    depends_on = ["api"]
    """
    issue = toml_issue(tmp_path, text)
    assert issue.message == "dependency cycle api -> db -> api"
    assert (issue.line, issue.key) == (3, "services.api.depends_on.db")


def test_three_service_cycle_starts_at_first_defined(tmp_path: Path) -> None:
    text = """
    [services.web]
    depends_on = ["cache"]
    [services.api]
    depends_on = ["web"]
    [services.cache]
    depends_on = ["api"]
    [services.other]
    depends_on = ["web"]
    """
    issue = toml_issue(tmp_path, text)
    assert issue.message == "dependency cycle web -> cache -> api -> web"
    assert issue.line == 2


def test_bad_dependency_condition(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, DEPS + '[services.api]\ndepends_on = { db = "healty" }\n')
    assert (issue.line, issue.key) == (6, "services.api.depends_on.db")
    assert issue.fix == 'did you mean "healthy"?'


def test_depends_on_wrong_type(tmp_path: Path) -> None:
    issue = toml_issue(tmp_path, DEPS + '[services.api]\ndepends_on = "db"\n')
    assert (issue.line, issue.key) == (6, "services.api.depends_on")
    assert "must be an array or a table" in issue.message


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("[services.job]\nport = 1\n", "is external (no command), so it never completes"),
        ('[services.job]\ncommand = "j"\nrestart = "always"\n', 'has restart = "always"'),
    ],
)
def test_completed_needs_a_dependency_that_can_finish(
    tmp_path: Path, target: str, message: str
) -> None:
    issue = toml_issue(tmp_path, target + '[services.api]\ndepends_on = { job = "completed" }\n')
    assert issue.key == "services.api.depends_on.job"
    assert message in issue.message


# -- the line locator --------------------------------------------------------------------------


TRICKY = '''# [not.a.table]
title = "x = 1 [y]"   # comment = 2
[ services . "my.api" ]
command = """
[fake.header]
fake = 1
"""
literal = \'\'\'
also = "not a key"
\'\'\'\'\'
port = 1
[services]
api.port = 2
"quoted key".x = 3
db = { env = { A = "x", "B.C" = 2 }, port = 4 }
routes = [
  "/a", # ] not the end
  [1, 2],
  { inner = 1 },
]
[[hooks]]
name = "first"
[[hooks]]
name = "second"
after = 1979-05-27 07:32:00Z
last = true
'''


def test_locator_on_tricky_toml() -> None:
    import tomllib

    tomllib.loads(TRICKY)  # the sample itself must be valid TOML
    lines = locate(TRICKY).lines
    assert lines[("title",)] == 2
    assert lines[("services",)] == 3
    assert lines[("services", "my.api")] == 3
    assert lines[("services", "my.api", "command")] == 4
    assert lines[("services", "my.api", "literal")] == 8
    assert lines[("services", "my.api", "port")] == 11
    assert lines[("services", "api")] == 13
    assert lines[("services", "api", "port")] == 13
    assert lines[("services", "quoted key", "x")] == 14
    assert lines[("services", "db", "env", "A")] == 15
    assert lines[("services", "db", "env", "B.C")] == 15
    assert lines[("services", "db", "port")] == 15
    assert lines[("services", "routes", 0)] == 17
    assert lines[("services", "routes", 1)] == 18
    assert lines[("services", "routes", 2, "inner")] == 19
    assert lines[("hooks", 0, "name")] == 22
    assert lines[("hooks", 1)] == 23
    assert lines[("hooks", 1, "name")] == 24
    assert lines[("hooks", 1, "last")] == 26
    # Nothing inside the strings or the comments was taken for a key.
    for key in lines:
        assert key[0] not in ("fake", "fake.header", "also", "not", "comment")
        assert "fake" not in key and "also" not in key


def test_locator_falls_back_to_the_nearest_parent() -> None:
    located = locate('[services.api]\nenv = { A = "x" }\ndepends_on = ["db"]\n')
    assert located.line_of(("services", "api", "env", "A")) == 2
    assert located.line_of(("services", "api", "env", "MISSING")) == 2
    assert located.line_of(("services", "api", "depends_on", 5)) == 3
    assert located.line_of(("services", "api", "nope")) == 1
    assert located.line_of(("other",)) is None


def test_locator_keeps_the_first_line_and_finds_duplicates() -> None:
    located = locate("[a]\nx = 1\n[b]\ny = 1\n[a.c]\nz = 1\nx = 2\n")
    assert located.lines[("a",)] == 1
    assert located.lines[("a", "c")] == 5
    assert located.duplicate is None  # a.c.x is not a.x
    assert locate("a = 1\nb = 2\na = 3\n").duplicate == (("a",), 3)


def test_locator_reports_unclosed_values() -> None:
    assert locate("a = 1\nb = [\n  1,\n").unclosed == 2
    assert locate("a = 1\n\nb = '''\nx\n").unclosed == 3
    assert locate('a = "abc\nb = 1\n').unclosed == 1
    assert locate("a = 1\n").unclosed is None


def test_locator_never_fails_on_broken_text() -> None:
    # Every prefix of the tricky sample, and random garbage, must scan without error.
    for end in range(len(TRICKY)):
        locate(TRICKY[:end])
    rng = random.Random(1234)
    alphabet = "[]{}\"'=.,#\n \\ab1"
    for _ in range(300):
        located = locate("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))))
        assert all(line >= 1 for line in located.lines.values())


def test_dotted_spells_keys_like_toml() -> None:
    assert dotted(("services", "api", "port")) == "services.api.port"
    assert dotted(("services", "my.api", "env", "A B")) == 'services."my.api".env."A B"'
    assert dotted(("services", "api", "routes", 2)) == "services.api.routes[2]"


# -- Procfile + .env ---------------------------------------------------------------------------


PROCFILE = """
# the app
web: gunicorn app:app --bind 0.0.0.0:$PORT

worker:   celery -A app worker
clock: python clock.py  # not a comment for honcho
"""


def test_procfile_ports_are_assigned_like_honcho(tmp_path: Path) -> None:
    config = load(write(tmp_path, PROCFILE, "Procfile"))
    assert config.source is ConfigSource.PROCFILE
    assert config.path == tmp_path.resolve() / "Procfile"
    assert [(s.name, s.port, s.line) for s in config.services.values()] == [
        ("web", 5000, 2),
        ("worker", 5100, 4),
        ("clock", 5200, 5),
    ]
    web = config.services["web"]
    assert web.command == "gunicorn app:app --bind 0.0.0.0:$PORT"
    assert web.restart is RestartPolicy.ON_FAILURE
    assert web.cwd == tmp_path.resolve()
    assert config.services["clock"].command == "python clock.py  # not a comment for honcho"


def test_procfile_port_base_from_dotenv(tmp_path: Path) -> None:
    write(tmp_path, "PORT=6000\nOTHER=1\n", ".env")
    config = load(write(tmp_path, PROCFILE, "Procfile"))
    assert [s.port for s in config.services.values()] == [6000, 6100, 6200]
    assert config.dotenv == {"PORT": "6000", "OTHER": "1"}
    assert config.env_file == tmp_path.resolve() / ".env"


def test_procfile_bad_port_in_dotenv(tmp_path: Path) -> None:
    write(tmp_path, "# ports\nPORT=abc\n", ".env")
    issue = only_issue(write(tmp_path, PROCFILE, "Procfile"))
    assert str(issue).startswith('.env:2: PORT: "abc" is not a port (1-65535)')


def test_procfile_malformed_line(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "web: a\n\nthis is not a process\n", "Procfile"))
    assert issue.line == 3
    assert str(issue).startswith(
        'Procfile:3: expected `name: command`, got "this is not a process"'
    )


def test_procfile_process_without_command(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "web: a\nworker:\n", "Procfile"))
    assert (issue.line, issue.key, issue.message) == (2, "worker", "has no command")


def test_procfile_duplicate_names(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "web: a\nworker: b\nweb: c\n", "Procfile"))
    assert (issue.line, issue.key) == (3, "web")
    assert issue.message == 'process "web" is already defined on line 1'


def test_procfile_names_equal_ignoring_case(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "web: a\nWEB: b\n", "Procfile"))
    assert issue.line == 2
    assert "case is ignored" in issue.message


def test_procfile_name_that_cannot_be_a_host(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "web: a\n_worker: b\n", "Procfile"))
    assert (issue.line, issue.key) == (2, "_worker")


def test_empty_procfile(tmp_path: Path) -> None:
    issue = only_issue(write(tmp_path, "# nothing yet\n", "Procfile"))
    assert issue.message == "no processes defined"


def test_dotenv_last_assignment_wins(tmp_path: Path) -> None:
    write(tmp_path, "A=1\nA=2\n", ".env")
    assert load(write(tmp_path, MINIMAL)).dotenv == {"A": "2"}


def test_dotenv_and_toml_errors_are_reported_together(tmp_path: Path) -> None:
    write(tmp_path, 'A="never closed\n', ".env")
    issues = issues_of(write(tmp_path, MINIMAL + "port = 0\n"))
    assert [str(i).split(":")[0] for i in issues] == ["devmesh.toml", ".env"]


# -- files -------------------------------------------------------------------------------------


def test_find_project_walks_up(tmp_path: Path) -> None:
    toml = write(tmp_path, MINIMAL)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_project(deep) == toml.resolve()


def test_find_project_stops_at_the_nearest_directory(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL)
    procfile = write(tmp_path / "sub", "web: x\n", "Procfile")
    assert find_project(tmp_path / "sub") == procfile.resolve()


def test_find_project_prefers_toml_in_one_directory(tmp_path: Path) -> None:
    write(tmp_path, "web: x\n", "Procfile")
    toml = write(tmp_path, MINIMAL)
    assert find_project(tmp_path) == toml.resolve()


def test_find_project_with_explicit_file(tmp_path: Path) -> None:
    other = write(tmp_path / "conf", MINIMAL, "dev.toml")
    assert find_project(tmp_path, Path("conf/dev.toml")) == other.resolve()
    assert find_project(Path("/"), other) == other.resolve()
    procfile = write(tmp_path / "proc", "web: x\n", "Procfile")
    assert find_project(tmp_path, Path("proc")) == procfile.resolve()


def test_find_project_with_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        find_project(tmp_path, Path("nope.toml"))


def test_find_project_finds_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_project(tmp_path)
    text = str(caught.value)
    assert f"no devmesh.toml or Procfile in {tmp_path.resolve()} or any parent directory" in text
    assert text.endswith("; create one or pass -f")


def test_load_of_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "devmesh.toml").write_bytes(b"\xff\xfe[services]\n")
    assert "is not UTF-8 text" in only_issue(tmp_path / "devmesh.toml").message
    assert "no such file" in only_issue(tmp_path / "missing.toml").message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no devmesh.toml or Procfile" in only_issue(empty).message


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "devmesh.toml").write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert list(load(tmp_path).services) == ["web"]


def test_custom_toml_name_and_dotted_file_name(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL, "dev.toml"))
    assert config.source is ConfigSource.TOML
    proc = load(write(tmp_path, "web: x\n", "Procfile.dev"))
    assert proc.source is ConfigSource.PROCFILE


# -- describe ----------------------------------------------------------------------------------


def test_describe_toml(full: Config) -> None:
    text = describe(full)
    lines = text.splitlines()
    assert lines[0].startswith(f"project    {full.root.name}")
    assert "devmesh.toml" in lines[1]
    assert "namespace feature-x" in text and "proxy :9090" in text and "3 workers" in text
    assert "udp :36000" in text and "every 500ms" in text
    table = lines[lines.index("") + 1 :]
    header = ["SERVICE", "PORT", "RESTART", "DEPENDS", "ON", "WATCH", "CWD", "COMMAND"]
    assert table[0].split() == header
    assert [row.split()[0] for row in table[1:]] == ["db", "migrate", "mono"]
    assert table[2].split()[:4] == ["migrate", "auto", "no", "db"]
    assert "db (healthy), migrate (completed)" in table[3]
    assert "apps/mono" in table[3] and table[3].endswith("pnpm dev")
    assert "\x1b" not in text
    assert all(line == line.rstrip() for line in lines)
    # Set, but not supported yet: never shown as on, and warned about with file and line.
    assert "no secret (the one set is not supported yet)" in text
    assert "no tls (not supported yet)" in text and "secret set" not in text
    warnings = runtime_warnings(full)
    keys = [w.split(": ")[1] for w in warnings]
    assert keys == ["mesh.secret_file", "proxy.tls", "proxy.cert", "proxy.key", "proxy.ca"]
    assert all(w.startswith("devmesh.toml:") for w in warnings)
    assert "NOT authenticated" in warnings[0] and "plain HTTP" in warnings[1]


def test_no_key_shows_a_feature_on_that_is_not(tmp_path: Path, monkeypatch: Any) -> None:
    """Every key of the security work to come (secret, secret_file, tls, cert, key, ca) and
    DEVMESH_SECRET loads with a warning, and `devmesh check` never says it is on."""
    write(tmp_path, "k\n", "c.pem")
    text = '[mesh]\nsecret = "x"\n[proxy]\ntls = false\n[services.a]\ncommand = "x"\n'
    config = load(write(tmp_path, text))
    assert [(w.line, w.key) for w in config.warnings] == [(2, "mesh.secret")]
    monkeypatch.setenv("DEVMESH_SECRET", "abc")
    out = "\n".join(runtime_warnings(config)) + describe(config)
    assert "DEVMESH_SECRET: a team secret is not supported yet" in out and "abc" not in out
    assert '"x"' not in out  # the secret itself is never printed
    monkeypatch.delenv("DEVMESH_SECRET")
    plain = load(write(tmp_path, '[services.a]\ncommand = "x"\n'))
    assert plain.warnings == () and runtime_warnings(plain) == []


def test_describe_procfile_and_external(tmp_path: Path) -> None:
    write(tmp_path, "A=1\n", ".env")
    text = describe(load(write(tmp_path, "web: npm start\napi: node api.js\n", "Procfile")))
    assert "Procfile" in text and ".env (1 variable)" in text
    assert "CWD" not in text
    rows = text.splitlines()[-2:]
    assert rows[0].split() == ["web", "5000", "on-failure", "-", "npm", "start"]
    assert rows[1].split() == ["api", "5100", "on-failure", "-", "node", "api.js"]
    external = describe(load(write(tmp_path, "[services.auth]\nport = 3001\n")))
    assert external.splitlines()[-1].split() == [
        "auth",
        "3001",
        "-",
        "-",
        "(external:",
        "devmesh",
        "run)",
    ]


# -- [dashboard], [tracing] and [log] of issue 6 ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("[dashboard]\nport = 70000\n", 2, "dashboard.port", "70000 is not a port (1-65535)"),
        ("[dashboard]\nenabled = 'yes'\n", 2, "dashboard.enabled", "expected true or false"),
        (
            '[tracing]\notlp_endpoint = "ftp://collector"\n',
            2,
            "tracing.otlp_endpoint",
            '"ftp://collector" is not an http(s) URL',
        ),
        ('[tracing]\notlp_endpont = "x"\n', 2, "tracing.otlp_endpont", "unknown key"),
        ('[log]\nlevel = "loud"\n', 2, "log.level", '"loud" is not a log level'),
    ],
)
def test_observability_sections_name_the_mistake(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    issue = toml_issue(tmp_path, text + MINIMAL)
    assert (issue.line, issue.key) == (line, key)
    assert issue.message.startswith(message), issue.message


def test_observability_sections_read(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            '[dashboard]\nport = 9191\n[tracing]\notlp_endpoint = "http://127.0.0.1:4318"\n'
            'otlp_headers = { authorization = "Bearer x" }\n'
            '[log]\nrequests = "service"\nformat = "json"\nlevel = "debug"\n' + MINIMAL,
        )
    )
    assert (config.dashboard.port, config.dashboard.enabled) == (9191, True)
    assert config.tracing.otlp_endpoint == "http://127.0.0.1:4318"
    assert dict(config.tracing.otlp_headers) == {"authorization": "Bearer x"}
    assert (config.log.requests, config.log.format, config.log.level) == (
        "service",
        "json",
        "debug",
    )
    assert load(write(tmp_path, MINIMAL)).dashboard.port is None  # 8081 or the next free
