"""A bare `shardmill keygen` writes this user's key directory, which every role then finds;
without it, a role with no keys still refuses to start plaintext."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardmill.errors import ConfigError
from shardmill.wire.security import Security, default_keys, keygen


def test_keygen_once_is_enough_and_never_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="run `shardmill keygen` once"):
        Security.resolve(None, False, "master")
    keygen(default_keys())
    assert Security.resolve(None, False, "client").keys == tmp_path / "shardmill" / "keys"
