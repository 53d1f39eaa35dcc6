"""StepsMixin: the MemoryStore's durable jobs: their steps' records, and parking.

Fenced as Postgres fences them (the attempt and its node), and atomic: a call either writes
all it says or nothing. The records are kept as written (``StepWrite``), with the attempt
and the node that wrote them.
"""

from __future__ import annotations

import time

import anyio.lowlevel
import orjson

from ...jobs import JobId
from ..base import TERMINAL_STATES, ParkResult, StepRecord, StepWrite
from ..refusals import check_json, check_text
from .limits import LimitsMixin
from .state import _Job


class StepsMixin(LimitsMixin):
    """Steps of durable jobs, and parking them in ``ctx.sleep`` and ``ctx.wait_for``."""

    def _owned(self, job_id: JobId, attempt: int, node_id: JobId) -> _Job | None:
        job = self.jobs.get(job_id)
        if job is None or job.state != "running" or job.attempt != attempt:
            return None
        return job if job.node_id == node_id else None

    def _step_in_doubt(self, job: _Job) -> str | None:
        """'step 'x' (#3)' if a step of the job's current attempt was left running."""
        for seq, (step, attempt, _) in sorted(self._steps.get(job.id, {}).items()):
            if step.state == "running" and attempt == job.attempt:
                return f"step {step.name!r} (#{seq})"
        return None

    def _completed_a_step(self, job: _Job) -> bool:
        return any(s.state == "succeeded" for s, _, _ in self._steps.get(job.id, {}).values())

    async def record_step(
        self, node_id: JobId, job_id: JobId, attempt: int, step: StepWrite
    ) -> bool:
        await anyio.lowlevel.checkpoint()
        _refuse_unstorable(step)
        if self._owned(job_id, attempt, node_id) is None:
            return False
        self._steps.setdefault(job_id, {})[step.seq] = (step, attempt, node_id)
        return True

    async def job_steps(self, job_id: JobId) -> list[StepRecord]:
        await anyio.lowlevel.checkpoint()
        return [
            _record(seq, step, attempt, node_id)
            for seq, (step, attempt, node_id) in sorted(self._steps.get(job_id, {}).items())
        ]

    async def park(
        self,
        node_id: JobId,
        job_id: JobId,
        attempt: int,
        reason: str,
        *,
        until: float | None = None,
        wait_on: JobId | None = None,
        step: StepWrite | None = None,
    ) -> ParkResult:
        await anyio.lowlevel.checkpoint()
        check_text((reason,))
        if step is not None:
            _refuse_unstorable(step)
        job = self._owned(job_id, attempt, node_id)
        if job is None:
            return ParkResult(False, False, None)
        if step is not None:
            self._steps.setdefault(job_id, {})[step.seq] = (step, attempt, node_id)
        target = self.jobs.get(wait_on) if wait_on is not None else None
        if wait_on is not None and (target is None or target.state in TERMINAL_STATES):
            return ParkResult(False, True, None)
        job.reason = reason
        job.max_attempts = max(job.max_attempts, job.attempt + 1)  # a resume is not a retry
        if target is not None:
            target.awaited = True
            job.state, job.wake_on = "waiting", wait_on
        else:
            job.run_at = until if until is not None else time.time()
            self._make_scheduled(job)
            self._wake((), job.run_at)
        if job.concurrency_key is not None:
            self._unpark([job.concurrency_key])  # its slot is free
        return ParkResult(True, True, job.concurrency_key)


def _refuse_unstorable(step: StepWrite) -> None:
    check_text((step.name, step.call, step.kind, step.state))
    check_json((step.result, step.error))


def _record(seq: int, s: StepWrite, attempt: int, node_id: JobId) -> StepRecord:
    return StepRecord(
        seq, s.kind, s.state, s.name, attempt, s.idempotent, s.digest, s.call,
        None if s.result is None else orjson.loads(s.result),
        None if s.error is None else orjson.loads(s.error),
        s.started_at, s.finished_at, node_id,
    )  # fmt: skip
