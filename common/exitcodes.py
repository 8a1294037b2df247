"""Named exit codes for every shardmill command."""

from __future__ import annotations

OK = 0
ERROR = 1  # an unexpected error; the message says what happened
USAGE = 2  # bad flags (argparse's own code)
JOB_FAILED = 3  # the job failed; the message names the shard and the next step
UNREACHABLE = 4  # no answer from the master within the connect timeout
TIMEOUT = 5  # the job did not finish within --timeout
BAD_SPEC = 6  # the job spec was rejected at submit
CONFIG = 7  # invalid settings or environment
UNHEALTHY = 8  # `shardmill health`: this role is not serving
CANCELLED = 9  # the job was cancelled
NOT_FOUND = 10  # no such job
CHECK_FAILED = 11  # `shardmill demo`: the distributed answer disagreed with NumPy
STATE = 12  # the state directory is locked, corrupt, foreign or newer, or cannot be written
STEPPED_DOWN = 13  # a primary master found it was replaced by its standby, and stopped
