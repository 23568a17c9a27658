"""`devmesh up` end to end: real processes, signals and the real CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import Project, pid_alive, wait_until

ENV_DUMP = """
import json, os, sys
keys = [k for k in os.environ if k.startswith(("DEVMESH_", "PORT", "GREETING", "FROM_"))]
json.dump({k: os.environ[k] for k in keys} | {"cwd": os.getcwd(),
          "unbuffered": os.environ.get("PYTHONUNBUFFERED")}, open(sys.argv[1], "w"))
import time; time.sleep(1000)
"""


def test_up_runs_services_with_port_env_and_status(project: Project) -> None:
    project.write("dump.py", ENV_DUMP)
    project.write(".env", "GREETING=from-dotenv\nFROM_DOTENV=1\n")
    (project.root / "sub").mkdir()
    project.toml(
        """
        [services.api]
        command = "python3 ../dump.py ../api.json"
        cwd = "sub"
        port = 5701
        env = { FROM_SERVICE = "yes", GREETING = "from-service" }

        [services.web]
        command = "python3 dump.py web.json"
        """
    )
    project.up()
    api = project.wait_state("api", "running")
    web = project.wait_state("web", "running")
    api_env = json.loads(wait_until(lambda: _read(project.root / "api.json"), 10, "api env"))
    web_env = json.loads(wait_until(lambda: _read(project.root / "web.json"), 10, "web env"))
    assert api_env["PORT"] == "5701" and api["port"] == 5701
    assert api_env["DEVMESH_SERVICE"] == "api"
    assert api_env["GREETING"] == "from-service"  # service env wins over .env
    assert api_env["FROM_DOTENV"] == "1" and api_env["FROM_SERVICE"] == "yes"
    assert api_env["cwd"] == str(project.root / "sub")
    assert api_env["unbuffered"] == "1"
    assert api_env["DEVMESH_WEB_URL"] == f"http://localhost:{web['port']}"
    assert "DEVMESH_API_URL" not in api_env
    assert web_env["PORT"] == str(web["port"]) and 0 < web["port"] < 65536
    assert web_env["DEVMESH_API_URL"] == "http://localhost:5701"
    status = project.status()
    assert status["node"]["pid"] == project.running[0].pid
    assert status["node"]["namespace"]
    assert [w["name"] for w in status["workers"]] == ["control", "proxy-1", "health"]
    assert all(w["state"] == "running" for w in status["workers"])
    for svc in status["services"]:
        assert set(svc) >= {"name", "port", "state", "pid", "restarts", "health"}
        assert pid_alive(svc["pid"])
    table = project.cli("status")
    assert table.returncode == 0 and "api" in table.stdout and "running" in table.stdout


def _read(path: os.PathLike[str]) -> str | None:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return text or None


def test_dependency_order_and_conditions(project: Project) -> None:
    # Each service appends its name when it starts; migrate must complete before api starts.
    project.toml(
        """
        [services.web]
        command = "echo web >> order; exec sleep 1000"
        depends_on = ["api"]

        [services.api]
        command = "echo api >> order; exec sleep 1000"
        depends_on = { db = "started", migrate = "completed" }

        [services.migrate]
        command = "sleep 0.5; echo migrate >> order"
        restart = "no"
        depends_on = ["db"]

        [services.db]
        command = "echo db >> order; exec sleep 1000"
        """
    )
    project.up()
    project.wait_state("web", "starting", "running")
    assert (project.root / "order").read_text().split() == ["db", "migrate", "api", "web"]
    assert project.service("migrate")["state"] == "exited"
    assert project.service("migrate")["exit_code"] == 0


def test_crash_loop_ends_in_failed_with_exit_code(project: Project) -> None:
    project.toml(
        """
        [services.crashy]
        command = "echo boom; exit 7"
        backoff = "50ms"
        max_restarts = 3

        [services.steady]
        command = "sleep 1000"
        """
    )
    project.up()
    steady_pid = project.wait_state("steady", "running")["pid"]
    crashy = project.wait_state("crashy", "failed", timeout=20)
    assert crashy["exit_code"] == 7 and crashy["restarts"] == 3
    assert "exited with code 7" in crashy["reason"] and "4 times" in crashy["reason"]
    # It stays failed: no endless respawn.
    time.sleep(0.5)
    assert project.service("crashy")["restarts"] == 3
    assert project.service("steady")["pid"] == steady_pid
    table = project.cli("status").stdout
    assert "failed" in table and "exited with code 7" in table


def test_restart_policies(project: Project) -> None:
    project.toml(
        """
        [services.once]
        command = "exit 0"
        restart = "on-failure"

        [services.never]
        command = "exit 1"
        restart = "no"

        [services.again]
        command = "sleep 0.2; exit 0"
        restart = "always"
        start_secs = "100ms"
        backoff = "50ms"
        """
    )
    project.up()
    assert project.wait_state("once", "exited")["exit_code"] == 0
    assert project.wait_state("never", "exited")["exit_code"] == 1
    wait_until(lambda: project.service("again")["restarts"] >= 3, 15, "always to restart")
    assert project.service("once")["restarts"] == 0 and project.service("never")["restarts"] == 0


def test_user_stop_is_never_restarted_and_start_restart_work(project: Project) -> None:
    project.toml(
        """
        [services.api]
        command = "sleep 1000"
        restart = "always"
        backoff = "50ms"
        """
    )
    project.up()
    pid = project.wait_state("api", "running")["pid"]
    result = project.cli("stop", "api")
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert not pid_alive(pid)
    time.sleep(0.5)  # a restart would have happened within the 50 ms backoff
    svc = project.service("api")
    assert svc["state"] == "stopped" and svc["pid"] is None
    result = project.cli("start", "api")
    assert result.returncode == 0, result.stderr
    started = project.wait_state("api", "running")
    assert started["pid"] != pid
    result = project.cli("restart", "api")
    assert result.returncode == 0, result.stderr
    after = project.wait_state("api", "running")
    assert after["pid"] not in (None, started["pid"])
    assert not pid_alive(started["pid"])


def test_graceful_stop_reverse_order_stop_signal_and_timeout(project: Project) -> None:
    # db must outlive api: each writes when it gets its stop signal.
    trap = 'trap "echo {name} >> stops; exit 0" {sig}; while true; do sleep 0.05; done'
    project.toml(
        f"""
        [services.db]
        command = '{trap.format(name="db", sig="TERM")}'

        [services.api]
        command = '{trap.format(name="api", sig="INT")}'
        depends_on = ["db"]
        stop_signal = "INT"

        [services.stubborn]
        command = "trap '' TERM; while true; do sleep 0.05; done"
        stop_timeout = "500ms"
        """
    )
    run = project.up()
    project.wait_state("api", "running")
    stubborn = project.wait_state("stubborn", "running")["pid"]
    start = time.monotonic()
    assert run.stop(timeout=20) == 0
    assert time.monotonic() - start < 10
    assert (project.root / "stops").read_text().split() == ["api", "db"]
    assert not pid_alive(stubborn)
    assert "did not stop within 0.5s" in run.text()


def test_kill_worker_is_restarted_and_services_keep_pids(project: Project) -> None:
    project.toml(
        """
        [services.api]
        command = "sleep 1000"
        """
    )
    project.up()
    svc_pid = project.wait_state("api", "running")["pid"]
    worker = project.status()["workers"][0]
    os.kill(worker["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    def new_worker() -> int | None:
        # The supervisor restarts it; the status goes through the new worker.
        data = project.try_status()
        if data is None:
            return None
        w = data["workers"][0]
        return w["pid"] if w["pid"] != worker["pid"] and w["state"] == "running" else None

    new_pid = wait_until(new_worker, 5, "a new control worker")
    assert pid_alive(new_pid)
    assert project.status()["workers"][0]["restarts"] == 1
    assert project.service("api")["pid"] == svc_pid
    # Restarted "within 1 s": the new process exists well before that.
    proc = psutil.Process(new_pid)
    assert proc.create_time() - (time.time() - (time.monotonic() - killed_at)) < 1.0


def test_kill_parent_leaves_nothing_behind(project: Project) -> None:
    project.toml(
        """
        [services.forker]
        command = "sh -c 'sleep 1000 & sleep 1000'"

        [services.plain]
        command = "sleep 1000"
        """
    )
    run = project.up()
    project.wait_state("forker", "running")
    project.wait_state("plain", "running")
    everything = psutil.Process(run.pid).children(recursive=True)
    status = project.status()
    watchdog = status["node"]["watchdog_pid"]
    # the forker's group holds sh + 2 sleeps; plus the worker and the watchdog
    assert len([p for p in everything if p.name() == "sleep"]) == 3
    pids = {p.pid for p in everything} - {watchdog}
    os.kill(run.pid, signal.SIGKILL)
    run.proc.wait(5)
    wait_until(lambda: not any(pid_alive(p) for p in pids), 2.0, "every child to be gone")
    wait_until(lambda: not pid_alive(watchdog), 2.0, "the watchdog to exit")


def test_detach_and_down(project: Project) -> None:
    project.toml(
        """
        [services.api]
        command = "sleep 1000"
        """
    )
    result = project.cli("up", "--detach")
    assert result.returncode == 0, result.stderr
    assert "running in the background" in result.stdout and "api" in result.stdout
    status = project.status()
    assert status["services"][0]["state"] in ("starting", "running")
    pid, svc_pid = status["node"]["pid"], status["services"][0]["pid"]
    result = project.cli("down")
    assert result.returncode == 0, result.stderr
    assert not pid_alive(pid) and not pid_alive(svc_pid)
    gone = project.cli("status")
    assert gone.returncode == 1
    assert "not running" in gone.stderr and "Traceback" not in gone.stderr


def test_bad_input_is_one_line_and_disturbs_nothing(project: Project) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        project.toml(
            f"""
            [services.api]
            command = "sleep 1000"

            [services.nope]
            command = "no-such-program-xyz --flag"

            [services.busy]
            command = "sleep 1000"
            port = {taken}
            """
        )
        result = project.cli("up", "nope")
        assert result.returncode == 1
        assert "no-such-program-xyz" in result.stderr and "not found" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
        result = project.cli("up", "busy")
        assert result.returncode == 1
        assert f"port {taken} is already in use by pid {os.getpid()}" in result.stderr
        assert len(result.stderr.splitlines()) == 1
        result = project.cli("up", "apx")
        assert result.returncode == 1 and "did you mean 'api'" in result.stderr
        project.up("api")
        api_pid = project.wait_state("api", "running")["pid"]
        second = project.cli("up", "api")
        assert second.returncode == 1
        assert "already running" in second.stderr and str(project.running[0].pid) in second.stderr
        assert len(second.stderr.splitlines()) == 1
        bad = project.cli("restart", "apx")
        assert bad.returncode == 1 and "unknown service 'apx'" in bad.stderr
        assert project.service("api")["pid"] == api_pid and pid_alive(api_pid)
    finally:
        holder.close()


def test_stale_socket_and_no_mesh_are_explained(project: Project) -> None:
    project.toml(
        """
        [services.api]
        command = "sleep 1000"
        """
    )
    result = project.cli("status")
    assert (
        result.returncode == 1 and "not running" in result.stderr and "devmesh up" in result.stderr
    )
    run = project.up()
    sock_path = project.status()["node"]["socket"]
    os.kill(run.pid, signal.SIGKILL)
    run.proc.wait(5)
    assert os.path.exists(sock_path)
    stale = project.cli("status")
    assert stale.returncode == 1 and "stale socket" in stale.stderr
    # and a new `devmesh up` replaces it
    project.up()
    project.wait_state("api", "running")


BURST = """
import sys
name, count = sys.argv[1], int(sys.argv[2])
out = sys.stdout.buffer
pad = "x" * 60
# Write in uneven chunks so that lines are split across pipe reads.
buf = []
for i in range(count):
    buf.append(f"{name} {i} {pad}\\n")
    if len(buf) == 37:
        out.write("".join(buf).encode())
        buf = []
