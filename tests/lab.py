"""A LAN of Linux network namespaces on one bridge, for the tests of discovery and peers.

Host i is the namespace `<prefix>-h<i>` with `eth0` = 10.<net>.0.(10+i)/24, an IPv6 link-local
address and a ULA fd99::(10+i)/64, lo up and a default route through eth0 (so 255.255.255.255
is routable). The bridge lives in its own namespace: nothing is attached to the root namespace
or to a real interface, so every packet stays in the lab. Tests never address lab IPs from the
root namespace (it routes to the real network); they run their processes inside the hosts
(`Lab.exec`) and drive devmesh through its unix socket, which the filesystem shares.
`cut(i)` / `heal(i)` partition a host by taking its bridge port down and up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time


def lab_unavailable() -> str | None:
    """Why a lab cannot be built here (None if it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


class Lab:
    """N hosts on one bridge; `up()` builds it, `down()` removes every namespace it made."""

    def __init__(self, n: int = 3, prefix: str | None = None) -> None:
        self.n = n
        self.prefix = prefix or f"dmt{os.getpid() % 100000}"  # <= 10 chars: veth names
        self.net = 100 + os.getpid() % 100  # 10.<net>.0.0/24, one per test process
        self.bridge = f"{self.prefix}-br"

    def host(self, i: int) -> str:
        """The namespace of host i (1-based)."""
        return f"{self.prefix}-h{i}"

    def ip(self, i: int) -> str:
        """Host i's IPv4 address (to be used only from inside the lab)."""
        return f"10.{self.net}.0.{10 + i}"

    def exec(self, i: int, argv: list[str]) -> list[str]:
        """`argv` run inside host i."""
        return ["ip", "netns", "exec", self.host(i), *argv]

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)

    def up(self) -> Lab:
        """Create the bridge and the hosts."""
        self.down()
        br = self.bridge
        self._ip("netns", "add", br)
        self._ip("-n", br, "link", "set", "lo", "up")
        self._ip(
            "-n", br, "link", "add", "br0", "type", "bridge", "stp_state", "0",
            "forward_delay", "0", "mcast_snooping", "0",
        )  # fmt: skip
        self._sysctl(br, "net.ipv6.conf.all.disable_ipv6=1")
        self._ip("-n", br, "link", "set", "br0", "up")
        for i in range(1, self.n + 1):
            h = self.host(i)
            self._ip("netns", "add", h)
            self._sysctl(h, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            self._ip("link", "add", f"{self.prefix}-v{i}", "type", "veth", "peer", "name",
                     f"{self.prefix}-p{i}")  # fmt: skip
            self._ip("link", "set", f"{self.prefix}-v{i}", "netns", h, "name", "eth0")
            self._ip("link", "set", f"{self.prefix}-p{i}", "netns", br, "name", f"p{i}")
            self._ip("-n", br, "link", "set", f"p{i}", "master", "br0", "up")
            self._ip("-n", h, "link", "set", "lo", "up")
            self._ip("-n", h, "addr", "add", f"{self.ip(i)}/24", "brd", "+", "dev", "eth0")
            self._ip("-n", h, "addr", "add", f"fd99::{10 + i}/64", "dev", "eth0", "nodad")
            self._ip("-n", h, "link", "set", "eth0", "up")
            self._ip("-n", h, "route", "add", "default", "dev", "eth0")
        for i in range(1, self.n + 1):
            self._wait_link_local(i)
        return self

    def _sysctl(self, ns: str, *settings: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw", *settings],
            check=True,
            capture_output=True,
            timeout=20,
        )

    def _wait_link_local(self, i: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["ip", "-n", self.host(i), "-6", "addr", "show", "dev", "eth0"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            if "fe80" in out and "tentative" not in out:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.host(i)}: no usable IPv6 link-local address after 10 s")

    def cut(self, i: int) -> None:
        """Partition host i (its bridge port goes down)."""
        self._ip("-n", self.bridge, "link", "set", f"p{i}", "down")

    def heal(self, i: int) -> None:
        """Reconnect host i."""
        self._ip("-n", self.bridge, "link", "set", f"p{i}", "up")

    def down(self) -> None:
        """Delete every namespace of this lab (idempotent)."""
        out = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
        ).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if name == self.bridge or name.startswith(f"{self.prefix}-h"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
