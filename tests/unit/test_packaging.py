"""The wheel carries every package: pyproject lists them by hand (setuptools' package-dir), and
a directory missing from the list installs nowhere but an editable checkout — the image's
master then fails at import ("No module named shardmill.master.standby")."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_directory_is_a_listed_package() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {path: name for name, path in tool["package-dir"].items()}
    found = set()
    for path, name in roots.items():
        for d in [ROOT / path, *(ROOT / path).rglob("*")]:
            if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")):
                found.add(".".join([name, *d.relative_to(ROOT / path).parts]))
    missing = sorted(found - set(tool["packages"]))
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
