"""A real Vite dev server behind the proxy, in Debian's headless Chromium.

Vite >= 6.0.9 answers 403 to a Host it does not know (it accepts `localhost`, `*.localhost` and
IPs), so `Host: web` straight to Vite is refused. Through the proxy both `http://web:PORT/` and
`http://web.localhost:PORT/` must work, page and HMR WebSocket alike, because the proxy hands the
backend the canonical `web.localhost:PORT`. An edit to the app must reach both pages without a
full reload.

Needs Debian's `chromium`, the Python `playwright` package (its bundled driver; never
`playwright install`), Node and the fixture app's `node_modules` (`.ci/run` installs all four).
Screenshots go to `test-artifacts/`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser import ARTIFACTS, launch, need_chromium
from tests.conftest import REPO, Project, wait_until

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import Page, sync_playwright
except ImportError:
    pytest.skip(
        "the Python playwright package is not installed (pip install playwright; .ci/run does)",
        allow_module_level=True,
    )

FIXTURE = REPO / "tests" / "fixtures" / "vite-app"
SOURCES = ("package.json", "package-lock.json", "index.html", "main.js")
# `web` and `*.localhost` resolve to loopback.
RESOLVE = "--host-resolver-rules=MAP web 127.0.0.1, MAP *.localhost 127.0.0.1"
# Records every WebSocket the page opens, with its close code: Playwright does not report those.
WS_RECORDER = """
(() => {
  const log = (window.__wsLog = []);
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const entry = { url: String(url), opened: false, error: false, code: null, reason: null };
      log.push(entry);
      this.addEventListener("open", () => { entry.opened = true; });
      this.addEventListener("error", () => { entry.error = true; });
      this.addEventListener("close", (e) => { entry.code = e.code; entry.reason = e.reason; });
    }
  };
})();
"""


def node_major() -> int | None:
    """The major version of `node` on PATH, or None without one."""
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout
    return int(out.strip().lstrip("v").split(".")[0])


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture app's node_modules: the one `.ci/run` installed (npm ci), else one installed
    now into a temporary copy; skips without Chromium or Node, or when npm cannot install."""
    need_chromium()
    major = node_major()
    if major is None:
        pytest.skip("node is not installed (apt-get install nodejs npm; .ci/run does)")
    if major < 18:
        pytest.skip(f"node {major} is too old for the fixture's Vite 6 (needs 18+)")
    installed = FIXTURE / "node_modules"
    if (installed / ".bin" / "vite").exists():
        return installed
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed and tests/fixtures/vite-app has no node_modules")
    where = tmp_path_factory.mktemp("vite-app")
    for name in SOURCES:
        shutil.copy2(FIXTURE / name, where / name)
    try:
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npm ci of tests/fixtures/vite-app took over 180 s (no registry?)")
    if result.returncode != 0:
        pytest.skip(f"npm ci of tests/fixtures/vite-app failed (no registry?):\n{result.stderr}")
    return where / "node_modules"


def direct_get(port: int, host: str) -> tuple[int, str]:
    """One GET / on loopback `port` with the given Host header: status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


class Watched:
    """A page and everything it saw: responses, console, failed requests, WebSockets, loads."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self.console: list[str] = []
        self.network: list[str] = []
        self.loads = 0
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.on("response", lambda r: self.network.append(f"{r.status} {r.url}"))
        page.on("requestfailed", lambda r: self.network.append(f"failed {r.url}: {r.failure}"))
        page.on("load", lambda _: self._loaded())

    def _loaded(self) -> None:
        self.loads += 1

    def sockets(self) -> list[dict[str, Any]]:
        """The page's WebSockets as the recorder saw them."""
        try:
            result: list[dict[str, Any]] = self.page.evaluate("window.__wsLog || []")
        except PlaywrightError as e:
            return [{"error": str(e)}]
        return result

    def logged(self, text: str) -> bool:
        """True once a console message contains `text`."""
        return any(text in line for line in self.console)

    def report(self) -> str:
        """What the browser saw, for a failure message."""
        return "\n".join(
            [
                f"--- {self.url}",
                "responses / failed requests:",
                *(f"  {line}" for line in self.network),
                "console:",
                *(f"  {line}" for line in self.console),
                f"websockets: {json.dumps(self.sockets())}",
                f"loads: {self.loads}",
            ]
        )

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        """Poll `predicate` while letting Playwright deliver events; fail with the report."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s: {what}\n{self.report()}")
            self.page.wait_for_timeout(50)


def marker(page: Page) -> str:
    """The text the app's module wrote into the page."""
    return page.text_content("#marker", timeout=2000) or ""


def write_main(app: Path, text: str) -> None:
    """Rewrite the app's main.js with a new marker (what a developer's save does)."""
    main = app / "main.js"
    main.write_text(main.read_text().replace('"vite-fixture-v1"', json.dumps(text)))


