"""Logging for the roles the CLI starts: one line format carrying role and pid."""

from __future__ import annotations

import logging
import sys


def setup_logging(role: str, level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s",
    )
