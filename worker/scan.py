"""Running one dataset shard in a child: read it block by block, map each, combine locally."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardmill.data.readers import iter_blocks
from shardmill.errors import BadInput, UnknownFunction
from shardmill.ops import BUILTIN_OPS, DatasetOp
from shardmill.ops.registry import Registry
from shardmill.ops.user import user_op
from shardmill.wire.codec import Buffer, unpack_value
from shardmill.wire.protocol import Task
from shardmill.wire.spec import ScanShard, ValueSource


def resolve_op(name: str, registry: Registry) -> DatasetOp:
    """A built-in op, or a user op from the modules this worker imported."""
    if ":" in name:
        return user_op(name, registry)
    op = BUILTIN_OPS.get(name)
    if op is None:
        raise UnknownFunction(f"op {name!r} is not built into this worker; is it up to date?")
    return op


def run_scan(task: Task, arrays: list[Buffer], registry: Registry) -> dict[str, Any]:
    """The shard's partial: `map` per block, folded with the op's own `combine`."""
    desc = task.descriptor
    assert isinstance(desc, ScanShard)
    op = resolve_op(task.op, registry)
    values = _values(task, arrays) if isinstance(desc.source, ValueSource) else None
    acc: dict[str, Any] | None = None
    try:
        for block in iter_blocks(desc, values):
            part = op.map(block, desc.options)
            acc = part if acc is None else op.combine(acc, part)
    except BadInput as e:
        raise BadInput(f"shard {task.shard}: {e}", retryable=e.retryable) from e
    assert acc is not None, "iter_blocks yields at least one block"
    return acc


def _values(task: Task, arrays: list[Buffer]) -> np.ndarray:
    value = unpack_value(task.payload, arrays)
    if not isinstance(value, np.ndarray):
        raise BadInput(f"shard {task.shard}: its rows did not arrive as an array")
    return value