out.write("".join(buf).encode())
out.flush()
"""


def test_log_burst_loses_tears_and_reorders_nothing(project: Project) -> None:
    per = 50_000
    names = ["s1", "s2", "s3", "s4"]
    project.write("burst.py", BURST)
    project.toml(
        "\n".join(
            f'[services.{n}]\ncommand = "python3 burst.py {n} {per}"\nrestart = "no"\n'
            for n in names
        )
    )
    run = project.up()
    for n in names:
        project.wait_state(n, "exited", timeout=60)
    line_re = re.compile(r"^\d\d:\d\d:\d\d (s\d) +\| (s\d) (\d+) x{60}$")

    def check(lines: list[str], expect: list[str]) -> None:
        seen = dict.fromkeys(expect, 0)
        for line in lines:
            if "devmesh" in line.split("|")[0] or "| [devmesh] " in line:
                continue
            match = line_re.match(line)
            assert match, f"torn or garbled line: {line!r}"
            prefix, name, seq = match.group(1), match.group(2), int(match.group(3))
            assert prefix == name
            assert seq == seen[name], f"{name}: expected line {seen[name]}, got {seq}"
            seen[name] += 1
        assert seen == dict.fromkeys(expect, per)

    # The terminal: wait until the last lines are flushed.
    wait_until(lambda: run.text().count(f" {per - 1} ") == 4, 20, "terminal output")
    check(run.text().splitlines(), names)
    # The log files, through `devmesh logs`: one service, then all interleaved.
    one = project.cli("logs", "s2")
    assert one.returncode == 0, one.stderr
    check(one.stdout.splitlines(), ["s2"])
    every = project.cli("logs")
    assert every.returncode == 0, every.stderr
    check(every.stdout.splitlines(), names)
    last = project.cli("logs", "s3", "-n", "5").stdout.splitlines()
    assert len(last) == 5 and "exited with code 0" in last[-1]  # devmesh's own line
    assert [line.split()[-2] for line in last[:-1]] == [str(i) for i in range(per - 4, per)]


def test_blocked_worker_loop_is_detected_and_replaced(project: Project) -> None:
    project.toml(
        """
        [services.api]
        command = "sleep 1000"
        """
    )
    project.up()
    svc_pid = project.wait_state("api", "running")["pid"]
    worker = project.status()["workers"][0]["pid"]
    os.kill(worker, signal.SIGSTOP)  # alive but silent: no heartbeats
    try:

        def replaced() -> bool:
            data = project.try_status()
            return data is not None and data["workers"][0]["pid"] not in (None, worker)

        wait_until(replaced, 15, "the silent worker to be replaced")
    finally:
        if pid_alive(worker):
            os.kill(worker, signal.SIGCONT)
    assert not pid_alive(worker)
    assert project.service("api")["pid"] == svc_pid


def test_watchdog_is_restarted_and_still_cleans_up(project: Project) -> None:
    project.toml(
        """
        [services.forker]
        command = "sh -c 'sleep 1000 & sleep 1000'"
        """
    )
    run = project.up()
    project.wait_state("forker", "running")
    first = project.status()["node"]["watchdog_pid"]
    os.kill(first, signal.SIGKILL)

    def new_watchdog() -> int | None:
        pid: int = project.status()["node"]["watchdog_pid"]
        return pid if pid != first and pid_alive(pid) else None

    second = wait_until(new_watchdog, 5, "a new watchdog")
    children = {p.pid for p in psutil.Process(run.pid).children(recursive=True)} - {second}
    assert len(children) >= 4  # sh, two sleeps, the workers
    os.kill(run.pid, signal.SIGKILL)
    run.proc.wait(5)
    wait_until(lambda: not any(pid_alive(p) for p in children), 2.0, "every child to be gone")
    assert not any(pid_alive(p) for p in children)


def _devmesh_pss(supervisor: int) -> int:
    """PSS of the supervisor, its workers and its watchdog (not the services)."""
    total = psutil.Process(supervisor).memory_full_info().pss
    for child in psutil.Process(supervisor).children():
        if child.name() not in ("sleep", "sh"):
            total += child.memory_full_info().pss
    return total


def test_per_service_overhead_is_under_one_megabyte(project: Project) -> None:
    measured = {}
    for count in (10, 110):
        project.toml("\n".join(f'[services.s{i}]\ncommand = "sleep 1000"\n' for i in range(count)))
        run = project.up()
        wait_until(
            lambda: all(s["state"] == "running" for s in project.status()["services"]),
            30,
            "all services running",
        )
        # No Python (or any other) process between devmesh and a service.
        for svc in project.status()["services"]:
            assert psutil.Process(svc["pid"]).ppid() == run.pid
        measured[count] = _devmesh_pss(run.pid)
        assert run.stop() == 0
    per_service = (measured[110] - measured[10]) / 100
    print(f"devmesh PSS: {measured}, {per_service / 1024:.1f} KiB per service")
    assert per_service < 1024 * 1024, f"{per_service / 1024:.0f} KiB per service"


def test_logs_follow_prints_history_then_new_lines(project: Project) -> None:
    import subprocess
    import sys

    project.toml(
        """
        [services.ticker]
        command = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
        """
    )
    project.up()
    project.wait_state("ticker", "running")
    wait_until(lambda: "tick 3" in project.cli("logs", "ticker").stdout, 10, "three ticks")
    follower = subprocess.Popen(
        [sys.executable, "-m", "devmesh", "logs", "-f", "ticker"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        seen: list[int] = []
        deadline = time.monotonic() + 15
        while len(seen) < 30 and time.monotonic() < deadline:
            line = follower.stdout.readline()
            if " tick " in line:
                seen.append(int(line.split()[-1]))
        # The history and the followed lines join without a gap or a repeat.
        assert seen[:3] == [1, 2, 3]
        assert seen == list(range(1, len(seen) + 1)) and len(seen) == 30
    finally:
        follower.kill()
        follower.wait(5)
        assert follower.stdout is not None
        follower.stdout.close()


CHILD_TRAPS_TERM = """
import signal, sys, time
def done(*_):
    time.sleep(0.5)
    open("child-done", "w").write("done")
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
open("child-ready", "w").write("ready")
time.sleep(1000)
"""


def test_stop_waits_for_the_rest_of_the_group(project: Project) -> None:
    # The shell exits at once on TERM; its child needs 0.5 s to finish cleanly.
    project.write("child.py", CHILD_TRAPS_TERM)
    project.toml(
        """
        [services.app]
        command = "python3 child.py & sleep 1000"
        stop_timeout = "5s"
        """
    )
    project.up()
    project.wait_state("app", "running")
    wait_until(lambda: (project.root / "child-ready").exists(), 10, "the child to start")
    result = project.cli("stop", "app")
    assert result.returncode == 0, result.stderr
    assert (project.root / "child-done").read_text() == "done"


SETSID = "python3 -c 'import os, time; os.setsid(); time.sleep(1000)'"


def _marked(instance_prefix: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("DEVMESH_INSTANCE", "").startswith(instance_prefix):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_processes_that_leave_the_group_are_stopped_too(project: Project) -> None:
    project.toml(
        f"""
        [services.escaper]
        command = "{SETSID} & exec sleep 1000"
        backoff = "50ms"
        """
    )
    run = project.up()
    project.wait_state("escaper", "running")
    # The escapee runs in a session of its own.
    escapee = wait_until(
        lambda: [
            p
            for p in psutil.Process(run.pid).children(recursive=True)
            if p.name() != "sleep" and os.getsid(p.pid) == p.pid
        ],
        10,
        "the escapee",
    )[0].pid
    # The service's main process dies: its escapee goes with it before the restart.
    os.kill(project.service("escaper")["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(escapee), 3, "the first escapee to be killed")
    project.wait_state("escaper", "running")
    second = wait_until(
        lambda: [
            p
            for p in psutil.Process(run.pid).children(recursive=True)
            if p.name() != "sleep" and os.getsid(p.pid) == p.pid
        ],
        10,
        "the second escapee",
    )[0].pid
    # Killing the supervisor outright: the watchdog finds it by its DEVMESH_INSTANCE mark.
    os.kill(run.pid, signal.SIGKILL)
    run.proc.wait(5)
    wait_until(lambda: not pid_alive(second), 2.0, "the second escapee to be killed")
    assert not pid_alive(second) and second != escapee


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("exit 3", "dependency migrate exited with code 3"),
        ("kill -9 $$", "dependency migrate killed by signal 9"),
    ],
)
def test_failed_completed_dependency_fails_its_dependents(
    project: Project, command: str, reason: str
) -> None:
    project.toml(
        f"""
        [services.migrate]
        command = "{command}"
        restart = "no"

        [services.api]
        command = "sleep 1000"
        depends_on = {{ migrate = "completed" }}
        """
    )
    project.up()
    api = project.wait_state("api", "failed")
    assert api["reason"] == reason


def test_command_not_found_fails_at_once(project: Project) -> None:
    project.toml(
        """
        [services.ghost]
        command = "exec no-such-program-xyz"
        restart = "always"
        """
    )
    project.up()
    ghost = project.wait_state("ghost", "failed", timeout=5)
    assert ghost["restarts"] == 0 and ghost["reason"] == "command not found (exit 127)"


def test_start_brings_up_stopped_dependencies(project: Project) -> None:
    project.toml(
        """
        [services.db]
        command = "sleep 1000"

        [services.api]
        command = "sleep 1000"
        depends_on = ["db"]
        """
    )
    project.up()
    project.wait_state("api", "running")
    assert project.cli("stop", "api").returncode == 0
    assert project.cli("stop", "db").returncode == 0
    result = project.cli("start", "api")
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.service("db")["state"] in ("starting", "running")


def test_a_broken_config_does_not_lock_the_user_out(project: Project) -> None:
    project.toml(
        """
        [services.api]
        command = "sleep 1000"
        """
    )
    run = project.up()
    project.wait_state("api", "running")
    project.toml("[services.api\ncommand = ")  # being edited
    assert project.cli("status").returncode == 0
    assert project.cli("restart", "api").returncode == 0
    assert project.cli("logs", "api").returncode == 0
    assert project.cli("start", "nope").stderr.strip().endswith("known: api")
    result = project.cli("down")
    assert result.returncode == 0, result.stderr
    assert run.proc.wait(5) == 0


def test_detached_log_has_devmesh_lines_only(project: Project) -> None:
    project.toml(
        """
        [services.talker]
        command = "echo hello-from-talker; exec sleep 1000"
        """
    )
    assert project.cli("up", "--detach").returncode == 0
    wait_until(lambda: "hello-from-talker" in project.cli("logs").stdout, 10, "the line")
    status = project.status()
    log = Path(status["node"]["logs"]).parent / "devmesh.log"
    assert "talker started" in log.read_text()
    assert "hello-from-talker" not in log.read_text()
    assert project.cli("down").returncode == 0


def test_a_stop_does_not_wait_for_zombies(project: Project) -> None:
    # The background sleep outlives its shell's reaping by a moment and becomes init's zombie;
    # a zombie must not count as a live member of the group (init may reap it seconds later).
    project.toml(
        """
        [services.app]
        command = "sleep 1000 & sleep 1000"
        """
    )
    project.up()
    project.wait_state("app", "running")
    start = time.monotonic()
    result = project.cli("stop", "app")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert elapsed < 1.5, f"stop took {elapsed:.2f}s"


def test_workers_survive_messages_larger_than_the_pipe_buffer(project: Project) -> None:
    # 250 services make the state for the control worker and the route table for the proxy
    # worker several hundred KB: far more than a socket buffer, so they arrive in many reads.
    project.toml(
        "\n".join(
            f'[services.service-with-a-long-name-{i}]\ncommand = "sleep 600"\nstart_secs = "0s"\n'
            for i in range(250)
        )
    )
    run = project.up(timeout=60)

    def all_running() -> bool:
        return all(s["state"] == "running" for s in project.status()["services"])

    wait_until(all_running, 60, "250 services running", step=0.2)
    # The whole state goes to the control worker at least once a second: watch for three.
    dashboard = project.status()["node"]["dashboard"]["url"]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with urllib.request.urlopen(dashboard + "v1/status", timeout=10) as response:
            workers = json.load(response)["workers"]
        assert all(w["restarts"] == 0 for w in workers), workers
    assert "died" not in run.text(), run.text()[-2000:]
