"""The `shardmill` command: `parser` builds it, `main` runs it, one module per command group."""

from __future__ import annotations

from shardmill.cli.main import main, run

__all__ = ["main", "run"]
