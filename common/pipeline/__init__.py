"""Pipelines: multi-stage jobs over tables with a shuffle between workers (docs/pipelines.md).

Imported on first use: the Client imports `shardmill.pipeline.calls` only, and a CLI query or
a worker's child that runs no stage never pays for planning datasets."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardmill.errors import PipelineFailed
    from shardmill.pipeline.api import GroupBy, Pipeline, read_parts
    from shardmill.pipeline.driver import StageProgress
    from shardmill.pipeline.job import PipelineJob

_LAZY = {
    "GroupBy": "shardmill.pipeline.api",
    "Pipeline": "shardmill.pipeline.api",
    "read_parts": "shardmill.pipeline.api",
    "PipelineFailed": "shardmill.errors",
    "StageProgress": "shardmill.pipeline.driver",
    "PipelineJob": "shardmill.pipeline.job",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardmill.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["GroupBy", "Pipeline", "PipelineFailed", "PipelineJob", "StageProgress", "read_parts"]
