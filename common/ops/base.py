"""The shape every dataset operation has."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class DatasetOp(Protocol):
    """`run` maps one shard's rows to a partial; `combine` is associative; `finalize` ends it."""

    name: str

    def run(self, rows: np.ndarray) -> dict[str, Any]: ...

    def combine(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]: ...

    def finalize(self, acc: dict[str, Any]) -> dict[str, Any]: ...

    def check_dtype(self, dtype: np.dtype[Any]) -> str | None:
        """Return why this op cannot handle `dtype`, or None when it can."""
        ...
