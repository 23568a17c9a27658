"""Watch mode: real `devmesh up`, real file edits, a real `git checkout`; and its pure parts
(patterns, debouncing) with a fake clock.

A test that a change did NOT restart a service cannot wait for an event that never comes, so it
ends with a sentinel: one more change that does restart the service. Changes are seen in order
(inotify keeps one queue), so every restart an earlier change caused is logged before the
sentinel's, and the test asserts on the restart lines up to the sentinel's.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from devmesh.watch.debounce import Bursts
from devmesh.watch.patterns import (
    DefaultIgnores,
    ServiceWatch,
    compile_entry,
    compile_ignore,
    match_parts,
    roots,
    split_glob,
)
from tests.conftest import Project, Running, wait_until

APP = "import time; time.sleep(1000)\n"
RESTART = re.compile(r"\| (\S+) (?:restarting|starting again): (.*)$", re.M)


def restarts(run: Running) -> list[tuple[str, str]]:
    """(service, why) of every watch restart logged so far."""
    return RESTART.findall(run.text())


def watching(run: Running, count: int = 1) -> None:
    """Wait until the watch worker said `count` times that it watches (a plan applied)."""
    wait_until(
        lambda: run.text().count("devmesh | watching files for") >= count,
        20,
        f"watch plan {count} to be in place",
    )


def sentinel(project: Project, run: Running, path: str, service: str = "api") -> list[str]:
    """Change `path` (which `service` watches); wait for its restart; the restart reasons of
    `service` logged before it."""
    project.write(path, f"sentinel {os.urandom(4).hex()}\n")
    why = f"{path} changed"
    wait_until(lambda: (service, why) in restarts(run), 20, f"the restart for {path}")
    reasons = [w for s, w in restarts(run) if s == service]
    return reasons[: reasons.index(why)]


def up_api(project: Project, keys: str, *dirs: str) -> tuple[Running, int]:
    """`devmesh up` with one service `api` (a sleeping app.py) and these `watch*` keys, once
    its files are watched, with `dirs` made first; the run and api's pid."""
    project.write("app.py", APP)
    for directory in dirs:
        (project.root / directory).mkdir(parents=True, exist_ok=True)
    service = '[services.api]\ncommand = "python3 app.py"\nstart_secs = 0.2\n'
    project.toml(service + textwrap.dedent(keys).lstrip())
    run = project.up()
    watching(run)
    return run, project.wait_state("api", "running")["pid"]


def new_pid(project: Project, name: str, old: int) -> int:
    """Wait until `name` runs with a pid other than `old`."""

    def changed() -> int | None:
        svc = project.service(name)
        return svc["pid"] if svc["state"] == "running" and svc["pid"] not in (None, old) else None

    pid: int = wait_until(changed, 20, f"{name} to run again with a new pid")
    return pid


# -- end to end -----------------------------------------------------------------------------


def test_an_edit_restarts_the_service_and_names_the_file(project: Project) -> None:
    project.write("src/app.py", "x = 1\n")
    project.write("src/notes.txt", "notes\n")
    run, pid = up_api(project, 'watch = ["src/**/*.py"]')
    project.write("src/notes.txt", "not a .py file\n")  # matches no entry
    project.write("src/app.py", APP + "# edited\n")
    new_pid(project, "api", pid)
    assert "api restarting: src/app.py changed\n" in run.text()
    assert sentinel(project, run, "src/pkg/mod.py") == ["src/app.py changed"]
    assert project.service("api")["restarts"] == 0  # a watch restart is not a crash


def test_a_directory_moved_in_is_looked_into(project: Project) -> None:
    # A rename raises one event, for the directory: its files must be looked for.
    outside = project.root.parent / "pkg"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "mod.py").write_text("x = 1\n")
    (outside / "README").write_text("not .py\n")
    run, pid = up_api(project, 'watch = ["src/**/*.py"]', "src")
    os.rename(outside, project.root / "src" / "pkg")
    new_pid(project, "api", pid)
    assert sentinel(project, run, "src/x.py") == ["src/pkg/sub/mod.py changed"]


def test_a_checkout_of_500_files_is_one_restart(project: Project) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=project.root,
            check=True,
            capture_output=True,
            timeout=60,
        )

    project.write("app.py", APP)
    project.toml(
        """
        [services.api]
        command = "python3 app.py"
        watch = ["src/", "app.py"]
        start_secs = 0.2
        """
    )
    for i in range(500):
        project.write(f"src/m{i // 50}/f{i:03}.py", f"x = {i}\n")
    git("init", "-q", "-b", "one")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    git("checkout", "-q", "-b", "two")
    for i in range(500):
        project.write(f"src/m{i // 50}/f{i:03}.py", f"x = {i + 1}\n")
    git("commit", "-q", "-am", "two")
    git("checkout", "-q", "one")
    run = project.up()
    watching(run)
    pid = project.wait_state("api", "running")["pid"]
    git("checkout", "-q", "two")  # rewrites 500 files (and much of .git, never watched)
    new_pid(project, "api", pid)
    before = sentinel(project, run, "app.py")
    assert before == ["src/m0/f000.py changed (and 499 more)"], before