def check_socket(seen: Watched, vite_port: int) -> None:
    """Vite's HMR socket is open through the proxy, on the page's own host and port. (When that
    fails, Vite's client falls back to a socket straight to 127.0.0.1:<vite port>, which would
    make HMR work without the proxy: that counts as a failure.)"""
    host = seen.url.split("/")[2]
    sockets = seen.sockets()
    live = [
        s
        for s in sockets
        if s["url"].startswith(f"ws://{host}/") and s["opened"] and s["code"] is None
    ]
    assert live, f"no open HMR socket to ws://{host}/\n{seen.report()}"
    direct = [s for s in sockets if f":{vite_port}/" in s["url"]]
    assert not direct, f"Vite fell back to a direct socket\n{seen.report()}"


def check_in_browser(app: Path, port: int, vite_port: int) -> None:
    """Both names in Chromium: page, module, HMR socket through the proxy, an edit without a
    reload; a screenshot of each page into test-artifacts/."""
    urls = [f"http://web:{port}/", f"http://web.localhost:{port}/"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch(pw, RESOLVE)
        try:
            context = browser.new_context(viewport={"width": 800, "height": 500})
            context.add_init_script(WS_RECORDER)
            pages: list[Watched] = []
            try:
                for url in urls:
                    seen = Watched(context.new_page(), url)
                    pages.append(seen)
                    try:
                        response = seen.page.goto(url, wait_until="load", timeout=15_000)
                    except PlaywrightError as e:
                        raise AssertionError(f"{url}: {e}\n{seen.report()}") from None
                    assert response is not None, seen.report()
                    if response.status != 200:
                        raise AssertionError(
                            f"{url} answered {response.status}: {response.text()[:500]}\n"
                            + seen.report()
                        )
                    seen.wait(lambda p=seen.page: marker(p) == "vite-fixture-v1", 10, "the module")
                    seen.wait(lambda s=seen: s.logged("[vite] connected."), 10, "HMR to connect")
                    check_socket(seen, vite_port)
                    seen.page.evaluate("window.__nonce = 'kept-' + location.host")

                write_main(app, "vite-fixture-v2")
                for seen in pages:
                    seen.wait(lambda p=seen.page: marker(p) == "vite-fixture-v2", 15, "the edit")
                    seen.wait(lambda s=seen: s.logged("[vite] hot updated: /main.js"), 5, "HMR")
                    host = seen.url.split("/")[2]
                    # Not reloaded: the page's state survived and it loaded only once.
                    assert seen.page.evaluate("window.__nonce") == f"kept-{host}", seen.report()
                    assert seen.loads == 1, seen.report()
                    check_socket(seen, vite_port)
            finally:
                for seen in pages:
                    name = seen.url.split("/")[2].split(":")[0]
                    with contextlib.suppress(PlaywrightError):
                        seen.page.screenshot(path=str(ARTIFACTS / f"proxy-browser-{name}.png"))
                context.close()
        finally:
            browser.close()


@pytest.mark.timeout(90)
def test_vite_page_and_hmr_through_both_names(project: Project, node_modules: Path) -> None:
    app = project.root / "app"
    app.mkdir()
    for name in SOURCES:
        shutil.copy2(FIXTURE / name, app / name)
    shutil.copytree(
        node_modules, app / "node_modules", symlinks=True, ignore=shutil.ignore_patterns(".vite")
    )
    vite = app / "node_modules" / ".bin" / "vite"
    port = project.proxy_port
    project.toml(
        f"""
        [services.web]
        command = "{vite} --port $PORT --strictPort --host 127.0.0.1"
        cwd = "app"
        """
    )
    run = project.up()
    vite_port = project.wait_state("web", "running")["port"]

    def vite_answers() -> bool:
        try:
            return direct_get(vite_port, f"127.0.0.1:{vite_port}")[0] == 200
        except OSError:
            return False

    wait_until(vite_answers, 20, f"Vite to answer on 127.0.0.1:{vite_port}", step=0.1)
    # Straight to Vite, the bare service name is refused: Vite's own DNS-rebinding guard.
    status, body = direct_get(vite_port, "web")
    assert status == 403 and '("web") is not allowed' in body, (status, body)
    # The name the proxy hands it instead is accepted.
    assert direct_get(vite_port, f"web.localhost:{port}")[0] == 200

    last: list[object] = []

    def routed() -> bool:
        try:
            status, body = direct_get(port, f"web:{port}")
        except OSError as e:
            last[:] = [e]
            return False
        last[:] = [status, body[:300]]
        return status not in (404, 502, 503)

    try:
        wait_until(routed, 15, "the proxy to route web", step=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer for Host web:{port}: {last}") from None

    try:
        check_in_browser(app, port, vite_port)
    except AssertionError as e:
        tail = "\n".join(run.text().splitlines()[-40:])
        raise AssertionError(f"{e}\n--- devmesh up output (last 40 lines):\n{tail}") from None
    assert os.path.getsize(ARTIFACTS / "proxy-browser-web.png") > 0
