"""Taking a job in, whoever asks: a client's Submit, or a pipeline's next stage. Checked
against the data roots, admitted by the brain, recorded in the state dir, then queued."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from shardmill.data.paths import check_data_path, is_url
from shardmill.errors import JobSpecError
from shardmill.master.brain import events as ev
from shardmill.master.core import Core
from shardmill.master.jobs import JobData, accept, new_job_id
from shardmill.wire.codec import Buffer
from shardmill.wire.protocol import Submit
from shardmill.wire.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    job_id: str
    msg: Submit  # as the master runs it: paths checked, owner set
    data: JobData
    at: float  # the master's clock at submit


def checked(core: Core, spec: JobSpec, owner: str) -> JobSpec:
    """The spec as the master runs it: paths inside the data roots (the dataset, and
    row_stats' output, which the master creates), and the owner the key says, whatever the
    request claims."""
    fields: dict[str, Any] = {
        name: check_data_path(path, core.settings.data_roots)
        for name in ("dataset", "output")
        if (path := getattr(spec, name)) and not (name == "dataset" and is_url(path))
    }
    return spec.model_copy(update={**fields, "owner": owner})


def admit(core: Core, msg: Submit, arrays: list[Buffer], owner: str) -> Admitted:
    """Plan the job, have the brain admit it and the state dir record it (JobSpecError or
    StateDirError say why not); it is not queued until `queue`."""
    msg = msg.model_copy(update={"spec": checked(core, msg.spec, owner)})
    if msg.shm:  # big arrays the client left in shared memory: map them, copy nothing
        arrays = core.segments.attach(msg.shm, arrays)
    data = accept(msg, arrays, core.registry)
    if not data.idempotent:  # an op with side effects: its shards never run twice at once
        never = msg.spec.model_copy(update={"speculate_after": 0})
        msg = msg.model_copy(update={"spec": never})
    job_id = msg.job_id or new_job_id()
    admission = core.apply(ev.SubmitRequested(job_id, len(data.descriptors), owner))
    refused = [c for c in admission if isinstance(c, ev.Refused)]
    if refused:
        raise JobSpecError(refused[0].reason)
    now = time.monotonic()  # one submit time, the same in the brain and the state dir
    core.checkpoint.job_added(
        job_id, data, spec=msg.spec, submitted_at=now + core.brain.wall_offset
    )
    core.data[job_id] = data
    data.segments = core.segments.adopt([ref.segment for ref in msg.shm])
    log.info("job %s accepted: op %s, %d shards", job_id, msg.spec.op, len(data.descriptors))
    return Admitted(job_id, msg, data, now)


def queue(core: Core, job: Admitted, owner: str) -> None:
    """Its shards join the queue: the brain hands them out from now on."""
    spec, data = job.msg.spec, job.data
    core.apply(ev.JobAdded(job.job_id, spec, len(data.descriptors), data.batchable, owner, job.at))
