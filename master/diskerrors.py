"""What a failed state-dir write is, in words: SQLite's error name and what the OS says."""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
from pathlib import Path


def error_name(e: sqlite3.Error | OSError) -> str:
    """SQLite's name for the error (SQLITE_FULL), or the errno's (ENOSPC)."""
    if isinstance(e, OSError):
        return errno.errorcode.get(e.errno or 0, "")
    return str(getattr(e, "sqlite_errorname", ""))


def disk_facts(state_dir: Path) -> str:
    """What the OS says about the state dir, for the error: SQLite's own message does not tell
    a full disk from a read-only one or a file size limit (all can read "disk I/O error")."""
    facts = []
    try:
        vfs = os.statvfs(state_dir)
        facts.append(f"{vfs.f_bavail * vfs.f_frsize:,} bytes free on its filesystem")
        if vfs.f_flag & os.ST_RDONLY:
            facts.append("mounted read-only")
    except OSError as e:
        facts.append(f"statvfs failed: {e}")
    if not os.access(state_dir, os.W_OK):
        facts.append("the directory is not writable")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        facts.append(f"file size limit (ulimit -f) {limit:,} bytes")
    return f" [{', '.join(facts)}]"