def test_a_burst_with_short_pauses_is_one_restart(project: Project) -> None:
    # A formatter or a slow checkout: 500 files in 5 runs of 100 writes 2 ms apart, with 100 ms
    # pauses between the runs (the timing is the scenario: runs longer than the 300 ms that end
    # a burst, pauses shorter than that).
    run, pid = up_api(project, 'watch = ["src/"]', "src")
    written = []
    for run_of in range(5):
        for i in range(100):
            (project.root / "src" / f"f{run_of * 100 + i:03}.txt").write_text("x\n")
            written.append(time.monotonic())
            time.sleep(0.002)
        time.sleep(0.1)
    gap = max(b - a for a, b in itertools.pairwise(written))
    new_pid(project, "api", pid)
    reasons = sentinel(project, run, "src/zz.txt")
    assert reasons == ["src/f000.txt changed (and 499 more)"], (reasons, gap)


def test_changes_while_it_stops_for_a_change_are_one_restart(project: Project) -> None:
    # Takes 6 s to stop: every change during that time is seen by the next start anyway.
    project.write(
        "app.py",
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(6), sys.exit(0)))\n"
        "while True: time.sleep(1)\n",
    )
    project.toml(
        """
        [services.api]
        command = "exec python3 app.py"
        watch = ["src/"]
        start_secs = 0.2
        """
    )
    (project.root / "src").mkdir()
    run = project.up()
    watching(run)
    pid = project.wait_state("api", "running")["pid"]
    project.write("src/a.txt", "1\n")
    project.wait_state("api", "stopping")
    for i in range(3):  # three more bursts while it stops
        project.write(f"src/b{i}.txt", "2\n")
        wait_until(
            lambda i=i: f"src/b{i}.txt changed; not restarted (stopping)" in logs(project, "api"),
            10,
            "the change to be seen while stopping",
        )
    new_pid(project, "api", pid)
    assert sentinel(project, run, "src/c.txt") == ["src/a.txt changed"]


def logs(project: Project, name: str) -> str:
    """`devmesh logs NAME` (devmesh's own lines about it included)."""
    return project.cli("logs", name).stdout


def test_default_ignores(project: Project) -> None:
    run, _ = up_api(project, 'watch = ["./"]', "src")
    ignored = [
        ".git/index",
        "node_modules/pkg/index.js",
        "src/__pycache__/app.cpython-311.pyc",
        ".venv/lib/site.py",
        "src/.app.py.swp",
        "src/.app.py.swx",
        "src/4913",
        "src/app.py~",
        "src/.#app.py",
        "src/#app.py#",
        "src/app.pyc",
    ]
    for path in ignored:
        project.write(path, "x\n")
    (project.root / "src" / "4913").unlink()  # vim deletes its probe at once
    assert sentinel(project, run, "src/app.py") == []


def test_watch_ignore(project: Project) -> None:
    keys = """
        watch = ["src/"]
        watch_ignore = ["*.log", "src/generated/", "tmp"]
        """
    run, _ = up_api(project, keys, "src")
    for path in ("src/app.log", "src/deep/er/x.log", "src/generated/a_pb2.py", "src/x/tmp/y.py"):
        project.write(path, "x\n")
    assert sentinel(project, run, "src/generated.py") == []


def test_restart_dependents_transitively(project: Project) -> None:
    project.write("app.py", APP)
    keys = {
        "api": 'watch = ["app.py"]\nwatch_restart_dependents = true',
        "web": 'depends_on = ["api"]',
        "edge": 'depends_on = { web = "started" }',
        "solo": "",
        "db": 'watch = ["db/"]',  # without watch_restart_dependents
        "reader": 'depends_on = ["db"]',
    }
    project.toml(
        "".join(
            f'[services.{name}]\ncommand = "python3 app.py"\nstart_secs = 0.2\n{extra}\n\n'
            for name, extra in keys.items()
        )
    )
    project.write("db/schema.sql", "create table t;\n")
    run = project.up()
    watching(run)
    pids = {n: project.wait_state(n, "running")["pid"] for n in keys}
    project.write("app.py", APP + "# edited\n")
    for name in ("api", "web", "edge"):
        new_pid(project, name, pids[name])
    assert ("web", "depends on api, which restarts") in restarts(run)
    assert ("edge", "depends on api, which restarts") in restarts(run)
    # Without watch_restart_dependents only the service itself restarts.
    project.write("db/schema.sql", "create table u;\n")
    new_pid(project, "db", pids["db"])
    assert sentinel(project, run, "db/seed.sql", "db") == ["db/schema.sql changed"]
    assert project.service("solo")["pid"] == pids["solo"]
    assert project.service("reader")["pid"] == pids["reader"]
    assert [s for s, _ in restarts(run)].count("reader") == 0


