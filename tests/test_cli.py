"""The CLI's promises: config errors are one line with file, line and key; the demos run."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from tests.conftest import PY, Project, wait_until

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


# ---------------------------------------------------------------------- -f: file, or follow


def test_global_file_option_and_logs_follow(project: Project) -> None:
    """`devmesh -f FILE COMMAND` works from anywhere; on `logs`, -f is --follow, and a file
    given to `logs -f` is explained instead of being an unknown service."""
    project.toml(
        """
        [services.web]
        command = "echo hello-from-web; sleep 1000"
        port = 5555
        """
    )
    run = project.up()
    project.wait_state("web", "running")
    elsewhere = project.root.parent  # no devmesh.toml here or above

    def logged() -> bool:
        return (
            "hello-from-web" in project.cli("-f", "proj/devmesh.toml", "logs", cwd=elsewhere).stdout
        )

    wait_until(logged, 10, "the line in `devmesh -f FILE logs`")
    assert "hello-from-web" in project.cli("logs", "--file", "proj", cwd=elsewhere).stdout
    # The same file before and after the command is fine; two different ones are not.
    assert project.cli("-f", "proj", "check", "-f", "proj", cwd=elsewhere).returncode == 0
    two = project.cli("-f", "proj", "check", "-f", "other", cwd=elsewhere)
    assert two.returncode == 2 and "two config files given" in two.stderr

    # Outside any project, and inside one (where the file is not one of its services).
    for cwd, path in ((elsewhere, "proj/devmesh.toml"), (project.root, "../proj/devmesh.toml")):
        wrong = project.cli("logs", "-f", path, cwd=cwd)
        assert wrong.returncode == 2, wrong
        assert "unknown service" not in wrong.stderr and "Traceback" not in wrong.stderr
        assert "logs -f" in wrong.stderr and "devmesh -f " in wrong.stderr

    with subprocess.Popen(
        [PY, "-m", "devmesh", "-f", "proj/devmesh.toml", "logs", "-f", "web"],
        cwd=elsewhere,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as follow:
        try:
            assert follow.stdout is not None
            # Bounded: the lines are on disk already (and the pytest timeout).
            head = [follow.stdout.readline() for _ in range(2)]
            assert any("hello-from-web" in line for line in head), head
            assert follow.poll() is None  # still following
        finally:
            follow.terminate()
            follow.wait(10)
    assert run.stop() == 0


def test_shell_completion_of_commands_and_service_names(project: Project) -> None:
    project.toml(
        """
        [services.web]
        command = "sleep 1000"
        port = 5555

        [services.worker]
        command = "sleep 1000"
        port = 5556
        """
    )

    def complete(words: str) -> list[str]:
        result = project.cli(
            env={
                "_DEVMESH_COMPLETE": "complete_bash",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
            },
            cwd=project.root.parent if "-f" in words else None,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("devmesh lo") == ["logs"]
    assert complete("devmesh logs w") == ["web", "worker"]
    assert complete("devmesh restart wo") == ["worker"]
    assert complete("devmesh -f proj stop ") == ["web", "worker"]
    assert complete("devmesh stop -f proj/devmesh.toml w") == ["web", "worker"]
    # `--show-completion` names the shell it runs in (shellingham reads the parent processes):
    # from bash, as a user types it, whatever runs the tests (no shell at all under setsid).
    shown = subprocess.run(
        # Not the last command of `bash -c` (bash would exec it, and be gone as its parent).
        ["bash", "-c", f"{shlex.quote(PY)} -m devmesh --show-completion; exit $?"],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert shown.returncode == 0, shown.stderr
    assert "_DEVMESH_COMPLETE=complete_bash" in shown.stdout


def test_skipped_dotenv_lines_are_warned_at_check_up_and_reload(project: Project) -> None:
    """A .env line honcho skips does not stop devmesh: the rest is given to the service, and
    `check`, `up` and a reload say which line was skipped."""
    project.write(".env", 'GREETING="hi \\"there\\""\n1BAD=x\n')
    project.toml(
        """
        [services.web]
        command = "echo \\"greeting=$GREETING\\"; sleep 1000"
        port = 5555
        """
    )
    check = project.cli("check")
    assert check.returncode == 0, check.stderr
    assert 'devmesh: warning: .env:2: "1BAD" is not a variable name' in check.stderr
    run = project.up()
    wait_until(lambda: 'greeting=hi "there"' in run.text(), 10, "the service's line")
    assert 'warning: .env:2: "1BAD" is not a variable name' in run.text()
    project.write(".env", 'GREETING="hi"\n\nBAD-NAME=x\n')
    wait_until(lambda: "warning: .env:3:" in run.text(), 10, "the reload's warning")
    assert run.stop() == 0
