"""Hot reload of the node-wide sections: each change is applied live and says so, or is shown
as pending (`node.config_pending`) with the reason; none is ignored without a word. The
sections that need peers ([discovery], [mesh] namespace, version_strict) are tested in the
lab (tests/test_reload_lab.py)."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.conftest import Project, free_port, wait_until

CHATTY = "import time\nwhile True:\n    print('x' * 100, flush=True)\n    time.sleep(0.05)\n"


def saved(project: Project, extra: str) -> None:
    """Save devmesh.toml with `extra` node settings over one chatty service."""
    project.toml(f'{extra}\n[services.talk]\ncommand = "python3 talk.py"\n')


def logged(project: Project, text: str, timeout: float = 10) -> None:
    """Wait until the running devmesh has printed `text`."""
    wait_until(lambda: text in project.running[0].text(), timeout, repr(text))


def worker_pid(project: Project, name: str) -> int:
    """The pid of one of the node's workers."""
    return int(next(w["pid"] for w in project.status()["workers"] if w["name"] == name))


def test_every_node_section_reload_says_what_it_did(project: Project) -> None:
    project.write("talk.py", CHATTY)
    port = project.proxy_port
    proxy = f"[proxy]\nport = {port}\n"
    saved(project, proxy)
    project.up()
    project.wait_state("talk", "running")
    before = worker_pid(project, "proxy-1")

    # [proxy] retries: the proxy workers are replaced with the new setting.
    saved(project, proxy + "retries = 0\n")
    logged(project, "[proxy] applied: retries 0, version_strict false")
    wait_until(lambda: worker_pid(project, "proxy-1") != before, 10, "a new proxy worker")
    saved(project, proxy + "retries = 0\nversion_strict = true\n")
    logged(project, "[proxy] applied: retries 0, version_strict true")

    # [log] level: devmesh's own debug lines (route table versions) appear at once.
    saved(project, proxy + 'retries = 0\nversion_strict = true\n[log]\nlevel = "debug"\n')
    logged(project, "[log] applied: level debug")
    assert project.cli("restart", "talk").returncode == 0
    logged(project, "route table v")

    # [log] max_size / backups: rotation follows the new limits.
    log_dir = project.root.parent / "state"
    saved(project, proxy + '[log]\nlevel = "debug"\nmax_size = "2KB"\nbackups = 1\n')
    logged(project, "[log] applied: rotate at 2048 bytes, keep 1")
    wait_until(lambda: list(log_dir.rglob("talk.log.1")), 10, "talk.log rotated at 2KB")
    assert not list(log_dir.rglob("talk.log.2"))  # one backup kept

    # [dashboard]: its port is bound at start: pending, said so, shown in status --json.
    saved(project, proxy + f"[dashboard]\nport = {free_port()}\n")
    logged(project, "config not applied: [dashboard]: applies when devmesh restarts")
    pending = project.status()["node"]["config_pending"]
    assert pending == ["[dashboard]: applies when devmesh restarts (its port is bound at start)"]
    saved(project, proxy)  # back as it runs: nothing pending any more
    wait_until(lambda: project.status()["node"]["config_pending"] == [], 10, "pending cleared")

    # [mesh] namespace: the node moves (discovery is off in the root namespace here).
    saved(project, proxy + '[mesh]\nnamespace = "elsewhere"\n')
    logged(project, "[mesh] namespace is now elsewhere")
    assert project.status()["node"]["namespace"] == "elsewhere"

    # [mesh] secret: not supported yet: a warning with file and line, never the secret itself.
    saved(project, proxy + '[mesh]\nnamespace = "elsewhere"\nsecret = "hunter2-hunter2"\n')
    logged(project, "mesh.secret: a team secret is not supported yet")
    text = project.running[0].text()
    assert re.search(r"warning: devmesh\.toml:\d+: mesh\.secret", text)
    assert "hunter2" not in text and "hunter2" not in project.cli("status", "--json").stdout


def test_namespace_and_log_level_given_on_the_command_line_win(
    new_project: Callable[[], Project],
) -> None:
    """`--namespace` and `--log-level` win over a reloaded config, and status says so."""
    project = new_project()
    project.write("talk.py", "import time\ntime.sleep(60)\n")
    saved(project, "")
    project.up("--namespace", "mine", "--log-level", "warning")
    saved(project, '[mesh]\nnamespace = "theirs"\n[log]\nlevel = "debug"\n')
    wait_until(lambda: len(project.status()["node"]["config_pending"]) == 2, 10, "pending")
    pending = project.status()["node"]["config_pending"]
    assert any("--namespace mine wins" in p for p in pending)
    assert any("--log-level/DEVMESH_LOG warning wins" in p for p in pending)
    assert project.status()["node"]["namespace"] == "mine"
