"""Workflows and dependencies in the MemoryStore: submitting, inspecting and cancelling them.

Edges are kept both ways (MemoryState._parents by child, _children by parent), as
Postgres's job_deps table and its index are; MemoryState._settle walks them when a job ends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import orjson

from ...errors import DependencyNotFoundError
from ...jobs import JobId
from ..base import (
    PENDING_STATES,
    NewJob,
    NewWorkflow,
    ParentResult,
    StepFailure,
    WorkflowInfo,
    upstream_reason,
)
from ..refusals import check_jobs, check_text
from .state import _ACTIVE, MemoryState, _Job, _Workflow


class WorkflowsMixin(MemoryState):
    """submit_workflow, enqueue_after, the workflows' views, cancel_workflow, parent_results."""

    async def submit_workflow(self, workflow: NewWorkflow) -> None:
        await anyio.lowlevel.checkpoint()
        check_text((workflow.name, *(w.step for w in workflow.jobs)))
        check_jobs([w.job for w in workflow.jobs])
        if workflow.id in self.workflows:
            return  # a retried submission
        now = time.time()
        self.workflows[workflow.id] = _Workflow(
            workflow.id, workflow.name, now, list(workflow.sinks)
        )
        woken: set[str] = set()
        earliest: float | None = None
        for w in workflow.jobs:
            j = w.job
            queue, due = self._insert(
                _Job(
                    j.id,
                    j.name,
                    j.queue,
                    j.priority,
                    j.state,
                    j.args,
                    j.run_at,
                    j.max_attempts,
                    None,
                    now,
                    workflow_id=workflow.id,
                    step=w.step,
                    pending_deps=w.pending_deps,
                    has_dependents=w.has_dependents,
                    pass_results=w.pass_results,
                    trace=j.trace,
                ).limit_like(j)
            )
            if queue is not None:
                woken.add(queue)
            if due is not None:
                earliest = due if earliest is None else min(earliest, due)
        parents: dict[JobId, list[JobId]] = {}
        for edge in sorted(workflow.edges, key=lambda e: e.ord):
            parents.setdefault(edge.job_id, []).append(edge.depends_on)
        for child, ps in parents.items():
            self._add_edges(child, ps)
        self._wake(woken, earliest)

    async def enqueue_after(
        self,
        job: NewJob,
        after: Sequence[JobId],
        *,
        workflow_id: JobId | None = None,
        step: str | None = None,
    ) -> JobId:
        await anyio.lowlevel.checkpoint()
        check_jobs([job])
        check_text((step,))
        if job.id in self.jobs:
            return job.id  # a retried insert
        deps = list(dict.fromkeys(after))
        missing = [d for d in deps if d not in self.jobs]
        if missing:
            raise DependencyNotFoundError(job.name, missing)
        states = [self.jobs[d].state for d in deps]
        reason = upstream_reason(states)
        active = [d for d in deps if self.jobs[d].state in _ACTIVE]
        pending = 0 if reason else len(active)
        state = "cancelled" if reason else ("waiting" if pending else job.state)
        now = time.time()
        new = _Job(
            job.id, job.name, job.queue, job.priority, state, job.args, job.run_at,
            job.max_attempts, None, now, workflow_id=workflow_id, step=step,
            pending_deps=pending, reason=reason, finished_at=now if reason else None,
            trace=job.trace,
        ).limit_like(job)  # fmt: skip
        if not reason:
            for dep in active:
                self.jobs[dep].has_dependents = True
        self._add_edges(job.id, deps)
        queue, due = self._insert(new)
        self._wake([queue] if queue else [], due)
        return job.id

    async def workflow_info(self, workflow_id: JobId) -> WorkflowInfo | None:
        await anyio.lowlevel.checkpoint()
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return None
        counts: dict[str, int] = {}
        for job in self._workflow_jobs(workflow_id):
            counts[job.state] = counts.get(job.state, 0) + 1
        return WorkflowInfo(
            workflow.id, workflow.name, workflow.created_at, list(workflow.sinks), counts
        )

    async def list_workflows(self, before: JobId | None, limit: int) -> list[WorkflowInfo]:
        await anyio.lowlevel.checkpoint()
        ids = sorted((w for w in self.workflows if before is None or w < before), reverse=True)
        counts: dict[JobId, dict[str, int]] = {w: {} for w in ids[:limit]}
        for job in self.jobs.values():
            if job.workflow_id in counts:
                by_state = counts[job.workflow_id]
                by_state[job.state] = by_state.get(job.state, 0) + 1
        return [
            WorkflowInfo(w, self.workflows[w].name, self.workflows[w].created_at,
                         list(self.workflows[w].sinks), counts[w])
            for w in ids[:limit]
        ]  # fmt: skip

    def _workflow_jobs(self, workflow_id: JobId) -> list[_Job]:
        return sorted(
            (j for j in self.jobs.values() if j.workflow_id == workflow_id), key=lambda j: j.id
        )

    async def workflow_failures(self, workflow_id: JobId, limit: int) -> list[StepFailure]:
        await anyio.lowlevel.checkpoint()
        upstream = ("upstream_failed", "upstream_cancelled")
        found = [
            j
            for j in self._workflow_jobs(workflow_id)
            if j.state in ("failed", "lost")
            or (j.state == "cancelled" and j.reason not in upstream)
        ]
        found.sort(key=lambda j: (j.finished_at is None, j.finished_at or 0.0, j.id))
        return [
            StepFailure(
                j.id,
                j.name,
                j.step,
                j.state,
                None if j.error is None else orjson.loads(j.error),
                j.reason,
            )
            for j in found[:limit]
        ]

    async def cancel_workflow(self, workflow_id: JobId, reason: str, now: float) -> tuple[int, int]:
        await anyio.lowlevel.checkpoint()
        check_text((reason,))
        ended: list[_Job] = []
        stopping = 0
        for job in self._workflow_jobs(workflow_id):
            if job.state in PENDING_STATES:
                job.reason, job.finished_at, job.cancel_requested = reason, now, False
                self._end(job, "cancelled", settle=False)  # settled below, as Postgres does
                ended.append(job)
            elif job.state == "running":
                job.reason, job.cancel_requested = reason, True
                self._emit("cancel", str(job.id))
                stopping += 1
        for job in ended:
            if job.has_dependents:
                self._settle(job)
        return len(ended), stopping

    async def parent_results(self, job_id: JobId) -> list[ParentResult]:
        await anyio.lowlevel.checkpoint()
        out: list[ParentResult] = []
        for parent_id in self._parents.get(job_id, ()):
            p = self.jobs.get(parent_id)
            if p is None:
                out.append(ParentResult(None, None, None, None, None))
            else:
                result = None if p.result is None else orjson.loads(p.result)
                out.append(ParentResult(p.id, p.name, p.step, p.state, result))
        return out