def test_user_stopped_stays_stopped_and_an_exited_one_starts_again(project: Project) -> None:
    project.write("app.py", APP)
    project.toml(
        """
        [services.api]
        command = "python3 app.py"
        watch = ["app.py"]
        start_secs = 0.2

        [services.job]
        command = "python3 -c 'print(\\"job ran\\")'"
        restart = "no"
        watch = ["job.txt"]
        """
    )
    project.write("job.txt", "1\n")
    run = project.up()
    watching(run)
    project.wait_state("api", "running")
    project.wait_state("job", "exited")
    assert project.cli("stop", "api").returncode == 0
    project.wait_state("api", "stopped")
    project.write("app.py", APP + "# edited\n")
    wait_until(
        lambda: "app.py changed; not restarted (stopped by user)" in logs(project, "api"),
        20,
        "the change to be seen",
    )
    assert project.service("api")["state"] == "stopped"
    # An exited (or crashed) service the user did not stop runs again, as nodemon does.
    project.write("job.txt", "2\n")
    wait_until(lambda: ("job", "job.txt changed") in restarts(run), 20, "job to start again")
    wait_until(lambda: run.text().count("job     | job ran") == 2, 20, "job to run twice")


def test_a_missing_watch_path_is_a_config_error(project: Project) -> None:
    (project.root / "src").mkdir()
    project.toml(
        """
        [services.api]
        command = "sleep 100"
        watch = [
          "src/",
          "srcx/",
          "lib/**/*.py",
        ]
        """
    )
    for args in (("check",), ("up",)):
        result = project.cli(*args)
        assert result.returncode != 0
        out = result.stdout + result.stderr
        assert 'devmesh.toml:8: services.api.watch[1]: "srcx/" does not exist' in out, out
        assert 'devmesh.toml:9: services.api.watch[2]: "lib/**/*.py": the directory' in out
        assert "create it, or fix the path" in out
        assert "Traceback" not in out


def test_reload_follows_the_watch_set(project: Project) -> None:
    project.write("app.py", APP)
    (project.root / "a").mkdir()
    (project.root / "b").mkdir()
    config = """
        [services.api]
        command = "python3 app.py"
        watch = [{watch}]
        start_secs = 0.2
        """
    project.toml(config.format(watch='"a/"'))
    run = project.up()
    watching(run)
    pid = project.wait_state("api", "running")["pid"]
    project.toml(config.format(watch='"b/"'))
    watching(run, 2)
    pid = new_pid(project, "api", pid)  # a changed service restarts: its config changed
    project.write("a/x.txt", "not watched any more\n")
    assert sentinel(project, run, "b/x.txt") == []
    # A new service with watch is watched; a service without watch has no watch worker.
    project.toml(
        config.format(watch='"b/"')
        + """
        [services.web]
        command = "python3 app.py"
        watch = ["a/"]
        start_secs = 0.2
        """
    )
    watching(run, 3)
    assert "watching files for api, web" in run.text()
    project.wait_state("web", "running")
    assert sentinel(project, run, "a/y.txt", "web") == []
    project.toml(config.format(watch="").replace("watch = []\n", ""))

    def no_watch_worker() -> bool:
        return all(w["name"] != "watch" for w in project.status()["workers"])

    wait_until(no_watch_worker, 20, "the watch worker to stop")


def test_a_killed_watch_worker_comes_back_and_watches(project: Project) -> None:
    run, _ = up_api(project, 'watch = ["app.py"]')
    worker = next(w for w in project.status()["workers"] if w["name"] == "watch")
    os.kill(worker["pid"], signal.SIGKILL)
    watching(run, 2)  # the new worker has its plan in place
    again = next(w for w in project.status()["workers"] if w["name"] == "watch")
    assert again["pid"] != worker["pid"] and again["restarts"] == 1, again
    pid = project.wait_state("api", "running")["pid"]
    project.write("app.py", APP + "# edited\n")
    assert new_pid(project, "api", pid) != pid  # and it watches: the edit restarts api


def test_no_watch_no_worker(project: Project) -> None:
    project.toml(
        """
        [services.api]
        command = "sleep 100"
        """
    )
    project.up()
    assert [w["name"] for w in project.status()["workers"]] == ["control", "proxy-1", "health"]


