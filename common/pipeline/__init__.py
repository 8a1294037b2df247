"""Pipelines: multi-stage jobs over tables with a shuffle between workers (see docs)."""

from shardmill.pipeline.api import GroupBy, Pipeline, read_parts
from shardmill.pipeline.driver import PipelineFailed, StageProgress
from shardmill.pipeline.job import PipelineJob

__all__ = ["GroupBy", "Pipeline", "PipelineFailed", "PipelineJob", "StageProgress", "read_parts"]
