"""Claiming and completing jobs in the MemoryStore, and promoting scheduled jobs when due.

The node's hot path, as the claim, release_claims, complete and promote_due statements are
in Postgres: claims pass the limits' _Gate, outcomes are fenced by node and attempt, and the
slots that finished jobs held go to the jobs parked for them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ...jobs import JobId
from ..base import RATE_HORIZON_S, TERMINAL_STATES, ClaimedJob, Outcome, PromoteResult
from ..refusals import check_outcomes
from .limits import LimitsMixin, _Gate

if TYPE_CHECKING:
    from .state import _Job


class ClaimsMixin(LimitsMixin):
    """claim, release_claims, complete and promote_due."""

    if TYPE_CHECKING:
        # MemoryStore defines it in memory.py, which must read MAX_INPUT_BYTES as its own
        # global at call time: the tests patch it there.
        def _claim_args(self, job: _Job) -> bytes | None: ...

    async def claim(
        self,
        node_id: JobId,
        limits: Mapping[str, int],
        now: float,
        freeing: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        await anyio.lowlevel.checkpoint()
        out: list[ClaimedJob] = []
        node = self.nodes.get(node_id)
        if node is not None and node.reaped_at is not None:
            return out  # a reaped node claims nothing
        gate = _Gate(self.jobs.values(), self._rate_tat, time.time(), frozenset(freeing))
        later: list[float] = []
        skipped: list[tuple[int, JobId]] = []
        for queue, limit in limits.items():
            heap = self._ready.get(queue)
            taken = 0
            while heap and taken < limit:
                entry = heapq.heappop(heap)
                job = self.jobs.get(entry[1])
                if job is None or job.state != "queued" or job.queue != queue:
                    continue  # a stale heap entry (cancelled, or re-queued and pushed again)
                verdict, delay = gate.admit(job)
                if verdict == "skip":  # its key frees as soon as the node records an outcome
                    skipped.append(entry)
                    continue
                if verdict == "park":  # out of the ready set until a slot of its key frees
                    job.parked = True
                    self._parked.setdefault(job.concurrency_key or "", set()).add(job.id)
                    continue
                if verdict == "later":  # back when its start falls within the horizon
                    job.run_at = now + delay - RATE_HORIZON_S / 2
                    self._make_scheduled(job)
                    later.append(job.run_at)
                    continue
                job.state = "running"
                job.attempt += 1
                job.node_id = node_id
                job.started_at = now
                job.cancel_requested = False
                out.append(
                    ClaimedJob(
                        job.id,
                        job.name,
                        job.queue,
                        job.attempt,
                        job.max_attempts,
                        self._claim_args(job),
                        job.workflow_id,
                        delay,
                        job.concurrency_key,
                        max(0.0, now - job.run_at),
                        job.trace,
                    )
                )
                taken += 1
            for entry in skipped:
                heapq.heappush(self._ready[queue], entry)
            skipped.clear()
        if later:
            self._wake((), min(later))
        return out

    async def release_claims(self, node_id: JobId, keep: Sequence[JobId]) -> int:
        await anyio.lowlevel.checkpoint()
        kept = set(keep)
        released = [
            j
            for j in self.jobs.values()
            if j.node_id == node_id and j.state == "running" and j.id not in kept
        ]
        for job in released:
            job.attempt -= 1
            job.node_id = job.started_at = None
            self._make_ready(job)
        self._wake(j.queue for j in released)
        self._unpark(j.concurrency_key for j in released if j.concurrency_key is not None)
        return len(released)

    async def complete(self, node_id: JobId, outcomes: Sequence[Outcome]) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        check_outcomes(outcomes)  # before anything changes: Postgres fails the whole statement
        rejected: list[JobId] = []
        woken: set[str] = set()
        freed: list[str] = []
        earliest: float | None = None
        for o in outcomes:
            job = self.jobs.get(o.id)
            if (
                job is None
                or job.state != "running"
                or job.attempt != o.attempt
                or job.node_id != node_id
            ):
                rejected.append(o.id)
                continue
            state = o.state
            if state in ("queued", "scheduled"):
                if job.cancel_requested:
                    state = "cancelled"  # someone asked to cancel it: never run it again
                elif job.attempt >= job.max_attempts:
                    state = "failed"  # no attempts left: a retry would run it once too often
            job.result = o.result
            job.error = o.error
            job.wall_s, job.cpu_s = o.wall_s, o.cpu_s
            if state != "cancelled" or (o.state == "cancelled" and o.reason is not None):
                job.reason = o.reason  # a cancel without its own reason keeps the requester's
            job.finished_at = o.finished_at if state in TERMINAL_STATES else None
            if o.run_at is not None and state in ("queued", "scheduled"):
                job.run_at = o.run_at
            if state == "queued":
                self._make_ready(job)
                woken.add(job.queue)
            elif state == "scheduled":
                self._make_scheduled(job)
                earliest = job.run_at if earliest is None else min(earliest, job.run_at)
            elif state in TERMINAL_STATES:
                self._end(job, state)
            else:
                raise ValueError(f"an outcome cannot move a job to {o.state!r}")
            if job.concurrency_key is not None:
                freed.append(job.concurrency_key)
                woken.add(job.queue)  # jobs left ready while the key was freeing can go
        self._wake(woken, earliest)
        self._unpark(freed)  # the slots of finished keyed jobs, to the jobs parked for them
        return rejected

    async def promote_due(self, now: float, limit: int) -> PromoteResult:
        await anyio.lowlevel.checkpoint()
        moved = 0
        woken: set[str] = set()
        heap = self._scheduled
        while heap and heap[0][0] <= now and moved < limit:
            run_at, job_id = heapq.heappop(heap)
            if not self._is_scheduled_at(job_id, run_at):
                continue  # a stale heap entry
            job = self.jobs[job_id]
            self._make_ready(job)
            woken.add(job.queue)
            moved += 1
        self._wake(woken)
        # Like Postgres: the earliest scheduled job due after `now` (when the limit left due
        # jobs behind, those are not it; the caller sees moved == limit and calls again).
        next_run_at = min(
            (
                run_at
                for run_at, job_id in heap
                if run_at > now and self._is_scheduled_at(job_id, run_at)
            ),
            default=None,
        )
        return PromoteResult(moved, next_run_at)

    def _is_scheduled_at(self, job_id: JobId, run_at: float) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.state == "scheduled" and job.run_at == run_at
