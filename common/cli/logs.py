"""Logging for the roles the CLI starts: one line per record, as text or as JSON for shippers."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonLines(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, role, pid, logger, message."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "role": self.role,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(role: str, level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines(role))
    else:
        text = f"%(asctime)s %(levelname)s {role}[%(process)d] %(name)s: %(message)s"
        handler.setFormatter(logging.Formatter(text))
    logging.basicConfig(level=level.upper(), handlers=[handler])