def test_check_shows_watch(project: Project) -> None:
    (project.root / "src").mkdir()
    project.toml(
        """
        [services.api]
        command = "sleep 100"
        watch = ["src/**/*.py"]
        watch_ignore = ["*_pb2.py"]
        watch_restart_dependents = true

        [services.web]
        command = "sleep 100"
        """
    )
    out = project.cli("check").stdout
    rows = out.strip().splitlines()
    assert "WATCH" in rows[rows.index("") + 1]
    assert "src/**/*.py (not *_pb2.py; +dependents)" in out
    assert rows[-1].split()[:5] == ["web", "auto", "on-failure", "-", "-"]


# -- pure parts -----------------------------------------------------------------------------


def test_split_glob() -> None:
    assert split_glob("src/**/*.py") == ("src", ("**", "*.py"))
    assert split_glob("templates/") == ("templates", ())
    assert split_glob("./a/b[0-9]/c") == ("a", ("b[0-9]", "c"))
    assert split_glob("*.py") == ("", ("*.py",))
    assert split_glob("/abs/x/*") == ("/abs/x", ("*",))


def test_match_parts() -> None:
    assert match_parts(("**", "*.py"), ["app.py"])
    assert match_parts(("**", "*.py"), ["a", "b", "app.py"])
    assert not match_parts(("**", "*.py"), ["a", "app.txt"])
    assert match_parts(("*.py",), ["app.py"])
    assert not match_parts(("*.py",), ["a", "app.py"])  # `*` stays within one segment
    assert match_parts(("**",), [])
    assert match_parts(("a", "**", "b", "*.py"), ["a", "b", "x.py"])


def test_compile_entry_and_roots(tmp_path: Path) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "app.py").write_text("")
    cwd = str(tmp_path)
    src = compile_entry(cwd, "src")
    assert (src.base, src.rest, src.recursive) == (f"{cwd}/src", ("**",), True)
    app = compile_entry(cwd, "app.py")
    assert (app.base, app.rest, app.recursive) == (cwd, ("app.py",), False)
    flat = compile_entry(cwd, "src/*.py")
    assert (flat.base, flat.recursive) == (f"{cwd}/src", False)
    deep = compile_entry(cwd, "src/sub/**/*.py")
    recursive, alone = roots([src, app, flat, deep])
    assert recursive == [f"{cwd}/src"] and alone == [cwd]


def test_service_watch_match(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    cwd = str(tmp_path)
    defaults = DefaultIgnores.of(["node_modules", ".git"], [r"\.sw.$", "~$"])
    svc = ServiceWatch.of("api", cwd, ["src/**/*.py", "node_modules/lib/"], ["gen/", "*_pb2.py"])
    assert svc.match(f"{cwd}/src/a/b.py", defaults) == "src/a/b.py"
    assert svc.match(f"{cwd}/src/a/b.txt", defaults) is None
    assert svc.match(f"{cwd}/src/.b.py.swp", defaults) is None
    assert svc.match(f"{cwd}/src/gen/b.py", defaults) is None
    assert svc.match(f"{cwd}/src/x_pb2.py", defaults) is None
    assert svc.match(f"{cwd}/src/node_modules/x.py", defaults) is None
    # Named explicitly: a default-ignored directory above the entry's base does not count.
    assert svc.match(f"{cwd}/node_modules/lib/x.js", defaults) == "node_modules/lib/x.js"
    assert svc.match(f"{cwd}/srcx/a.py", defaults) is None
    assert compile_ignore("build/") == ("**", "build")
    assert compile_ignore("./src/gen") == ("src", "gen")


def test_bursts_debounce_with_a_fake_clock() -> None:
    bursts = Bursts(quiet=0.3, longest=5.0)
    bursts.add("api", ["a.py", "b.py"], now=10.0)
    bursts.add("api", ["b.py", "c.py"], now=10.2)
    assert bursts.due(10.4) == []
    assert bursts.next_due() == pytest.approx(10.5)
    (due,) = bursts.due(10.5)
    assert (due.service, due.first, due.count) == ("api", "a.py", 3)
    assert bursts.next_due() is None
    # Changes that never pause still restart it, every `longest` at most.
    for i in range(60):
        bursts.add("web", [f"f{i}"], now=20.0 + i * 0.1)
        if i * 0.1 < 5.0 - 1e-9:
            assert bursts.due(20.0 + i * 0.1) == []
    assert [d.service for d in bursts.due(25.0)] == ["web"]
    bursts.add("gone", ["x"], now=30.0)
    bursts.keep({"api"})
    assert bursts.due(99.0) == []
