"""Hot reload of the sections that need peers, between real nodes in lab network namespaces:
`[discovery]` is applied by a new discovery worker that peers do not notice, a new `[mesh]
namespace` leaves the old one with a goodbye, and `[proxy] version_strict` changes which copies
are used. Skipped, with the reason, where namespaces cannot be made."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Project, wait_until
from tests.lab import Lab, lab_unavailable
from tests.test_discovery_lab import INTERVAL, SERVICE, get, node, peers_json, sees

pytestmark = pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable()))


def discovery_pid(proj: Project) -> int:
    """The pid of the node's discovery worker."""
    workers = proj.status()["workers"]
    return int(next(w["pid"] for w in workers if w["name"] == "discovery"))


def resave(proj: Project, old: str, new: str) -> None:
    """Save the node's devmesh.toml with `old` replaced by `new`."""
    path = proj.root / "devmesh.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_discovery_namespace_and_version_strict_reload(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    a = node(new_project, lab, 1, "api", version="2.0", body="api of A")
    declared = SERVICE.format(name="api", version="1.0")
    b = node(new_project, lab, 2, "web", extra=declared, only=("web",))
    wait_until(lambda: sees(b, "api", 1) and sees(a, "web", 1), 10, "the nodes see each other")

    # [discovery] interval: a new worker with it; A notices neither a leave nor a join.
    before = discovery_pid(b)
    resave(b, f'interval = "{int(INTERVAL * 1000)}ms"', 'interval = "400ms"')
    wait_until(lambda: peers_json(b)["discovery"]["interval"] == 0.4, 10, "the new interval")
    wait_until(lambda: discovery_pid(b) != before, 10, "a new discovery worker")
    assert "[discovery] applied: udp :35555" in b.running[0].text()
    wait_until(lambda: sees(a, "web", 1) and sees(b, "api", 1), 10, "still seen both ways")
    assert "peer left" not in a.running[0].text()

    # [proxy] version_strict: A's api 2.0 is used with a warning, then refused.
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 2)
    assert report["bodies"] == {"api of A": 2}
    assert "2.0" in report["headers"]["x-devmesh-version-warning"]
    resave(b, "[proxy]\n", "[proxy]\nversion_strict = true\n")
    wait_until(lambda: "version_strict true" in b.running[0].text(), 10, "version_strict applied")
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 1)
    assert next(iter(report["other"])).startswith("503")

    # [mesh] namespace: B leaves "team" with a goodbye (well before an expiry) for "solo".
    resave(b, 'namespace = "team"', 'namespace = "solo"')
    wait_until(lambda: not sees(a, "web", 1), 2 * INTERVAL + 1, "A sees B leave at once")
    assert "peer left" in a.running[0].text()
    assert b.status()["node"]["namespace"] == "solo" and peers_json(b)["peers"] == []
    assert peers_json(b)["namespace"] == "solo"
