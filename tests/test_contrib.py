"""The service files in contrib/ are valid for their service managers."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # An instance for the project directory /tmp (systemd-escape --path /tmp == "tmp").
    unit = tmp_path / "devmesh@tmp.service"
    unit.write_text((CONTRIB / "systemd" / "devmesh@.service").read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ExecStart=/usr/bin/env devmesh up -f %f" in unit.read_text()


def test_launchd_plist_runs_devmesh_up() -> None:
    with open(CONTRIB / "launchd" / "dev.devmesh.project.plist", "rb") as f:
        plist = plistlib.load(f)
    assert plist["ProgramArguments"][1:4] == ["devmesh", "up", "-f"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
