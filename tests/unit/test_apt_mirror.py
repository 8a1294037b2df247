"""docker/apt-mirror.sh: the build scripts take the Debian mirror from the host's apt sources
(or $DEBIAN_MIRROR), so no package host is written into the project."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "apt-mirror.sh"


def _mirror(apt: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"}
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**full, "APT_SOURCES": str(apt), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "sources.list",
            "# a comment\ndeb http://mirror.test/debian-security bookworm-security main\n"
            "deb [arch=amd64] http://mirror.test/debian/ bookworm main\n",
        ),
        (
            "sources.list.d/debian.sources",
            "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n\n"
            "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\n"
            "Components: main\n",
        ),
    ],
)
def test_the_mirror_comes_from_the_hosts_apt_sources(tmp_path: Path, name: str, text: str) -> None:
    # Given apt sources in either format, the security archive listed first
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / name).write_text(text)
    # When the script reads them / Then it prints the main archive's URL
    out = _mirror(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "http://mirror.test/debian"
    # And $DEBIAN_MIRROR wins when set
    assert _mirror(tmp_path, DEBIAN_MIRROR="http://other.test/d").stdout.strip() == (
        "http://other.test/d"
    )


def test_no_mirror_is_a_clear_error_naming_the_fix(tmp_path: Path) -> None:
    out = _mirror(tmp_path)
    assert out.returncode == 1
    assert "no Debian mirror found" in out.stderr and "set DEBIAN_MIRROR" in out.stderr
