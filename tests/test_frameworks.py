"""Dev servers that ignore $PORT get --port (and --host, --strictPort) added, as portless does;
commands that read $PORT, that the user gave a port, or that are not safe to extend are left
alone. The end-to-end test starts the fixture's real Vite as a bare `vite` through the proxy."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from devmesh.supervisor.frameworks import add_port_flags
from tests.conftest import Project, http_get, wait_until

REPO = Path(__file__).resolve().parent.parent
VITE_APP = REPO / "tests" / "fixtures" / "vite-app"
VITE = "--port 5300 --strictPort --host 127.0.0.1"

# (command, what is appended, or None: left as it is)
CASES: list[tuple[str, str | None]] = [
    ("vite", VITE),
    ("vite dev", VITE),
    ("vite serve --open", VITE),
    ("vite preview", VITE),
    ("vite ./site", VITE),  # a root directory
    ("vite --mode staging", VITE),  # --mode takes a value: no subcommand
    ("node_modules/.bin/vite", VITE),
    ("NODE_ENV=development vite", VITE),
    ("exec vite", VITE),
    ("vite --host 0.0.0.0", "--port 5300 --strictPort"),
    ("vite --host=0.0.0.0", "--port 5300 --strictPort"),
    ("npx vite", VITE),
    ("npx --yes vite", VITE),
    ("npx -p vite vite", VITE),
    ("pnpm exec vite", VITE),
    ("pnpm dlx vite", VITE),
    ("pnpm vite", VITE),
    ("yarn vite", VITE),
    ("yarn exec vite dev", VITE),
    ("bunx vite", VITE),
    ("pnpx vite", VITE),
    ("astro dev", "--port 5300 --host 127.0.0.1"),
    ("npx astro preview", "--port 5300 --host 127.0.0.1"),
    ("ng serve", "--port 5300 --host 127.0.0.1"),
    ("ng s", "--port 5300 --host 127.0.0.1"),
    ("react-router dev", VITE),
    ("rsbuild", "--port 5300 --host 127.0.0.1"),
    ("rsbuild dev", "--port 5300 --host 127.0.0.1"),
    ("expo start", "--port 5300 --host localhost"),
    ("expo start --lan", "--port 5300"),
    ("react-native start", "--port 5300 --host 127.0.0.1"),
    ("uvicorn app:app --reload", "--port 5300"),
    ("uvicorn --app-dir src app:app", "--port 5300"),
    ("python -m uvicorn app:app", "--port 5300"),
    ("python3.12 -m flask run", "--port 5300"),
    ("flask --app hello run --debug", "--port 5300"),
    # Not a server.
    ("vite build", None),
    ("vite optimize", None),
    ("astro build", None),
    ("astro", None),
    ("ng test", None),
    ("ng", None),
    ("flask routes", None),
    ("uvicorn", None),
    ("astro --verbose dev", None),  # a flag whose value we cannot tell: left alone
    # The user chose the port.
    ("vite --port 3000", None),
    ("vite --port=3000", None),
    ("ng serve --port 4300", None),
    ("flask run -p 5001", None),
    ("flask run -p5001", None),
    ("expo start -p 19000", None),
    ("vite --port $PORT", None),
    # Read $PORT already, or not a framework.
    ("next dev", None),
    ("nuxi dev", None),
    ("react-scripts start", None),
    ("gunicorn app:app", None),
    ("python app.py", None),
    ("npm start", None),
    ("npx next dev", None),
    ("pnpm install", None),
    # Not safe to append to.
    ("vite && echo done", None),
    ("vite; echo done", None),
    ("vite | tee log", None),
    ("vite > log", None),
    ("vite # the dev server", None),
    ("vite $VITE_FLAGS", None),
    ("vite -- --x", None),
    ("vite 'unclosed", None),
    ("sh -c vite", None),
]


@pytest.mark.parametrize(("command", "appended"), CASES)
def test_port_flags(command: str, appended: str | None, tmp_path: Path) -> None:
    added = add_port_flags(command, "5300", tmp_path)
    if appended is None:
        assert added is None
        return
    assert added is not None
    assert added.command == f"{command} {appended}"
    assert added.flags == tuple(appended.split())
    assert added.note == f"{added.program} ignores $PORT; adding {appended}"


@pytest.mark.parametrize(
    ("scripts", "command", "expected"),
    [
        ({"dev": "vite"}, "npm run dev", f"npm run dev -- {VITE}"),
        ({"dev": "vite"}, "npm run dev -- --open", f"npm run dev -- --open {VITE}"),
        ({"dev": "vite"}, "pnpm run dev", f"pnpm run dev {VITE}"),
        ({"dev": "vite --mode x"}, "yarn run dev", f"yarn run dev {VITE}"),
        ({"dev": "astro dev"}, "bun run dev", "bun run dev --port 5300 --host 127.0.0.1"),
        ({"dev": "vite --port 3000"}, "npm run dev", None),
        ({"dev": "vite"}, "npm run dev -- --port 3000", None),
        ({"dev": "vite build && vite preview"}, "npm run dev", None),
        ({"dev": "next dev"}, "npm run dev", None),
        ({"dev": "vite"}, "npm run other", None),
        ({"build": "vite build"}, "npm run build", None),
    ],
)
def test_port_flags_through_a_package_script(
    scripts: dict[str, str], command: str, expected: str | None, tmp_path: Path
) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"scripts": scripts}))
    added = add_port_flags(command, "5300", tmp_path)
    assert (added.command if added else None) == expected


def test_no_package_json_or_a_broken_one(tmp_path: Path) -> None:
    assert add_port_flags("npm run dev", "5300", tmp_path) is None
    (tmp_path / "package.json").write_text("{not json")
    assert add_port_flags("npm run dev", "5300", tmp_path) is None
    (tmp_path / "package.json").write_text("[]")
    assert add_port_flags("npm run dev", "5300", tmp_path) is None


@pytest.fixture
def vite_app(project: Project) -> Path:
    """The fixture Vite app in the project, with node_modules installed by .ci/run."""
    installed = VITE_APP / "node_modules"
    if not (installed / ".bin" / "vite").exists() or shutil.which("node") is None:
        pytest.skip("tests/fixtures/vite-app/node_modules is not installed (.ci/run does it)")
    app = project.root / "app"
    app.mkdir()
    for name in ("index.html", "main.js", "package.json"):
        shutil.copy2(VITE_APP / name, app / name)
    # A copy: Vite writes its cache into node_modules/.vite.
    shutil.copytree(
        installed, app / "node_modules", symlinks=True, ignore=shutil.ignore_patterns(".vite")
    )
    return app


@pytest.mark.timeout(90)
def test_bare_vite_listens_on_its_port_and_is_served_through_the_proxy(
    project: Project, vite_app: Path
) -> None:
    """`command = "vite"` (which ignores $PORT and would take 5173) is reached on the port
    devmesh assigned, through the proxy; `check` and the log say what was added."""
    bin_dir = vite_app / "node_modules" / ".bin"
    project.toml(
        f"""
        [services.web]
        command = "vite"
        cwd = "app"
        env = {{ PATH = "{bin_dir}:{os.environ["PATH"]}" }}
        """
    )
    check = project.cli("check")
    assert "web: vite ignores $PORT; adding --port $PORT --strictPort --host 127.0.0.1" in (
        check.stdout
    ), check.stdout
    run = project.up()
    port = project.wait_state("web", "running")["port"]
    assert port != 5173

    def served() -> bool:
        try:
            status, body, _ = http_get(project.proxy_port, f"web.localhost:{project.proxy_port}")
        except OSError:
            return False
        return status == 200 and b"/main.js" in body

    wait_until(served, 30, "the Vite page through the proxy", step=0.2)
    status, _, _ = http_get(port, f"127.0.0.1:{port}")
    assert status == 200  # Vite itself, on the assigned port
    note = f"web: vite ignores $PORT; adding --port {port} --strictPort --host 127.0.0.1"
    assert run.text().count(note) == 1, run.text()
    assert run.stop() == 0
