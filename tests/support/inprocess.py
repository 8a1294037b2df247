"""Run a plan without a cluster: each shard as a worker would, merged as the master would."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shardmill.data.plan import Plan, build_plan
from shardmill.master.merge import OpMerger
from shardmill.ops.registry import Registry
from shardmill.wire.codec import pack_value, to_bytes, unpack_value
from shardmill.wire.protocol import Task
from shardmill.wire.spec import JobSpec
from shardmill.worker.scan import run_scan


def shard_partials(plan: Plan, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Every shard's partial, computed the way a worker's child computes it."""
    out = []
    for i, desc in enumerate(plan.descriptors):
        payload, arrays = plan.inputs[i] if plan.inputs else (b"", [])
        task = Task(
            job_id="t", shard=i, attempt=1, op=plan.spec.op, descriptor=desc, payload=payload
        )
        out.append(run_scan(task, list(arrays), registry or Registry([])))
    return out


def merge(plan: Plan, partials: Sequence[dict[str, Any]], order: Sequence[int]) -> Any:
    """Merge the partials in `order` through the wire format, as the master does."""
    merger = OpMerger(plan.op, provenance=plan.provenance)
    for i in order:
        packed = pack_value(partials[i])
        merger.add(int(i), packed.data, [to_bytes(a) for a in packed.arrays])
    final = merger.final()
    return unpack_value(final.parts[0], final.arrays)


def run_spec(spec: JobSpec, values: np.ndarray | None = None, *, seed: int = 0, **kw: Any) -> Any:
    """Plan, run every shard and merge them in a random order."""
    plan = build_plan(spec, values, **kw)
    partials = shard_partials(plan)
    order = np.random.default_rng(seed).permutation(len(partials))
    return merge(plan, partials, [int(i) for i in order])
