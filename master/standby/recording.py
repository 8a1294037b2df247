"""A SQLite connection that records the writes it runs: the primary's commits, to ship."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

Statement = tuple[str, list[Sequence[Any]]]  # sql, and the rows of parameters it ran with


class RecordingConnection(sqlite3.Connection):
    """A connection that, while `journal` is a list, appends each write it runs to it."""

    journal: list[Statement] | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if self.journal is not None and _is_write(sql):
            row: list[Sequence[Any]] = [tuple(parameters)]
            self.journal.append((sql, row))
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        if self.journal is not None and _is_write(sql):
            rows: list[Sequence[Any]] = [tuple(p) for p in parameters]
            self.journal.append((sql, rows))
            return super().executemany(sql, rows)
        return super().executemany(sql, parameters)


def _is_write(sql: str) -> bool:
    """Inserts, updates and deletes: the transaction's own BEGIN/COMMIT and reads are not."""
    return sql.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE", "ALTER ", "DROP T")
