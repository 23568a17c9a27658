"""The CLI's promises: config errors are one line with file, line and key; the demos run."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import Project, wait_until

REPO = Path(__file__).resolve().parent.parent


def test_config_error_names_file_line_key_and_starts_nothing(project: Project) -> None:
    project.write(
        "devmesh.toml",
        """
        [services.api]
        command = "sleep 1000"
        port = 70000

        [services.web]
        comand = "sleep 1000"
        """,
    )
    for args in (("up",), ("check",), ("up", "--detach")):
        result = project.cli(*args)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert "devmesh.toml:3: services.api.port: 70000 is not a port" in lines[0]
        assert any("devmesh.toml:6: services.web.comand" in ln and "command" in ln for ln in lines)
    assert project.try_status() is None


def test_toml_syntax_error_is_located(project: Project) -> None:
    project.write(
        "devmesh.toml",
        """
        [services.api]
        command = "sleep 1000
        """,
    )
    result = project.cli("check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("devmesh: devmesh.toml:2:")


def test_no_project_is_explained(project: Project) -> None:
    result = project.cli("status")
    assert result.returncode == 2
    assert "no devmesh.toml or Procfile" in result.stderr and "Traceback" not in result.stderr


def test_check_prints_resolved_services(project: Project) -> None:
    shutil.copytree(REPO / "procfiles" / "procfile-demo", project.root, dirs_exist_ok=True)
    result = project.cli("check")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    assert rows["web"][1] == "5300" and rows["greeter"][1] == "5400"  # PORT=5300 in .env


def test_procfile_demo_runs_with_honcho_ports(project: Project) -> None:
    shutil.copytree(REPO / "procfiles" / "procfile-demo", project.root, dirs_exist_ok=True)
    run = project.up()
    web = project.wait_state("web", "running")
    greeter = project.wait_state("greeter", "running")
    assert (web["port"], greeter["port"]) == (5300, 5400)
    wait_until(lambda: "hello from .env (PORT=5400)" in run.text(), 10, "the greeter's line")
    assert run.stop() == 0


def test_toml_demo_serves_http(project: Project) -> None:
    import urllib.request

    shutil.copytree(REPO / "procfiles" / "demo", project.root, dirs_exist_ok=True)
    run = project.up()
    project.wait_state("api", "running")
    project.wait_state("web", "running")

    def page() -> str | None:
        try:
            with urllib.request.urlopen("http://127.0.0.1:5102/", timeout=2) as resp:
                body: str = resp.read().decode()
                return body
        except OSError:
            return None

    body = wait_until(page, 10, "the web page")
    assert "hello from api" in body
    assert run.stop() == 0
