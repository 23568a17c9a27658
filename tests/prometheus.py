"""A real Prometheus for the tests: Debian's `prometheus` package, unpacked (not installed) into a
cache directory, a server that scrapes loopback targets and answers PromQL, and the queries of the
Grafana dashboard in contrib/grafana/ to ask it.

`python3 tests/prometheus.py` fetches it (what .ci/run does, before the test dependencies are
installed: only the standard library is imported here); the tests fetch it on first use.
Installing the package would run its postinst (a system user, a service): `apt-get download` and
`dpkg-deb -x` only unpack its files.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

PACKAGE = "prometheus"


def cache_dir() -> Path:
    """Where the package is unpacked: `$XDG_CACHE_HOME/devmesh-tests/prometheus`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "devmesh-tests" / PACKAGE


def _binaries(root: Path) -> tuple[Path, Path]:
    return root / "usr" / "bin" / "prometheus", root / "usr" / "bin" / "promtool"


def _cached() -> tuple[Path, Path] | None:
    paths = _binaries(cache_dir())
    return paths if all(os.access(p, os.X_OK) for p in paths) else None


def _download(into: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "download", "-qq", PACKAGE],
        cwd=into,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def fetch() -> str | None:
    """Download and unpack the package into `cache_dir()` unless it is there; why not, or None."""
    if _cached():
        return None
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is not available to fetch Debian's {PACKAGE} package"
    final = cache_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    # Unpacked next to its final place, then renamed: a half-done fetch is never taken as done.
    with tempfile.TemporaryDirectory(prefix=f"{PACKAGE}.", dir=final.parent) as tmp:
        work = Path(tmp)
        result = _download(work)
        if result.returncode != 0 and os.geteuid() == 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
            result = _download(work)
        debs = list(work.glob(f"{PACKAGE}_*.deb"))
        if result.returncode != 0 or not debs:
            return f"apt-get download {PACKAGE} failed: {result.stderr.strip()[-500:]}"
        root = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True, timeout=300)
        if not all(os.access(p, os.X_OK) for p in _binaries(root)):
            return f"{debs[0].name} has no usr/bin/prometheus and usr/bin/promtool"
        shutil.rmtree(final, ignore_errors=True)
        try:
            root.rename(final)
        except OSError:
            if not _cached():  # else another run unpacked it meanwhile
                raise
    return None


@functools.cache
def _unavailable() -> str | None:
    # Once per test run: a fetch that failed would fail again for every test.
    return fetch()


def prometheus_binaries() -> tuple[Path, Path] | None:
    """(prometheus, promtool), fetched on first use; None when they cannot be had here (the
    reason is `fetch()`'s)."""
    return None if _unavailable() else _cached()


def require_prometheus() -> tuple[Path, Path]:
    """(prometheus, promtool), or skip the test saying why; under CI, where .ci/run fetched them,
    fail it instead."""
    import pytest

    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Prometheus (.ci/run fetches it): {reason}")
        pytest.skip(reason)
    binaries = _cached()
    assert binaries
    return binaries


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on `text` (exit 0: clean; its findings are on stderr)."""
    binaries = require_prometheus()
    return subprocess.run(
        [str(binaries[1]), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


class PrometheusError(Exception):
    """The Prometheus API answered with an error."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """A Prometheus on a free loopback port scraping `targets` ("host:port", 127.0.0.1 only),
    with its own config and storage in a temporary directory; a context manager."""

    def __init__(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        metrics_path: str = "/metrics",
        job: str = "test",
    ) -> None:
        self.scrape_targets = targets
        self.scrape_interval = scrape_interval
        self.metrics_path = metrics_path
        self.job = job
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """What Prometheus printed so far."""
        assert self._tmp is not None
        return (Path(self._tmp.name) / "prometheus.log").read_text(errors="replace")

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        """Start it and wait until `/-/ready` answers 200 (a port taken meanwhile: another)."""
        binaries = require_prometheus()
        self._tmp = tempfile.TemporaryDirectory(prefix="devmesh-prometheus-")
        tmp = Path(self._tmp.name)
        config = {
            "global": {"scrape_interval": self.scrape_interval, "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.scrape_targets}],
                }
            ],
        }
        # JSON is YAML: no YAML library needed.
        (tmp / "prometheus.yml").write_text(json.dumps(config, indent=2))
        for _attempt in range(3):
            self.port = _free_port()
            with open(tmp / "prometheus.log", "wb") as log:
                self.proc = subprocess.Popen(
                    [
                        str(binaries[0]),
                        f"--config.file={tmp / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready(timeout):
                return
            if "address already in use" not in self.log:
                break
        log_text = self.log
        self.stop()
        raise RuntimeError(f"Prometheus did not become ready in {timeout}s:\n{log_text[-3000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10) -> None:
        """Stop it by its pid (TERM, then KILL after `timeout`) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET `/api/v1/<path>`; the whole JSON answer, errors (4xx with a JSON body) included."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        data: dict[str, Any] = json.loads(body)
        return data

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or `[scalar]`) `promql` evaluates to now."""
        answer = self.api("query", query=promql)
        if answer.get("status") != "success":
            raise PrometheusError(f"{promql}: {answer.get('errorType')}: {answer.get('error')}")
        data = answer["data"]
        result: list[dict[str, Any]] = data["result"] if data["resultType"] != "scalar" else [data]
        return result

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], Any] = bool,
        timeout: float = 30,
    ) -> list[dict[str, Any]]:
        """Poll `promql` until `predicate(result)` is truthy; the result. On timeout the
        AssertionError shows the last result and the targets' scrape errors."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                scrapes = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {promql}: last result {result}, "
                    f"targets {scrapes}"
                )
            time.sleep(0.2)

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health, last error and labels."""
        answer = self.api("targets", state="active")
        targets: list[dict[str, Any]] = answer["data"]["activeTargets"]
        return targets


def value(sample: dict[str, Any]) -> float:
    """The number of one instant-vector sample."""
    return float(sample["value"][1])


# ---- the Grafana dashboard's queries

DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "devmesh.json"
# Grafana's own variables, and what a query gets for them (an interval; any regex for ours).
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")


def dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    """contrib/grafana/devmesh.json (or another dashboard file)."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' panels included."""
    found = []
    for panel in dash["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], t["expr"]) for t in inner.get("targets", [])]
    return found


def resolve(expr: str, variables: set[str]) -> str:
    """`expr` as Grafana sends it: builtin intervals filled in, our variables matching anything."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        assert name in variables, f"${name} is not a variable of the dashboard"
        return ".*"

    return VARIABLE.sub(fill, expr)


if __name__ == "__main__":
    problem = fetch()
    if problem:
        sys.exit(problem)
    print(f"prometheus: {' '.join(map(str, _cached() or ()))}")
