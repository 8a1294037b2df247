"""User operations: a map, a combine and a finalize in a module the master and workers import.

    # mymod.py (start the master and the workers with --import mymod)
    from shardmill.ops import UserOp
    sum_squares = UserOp(map=_map, combine=_combine, finalize=_finalize)

    client.submit("mymod:sum_squares", "data.npy", shards=8)

Any object with `map(block, options)`, `combine(a, b)` and `finalize(acc)` works too; an
optional `traits` (OpTraits) says which strategies and columns it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardmill.errors import UnknownFunction
from shardmill.ops.base import KEYED_STRATEGIES, Block, DatasetOp, OpTraits
from shardmill.ops.registry import Registry
from shardmill.wire.spec import OpOptions

Partial = dict[str, Any]


def _identity(acc: Partial) -> Partial:
    return acc


@dataclass(frozen=True)
class UserOp:
    """A user operation built from functions; `name` is filled in with its reference."""

    map: Callable[[Block, OpOptions], Partial]
    combine: Callable[[Partial, Partial], Partial]
    finalize: Callable[[Partial], Partial] = _identity
    # Whole rows by default: a user combine rarely expects partials over other columns.
    traits: OpTraits = field(default_factory=lambda: OpTraits(strategies=KEYED_STRATEGIES))
    name: str = ""
    # False when running a shard twice at once would do harm (it writes somewhere, say): then
    # the master never starts a speculative backup of its shards.
    idempotent: bool = True


def user_op(ref: str, reg: Registry) -> DatasetOp:
    """Resolve "pkg.mod:name" among the registry's modules; raise UnknownFunction with the fix."""
    module_name, _, attr = ref.partition(":")
    if module_name in reg.broken:
        raise UnknownFunction(
            f"op {ref!r}: module {module_name!r} failed to import:\n{reg.broken[module_name]}"
        )
    module = reg.modules.get(module_name)
    if module is None:
        raise UnknownFunction(
            f"op {ref!r}: module {module_name!r} is not imported on "
            f"{reg.worker or 'this worker'}; "
            f"start the master and every worker with `--import {module_name}`"
        )
    obj = getattr(module, attr, None)
    missing = [m for m in ("map", "combine", "finalize") if not callable(getattr(obj, m, None))]
    if obj is None or missing:
        raise UnknownFunction(
            f"op {ref!r}: {module_name}.{attr} is not an op (missing {', '.join(missing)}); "
            "define it with shardmill.ops.UserOp(map=..., combine=..., finalize=...)"
        )
    return UserOp(
        map=obj.map,
        combine=obj.combine,
        finalize=obj.finalize,
        traits=getattr(obj, "traits", None) or OpTraits(strategies=KEYED_STRATEGIES),
        name=ref,
        idempotent=bool(getattr(obj, "idempotent", True)),
    )
