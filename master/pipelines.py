"""Pipelines on the master: each one's stages run as jobs the master submits to itself.

The decisions are `PipelineState`'s (shardmill.pipeline.driver: what runs next, what a stage's
end means, what is recomputed); this module carries them out: a stage run becomes a job of
stage tasks, its end (the loop's `_finish`) feeds the state, and the next run is submitted
after the loop's batch of commands (never from inside one). Each pipeline's record is written
to `STATE_DIR/pipelines/ID` after every change, so a restarted master resumes it: the stage job
in flight resumes like any job, and outputs still on live workers are reused.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from shardmill.errors import PipelineFailed, ShardmillError
from shardmill.master.brain.transitions import JobState
from shardmill.master.core import Core
from shardmill.master.submit import admit, queue
from shardmill.pipeline.driver import PipelineState, Run
from shardmill.pipeline.fetch import drop_outputs
from shardmill.pipeline.plan import compile_stages
from shardmill.wire.codec import Packed, pack_value, unpack_value
from shardmill.wire.protocol import ErrorInfo, PipelineInfo, StageInfo, Submit, SubmitPipeline
from shardmill.wire.spec import STAGE_FUNCTION, JobSpec

log = logging.getLogger(__name__)
Outcome = tuple[list[Any], list[ErrorInfo | None], str]  # a stage job's values, errors, state


@dataclass
class PipelineRun:
    pipeline_id: str
    owner: str
    state: PipelineState
    max_attempts: int
    submitted_at: float  # wall clock
    status: str = "running"
    finished_at: float | None = None
    error: str | None = None
    jobs: dict[str, Run] = field(default_factory=dict)  # its stage jobs running now
    ended: list[tuple[str, Outcome]] = field(default_factory=list)  # jobs that ended
    cancel: bool = False
    result: Packed | None = None
    waiters: list[tuple[bytes, int]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status != "running"

    @property
    def job_id(self) -> str | None:
        """Its newest stage job running now."""
        return next(reversed(self.jobs), None)

    def info(self) -> PipelineInfo:
        st = self.state
        stages = [
            StageInfo(
                index=p.index,
                label=p.label,
                shards=p.shards,
                done=p.done,
                jobs=list(p.jobs),
                bytes_shuffled=p.bytes_shuffled,
                runs=p.runs,
                bytes_fetched=p.bytes_fetched,
                rows=p.rows,
                recomputed=list(p.recomputed),
                waiting=self._waiting(p.index),
                holders=[st.outputs[p.index].get(s, {}).get("holder", "") for s in range(p.shards)],
                edge_budget=st.edge_budget if p.index < len(st.stages) - 1 else 0,
                edge_bytes=st.waiting_bytes(p.index, list(self.jobs.values())),
                edge_peak=st.peaks.get(p.index, 0),
                waves=len(st.waves.get(p.index, [])),
            )
            for p in st.progress
        ]
        return PipelineInfo(
            pipeline_id=self.pipeline_id,
            name=st.name,
            owner=self.owner,
            state=self.status,
            submitted_at=self.submitted_at,
            finished_at=self.finished_at,
            error=self.error,
            running_job=self.job_id,
            stages=stages,
            story=list(st.story),
        )

    def _waiting(self, index: int) -> str:
        """Why a stage has not all its outputs: the stage it waits for, or its own run."""
        st = self.state
        stage = st.stages[index]
        if self.finished or len(st.outputs[index]) == stage.shards:
            return ""
        for parent in stage.parents:
            p = st.stages[parent]
            if len(st.outputs[parent]) < p.shards:
                return f"waits for stage {parent}: {len(st.outputs[parent])}/{p.shards} done"
        running = list(self.jobs.values())
        if st.paused(index, running):
            held, budget = st.waiting_bytes(index, running) / 2**20, st.edge_budget / 2**20
            return (
                f"paused: {held:.1f} MiB of its output wait for the next stage "
                f"(edge budget {budget:.1f} MiB)"
            )
        mine = [j for j, r in self.jobs.items() if r.stage == index and r.absorb is None]
        if mine:
            return f"running in job {mine[-1]}"
        return "next"


class Pipelines:
    """Every pipeline the master drives, its records in the state dir."""

    def __init__(self, core: Core, state_dir: Path | None) -> None:
        self.core = core
        self.dir = None if state_dir is None else state_dir / "pipelines"
        self.runs: dict[str, PipelineRun] = {}
        self.by_job: dict[str, str] = {}  # stage job -> its pipeline
        self.due: set[str] = set()  # pipelines to move on after this batch of commands

    # ---- requests ------------------------------------------------------------------------------

    def submit(self, msg: SubmitPipeline, arrays: list[Any], owner: str) -> PipelineRun:
        steps = unpack_value(msg.steps, arrays)
        if not isinstance(steps, list) or not steps:
            raise ShardmillError("steps: a pipeline needs at least a source step")
        stages = compile_stages(tuple(steps), data_roots=self.core.settings.data_roots)
        budget = self.core.settings.edge_budget if msg.edge_budget is None else msg.edge_budget
        state = PipelineState(
            stages, name=msg.name, fetch_timeout=msg.fetch_timeout, edge_budget=budget
        )
        pid = "p" + uuid.uuid4().hex[:11]
        run = PipelineRun(pid, owner, state, msg.max_attempts, submitted_at=time.time())
        self.runs[pid] = run
        self.due.add(pid)
        log.info("pipeline %s accepted: %d stages", pid, len(stages))
        return run

    def cancel(self, run: PipelineRun) -> None:
        run.cancel = True
        self._cancel_jobs(run)
        self.due.add(run.pipeline_id)

    def _cancel_jobs(self, run: PipelineRun) -> None:
        from shardmill.master.brain import events as ev

        for job_id in run.jobs:
            if job_id in self.core.brain.active:  # (one may have ended in this same turn)
                self.core.apply(ev.CancelRequested(job_id))

    # ---- the loop's hooks ----------------------------------------------------------------------

    def job_ended(self, job_id: str) -> None:
        """A job ended (the loop's _finish): if it is a stage, read its outcome now."""
        pid = self.by_job.pop(job_id, None)
        if pid is None:
            return
        self.runs[pid].ended.append((job_id, self._outcome(job_id)))
        self.due.add(pid)

    def step(self) -> list[PipelineRun]:
        """Move on every pipeline that can; returns those that ended (to answer waiters)."""
        ended: list[PipelineRun] = []
        while self.due:
            run = self.runs.get(self.due.pop())
            if run is None or run.finished:
                continue
            self._advance(run)
            self._save(run)
            if run.finished:
                ended.append(run)
        return ended

    def forget(self, job_ids: list[str]) -> None:
        """Jobs pruned: a finished pipeline goes with its stage jobs (their ids start with
        its own), record and all."""
        for job_id in job_ids:
            run = self.runs.get(job_id.split("-", 1)[0])
            if run is not None and run.finished:
                del self.runs[run.pipeline_id]
                if self.dir is not None:
                    (self.dir / run.pipeline_id).unlink(missing_ok=True)

    # ---- moving on -----------------------------------------------------------------------------

    def _advance(self, run: PipelineRun) -> None:
        try:
            while run.ended:
                job_id, (values, errors, state) = run.ended.pop(0)
                ran = run.jobs.pop(job_id)
                if state != str(JobState.DONE):
                    raise PipelineFailed(errors[0].message if errors and errors[0] else state)
                run.state.ended(ran, values, errors)
            if run.cancel:
                if not run.jobs:
                    self._end(run, "cancelled", "cancelled by a client")
                return
            for nxt in run.state.next_runs(list(run.jobs.values()), self._width()):
                self._start(run, nxt)
            if not run.jobs:
                if not run.state.done():
                    raise PipelineFailed("nothing left to run, yet the last stage is not done")
                run.result = pack_value(run.state.result())
                self._end(run, "done", None)
        except ShardmillError as e:  # a stage failed for good, or its job was refused
            self._end(run, "cancelled" if run.cancel else "failed", str(e))
        except Exception as e:  # a bug here fails this pipeline, never the master
            log.exception("pipeline %s: internal error", run.pipeline_id)
            self._end(run, "failed", f"internal error in the master's pipeline driver: {e!r}")
        finally:
            self._let_go(run)

    def _width(self) -> int:
        return sum(w.slots for w in self.core.brain.workers.values() if not w.draining)

    def _let_go(self, run: PipelineRun) -> None:
        """Outputs every wave absorbed are let go, off the loop (best effort: a holder out of
        reach drops them with the pipeline's end, or its sweep)."""
        if not run.state.dropping:
            return
        holders: dict[str, str] = {}
        outs: dict[str, list[str]] = {}
        for holder, key, out in run.state.dropping:
            holders[holder] = key
            outs.setdefault(holder, []).append(out)
        run.state.dropping.clear()
        args = (holders, run.state.token)
        threading.Thread(target=drop_outputs, args=args, kwargs={"outs": outs}, daemon=True).start()

    def _start(self, run: PipelineRun, nxt: Run) -> None:
        spec = JobSpec(
            op="map",
            function=STAGE_FUNCTION,
            max_attempts=run.max_attempts,
            allow_failures=len(nxt.tasks),
            name=nxt.name,
        )
        parts: list[Packed] = []
        arrays: list[Any] = []
        for task in nxt.tasks:
            packed = pack_value([(task,)])
            parts.append(packed)
            arrays.extend(packed.arrays)
        kind = "s" if nxt.absorb is None else "a"  # a stage's shards, or a wave absorbed
        job_id = f"{run.pipeline_id}-{kind}{nxt.stage}-{uuid.uuid4().hex[:6]}"
        msg = Submit(
            spec=spec,
            parts=[p.data for p in parts],
            part_counts=[1] * len(parts),
            part_arrays=[len(p.arrays) for p in parts],
            job_id=job_id,
        )
        job = admit(self.core, msg, arrays, run.owner)
        run.jobs[job_id] = nxt
        self.by_job[job_id] = run.pipeline_id
        run.state.started(nxt, job_id)
        queue(self.core, job, run.owner)

    def _outcome(self, job_id: str) -> Outcome:
        """A stage job's values (None where a shard failed), each shard's last error, state;
        an archived job's (a restarted master's) read from the state dir."""
        job = self.core.brain.jobs.get(job_id)
        if job is None:
            loaded = self.core.checkpoint.load_finished(job_id, self.core.registry)
            assert loaded is not None, f"stage job {job_id} is neither running nor stored"
            stored, data = loaded
            n, state, error = len(data.descriptors), stored.state, stored.error
            shards = [stored.shards.get(i) for i in range(n)]
            errors = [s.history[-1].error if s and s.history else None for s in shards]
        else:
            data, n, state, error = self.core.data[job_id], len(job.shards), job.state, job.error
            errors = [s.history[-1].error if s.history else None for s in job.shards]
        values: list[Any] = [None] * n
        if data.result is not None:
            res, at = data.result, 0
            for i, (part, k) in enumerate(zip(res.parts, res.part_arrays, strict=True)):
                values[i] = unpack_value(part, res.arrays[at : at + k])[0]
                at += k
        if state != JobState.DONE and error:
            errors.insert(0, ErrorInfo(kind="error", message=error))
        return values, errors, str(state)

    def _end(self, run: PipelineRun, status: str, error: str | None) -> None:
        run.status, run.error, run.finished_at = status, error, time.time()
        self._cancel_jobs(run)  # those still running, when one failed
        log.info("pipeline %s %s%s", run.pipeline_id, status, f": {error}" if error else "")
        holders = run.state.holders()
        if holders:  # best effort, off the loop: a holder out of reach sweeps them later
            token = run.state.token
            threading.Thread(target=drop_outputs, args=(holders, token), daemon=True).start()

    # ---- the state dir -------------------------------------------------------------------------

    def _save(self, run: PipelineRun) -> None:
        if self.dir is None:
            return
        record = {
            "id": run.pipeline_id,
            "owner": run.owner,
            "max_attempts": run.max_attempts,
            "submitted_at": run.submitted_at,
            "status": run.status,
            "finished_at": run.finished_at,
            "error": run.error,
            "jobs": [
                [job_id, r.stage, r.shards, r.name, r.absorb, r.wave]
                for job_id, r in run.jobs.items()
            ],
            "state": run.state.record(),
            "result": None if run.result is None else run.result.data,
        }
        packed = pack_value(record)
        if run.result is not None:
            packed.arrays.extend(run.result.arrays)
        blob = msgpack.packb(
            {
                "data": packed.data,
                "arrays": [[a.dtype.str, list(a.shape), a.tobytes()] for a in packed.arrays],
                "result_arrays": 0 if run.result is None else len(run.result.arrays),
            }
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{run.pipeline_id}.tmp"
        tmp.write_bytes(blob)
        os.replace(tmp, self.dir / run.pipeline_id)

    def restore(self) -> None:
        """Every pipeline recorded in the state dir, as it was; unfinished ones move on."""
        if self.dir is None or not self.dir.exists():
            return
        for path in sorted(self.dir.iterdir()):
            if path.name.startswith("."):
                continue
            run = _from_blob(path.read_bytes())
            self.runs[run.pipeline_id] = run
            if run.finished:
                continue
            for job_id in list(run.jobs):
                if not self.core.brain.known(job_id):
                    del run.jobs[job_id]  # never recorded: planned again
                elif job_id not in self.core.brain.active:  # ended (archived, most likely)
                    run.ended.append((job_id, self._outcome(job_id)))
                else:
                    self.by_job[job_id] = run.pipeline_id
            self.due.add(run.pipeline_id)


def _from_blob(blob: bytes) -> PipelineRun:
    raw = msgpack.unpackb(blob)
    arrays: list[Any] = [
        np.frombuffer(b, dtype=np.dtype(d)).reshape(shape) for d, shape, b in raw["arrays"]
    ]
    n_result = int(raw["result_arrays"])
    own = arrays[: len(arrays) - n_result]
    rec = unpack_value(raw["data"], own)
    state = PipelineState.from_record(rec["state"])
    run = PipelineRun(
        rec["id"],
        rec["owner"],
        state,
        rec["max_attempts"],
        rec["submitted_at"],
        status=rec["status"],
        finished_at=rec["finished_at"],
        error=rec["error"],
    )
    for job_id, stage, shards, name, absorb, wave in rec.get("jobs", []):
        run.jobs[job_id] = Run(stage, list(shards), [], name, absorb=absorb, wave=wave)
    if rec.get("run") is not None:  # written before waves: one job at a time
        stage, shards, name = rec["run"]
        run.jobs[rec["job_id"]] = Run(stage, list(shards), [], name)
    if rec["result"] is not None:
        run.result = Packed(rec["result"], arrays[len(arrays) - n_result :])
    return run
