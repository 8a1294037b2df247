"""The ETL example's own step, imported by the workers (`--import etl`)."""

from __future__ import annotations

import numpy as np

Table = dict[str, np.ndarray]


def clean(t: Table) -> Table:
    """Drop refunds (negative amounts), normalise country codes to upper case, and make ids
    and cents integers (a key must be an integer or a string)."""
    keep = t["amount"] >= 0
    return {
        "user": t["user"][keep].astype(np.int64),
        "country": np.char.upper(t["country"][keep]),
        "amount": t["amount"][keep].astype(np.int64),
    }
