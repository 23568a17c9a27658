"""Services the user runs by hand, as devmesh 0.1.x projects declare them: a service with only a
`port`, `devmesh proxy` with no services or none started, and `devmesh run NAME [--port N]
[-- CMD]`. Real `devmesh` commands, real processes on real ports, through the real proxy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.conftest import PY, Project, free_port, wait_until
from tests.test_proxy_mesh import HELLO, answer, get


def by_hand(
    project: Project, procs: list[subprocess.Popen[str]], port: int, name: str
) -> subprocess.Popen[str]:
    """The user's own app on `port`, answering `<name> <Host> <path>`, started without devmesh."""
    env = {**project.env, "PORT": str(port), "DEVMESH_SERVICE": name}
    proc = subprocess.Popen([sys.executable, "hello.py"], cwd=project.root, env=env, text=True)
    procs.append(proc)
    return proc


def devmesh_run(
    project: Project, procs: list[subprocess.Popen[str]], *args: str
) -> subprocess.Popen[str]:
    """`devmesh run ARGS` in the background, its first line read (it is registered then)."""
    proc = subprocess.Popen(
        [PY, "-m", "devmesh", "run", *args],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    return proc


def test_a_service_without_command_is_probed_and_routed_while_it_answers(
    project: Project, started: list[subprocess.Popen[str]]
) -> None:
    """0.1.x: `[services.mono] port = N` is run by hand. While nothing listens there it is
    `external` / not listening and its 503 page says so; started by hand it is served here
    within a probe or two; stopped, it is not listening again. Never `stopped` while it serves;
    `devmesh stop` / `start` take it out of and back into the mesh."""
    project.write("hello.py", HELLO)
    mono = free_port()
    project.toml(f"[services.mono]\nport = {mono}\n")
    project.up()
    port = project.proxy_port
    svc = project.wait_state("mono", "external")
    assert svc["health"]["check"] == "port" and svc["routable"] is False
    status, body, _ = get(port, "mono", accept="application/json")
    page = json.loads(body)
    assert status == 503 and page["state"] == "external"
    assert f"nothing listens on port {mono} here" in page["reason"]
    assert page["peers_considered"] == []
    status, html, _ = get(port, "mono")
    assert status == 503 and "No peer of this namespace runs it" in html
    text = project.cli("status").stdout
    row = next(line for line in text.splitlines() if line.startswith("mono"))
    assert row.split()[1:4] == ["external", "not", "listening"]

    app = by_hand(project, started, mono, "mono")
    # Eager probes (every 250 ms while it does not answer): served here within a second or so.
    wait_until(lambda: answer(port, "mono") == f"mono mono.localhost:{port} /", 5, "mono here")
    svc = project.service("mono")
    assert (svc["state"], svc["health"]["status"], svc["routable"]) == ("external", "healthy", True)
    assert "served here" in svc["reason"]
    row = next(line for line in project.cli("status").stdout.splitlines() if "mono" in line)
    assert row.split()[1:3] == ["external", "ready"]
    assert "mono answers on port" in project.running[0].text()

    app.kill()
    app.wait(10)
    # Refused at once (503); its probes say so within an interval and a half.
    wait_until(lambda: not project.service("mono")["routable"], 15, "mono not listening")
    svc = project.service("mono")
    assert svc["state"] == "external" and f"nothing listens on port {mono}" in svc["reason"]
    assert get(port, "mono")[0] == 503

    # `devmesh stop mono`: out of the mesh (not probed, not routed) until `devmesh start`.
    assert project.cli("stop", "mono").returncode == 0
    assert project.service("mono")["state"] == "stopped"
    by_hand(project, started, mono, "mono")
    wait_until(lambda: project.service("mono")["health"] is None, 5, "no probe of a stopped one")
    assert get(port, "mono")[0] == 503
    started = project.cli("start", "mono")
    assert started.returncode == 0 and "external" in started.stdout
    wait_until(lambda: answer(port, "mono") is not None, 5, "mono served again after start")
    restart = project.cli("restart", "mono")
    assert restart.returncode == 1 and "cannot restart it" in restart.stderr


def test_devmesh_proxy_and_devmesh_run(
    project: Project, started: list[subprocess.Popen[str]]
) -> None:
    """The original quick start: `devmesh proxy` (no services declared at all), then `devmesh
    run NAME --port N` for an app started by hand, and `devmesh run NAME -- CMD` running the
    app in the foreground with $PORT; each is routed while it answers, gone when it ends."""
    project.write("hello.py", HELLO)
    project.toml("")  # only [proxy] port: no services at all
    refused = project.cli("up")
    assert refused.returncode == 1 and "devmesh proxy" in refused.stderr
    run = project.up(command="proxy")
    port = project.proxy_port
    assert project.status()["services"] == [] and "proxy only" in run.text()

    api = free_port()
    by_hand(project, started, api, "api")
    unknown = project.cli("run", "api")
    assert (
        unknown.returncode == 1
        and "--port" in unknown.stderr
        and "Traceback" not in (unknown.stderr)
    )
    reg = devmesh_run(project, started, "api", "--port", str(api))
    assert reg.stdout is not None and f"port {api}" in reg.stdout.readline()
    wait_until(lambda: answer(port, "api") == f"api api.localhost:{port} /", 5, "api routed")
    svc = project.service("api")
    assert (svc["state"], svc["by_hand"], svc["declared"]) == ("running", reg.pid, False)
    reg.send_signal(signal.SIGINT)  # Ctrl+C: deregistered, and forgotten (it was not declared)
    assert reg.wait(10) == 0
    wait_until(lambda: project.status()["services"] == [], 5, "api forgotten")
    assert get(port, "api")[0] == 404

    # `-- CMD`: run in the foreground with a free $PORT, registered while it runs.
    cmd = devmesh_run(project, started, "web", "--", sys.executable, "hello.py")
    assert cmd.stdout is not None and "PORT=" in cmd.stdout.readline()
    wait_until(lambda: answer(port, "web") == f"web web.localhost:{port} /", 10, "web routed")
    web = project.service("web")
    assert web["by_hand"] == cmd.pid and web["port"] != port
    assert project.cli("stop", "web").returncode == 0  # stops the command it runs too
    assert cmd.wait(15) != 0  # hello.py ended by SIGTERM
    assert project.status()["services"] == []
    # The command's own exit code is devmesh run's.
    project.write("fail.py", "import os, sys\nprint('port', os.environ['PORT'])\nsys.exit(3)\n")
    failing = project.cli("run", "job", "--", sys.executable, "fail.py")
    assert failing.returncode == 3 and "port " in failing.stdout
    assert "job no longer registered" in failing.stdout
    missing = project.cli("run", "job", "--", "no-such-program-xyz")
    assert missing.returncode == 1 and "cannot run no-such-program-xyz" in missing.stderr
    assert project.status()["services"] == []


def test_devmesh_proxy_starts_none_and_run_gives_the_service_its_environment(
    project: Project, started: list[subprocess.Popen[str]]
) -> None:
    """`devmesh proxy` with declared services starts none of them; `devmesh run api -- CMD`
    runs api's command by hand with the environment devmesh would give it (.env, its env,
    the other services' URLs, $PORT) in its cwd."""
    project.write("hello.py", HELLO)
    project.write(".env", "FROM_DOTENV=yes\n")
    project.write(
        "sub/show.py",
        "import os, sys\nprint(os.getcwd(), os.environ['FROM_DOTENV'], "
        "os.environ['OWN'], os.environ['DEVMESH_WEB_URL'], os.environ['PORT'])\n",
    )
    api, web = free_port(), free_port()
    project.toml(
        f"""
        [services.api]
        command = "python3 hello.py"
        port = {api}
        env = {{ OWN = "mine" }}
        cwd = "sub"

        [services.web]
        command = "python3 hello.py"
        port = {web}
        """
    )
    project.up(command="proxy")
    services = {s["name"]: s for s in project.status()["services"]}
    assert {n: (s["state"], s["pid"]) for n, s in services.items()} == {
        "api": ("stopped", None),
        "web": ("stopped", None),
    }
    assert "devmesh proxy" in services["api"]["reason"]
    shown = project.cli("run", "api", "--", sys.executable, "show.py")
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.startswith("/"))
    assert line.split() == [
        str(project.root / "sub"),
        "yes",
        "mine",
        f"http://localhost:{web}",
        str(api),
    ]
    wrong = project.cli("run", "api", "--port", str(web))
    assert wrong.returncode == 1 and f"on port {api} here" in wrong.stderr
    # `devmesh start` still starts a declared service in proxy mode, when asked.
    assert project.cli("start", "web").returncode == 0
    assert answer(project.proxy_port, "web") == f"web web.localhost:{project.proxy_port} /"
    assert project.service("api")["state"] == "stopped"
