"""WorkflowsMixin: PostgresStore's workflows and dependencies (submit, after=, status, cancel)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import orjson

from ...clock import to_datetime
from ...errors import DependencyNotFoundError
from ...jobs import JobId
from ..base import (
    TERMINAL_STATES,
    NewJob,
    NewWorkflow,
    ParentResult,
    StepFailure,
    WorkflowInfo,
    upstream_reason,
)
from .base import PgStoreBase
from .jobs import _JOB_COLUMNS

_WORKFLOW_JOB_COLUMNS = (
    *_JOB_COLUMNS, "workflow_id", "step", "pending_deps", "has_dependents", "pass_results",
    "concurrency_key", "concurrency_limit", "rate_key", "rate_count", "rate_period", "trace",
)  # fmt: skip
_EDGE_COLUMNS = ("job_id", "ord", "depends_on")


class WorkflowsMixin(PgStoreBase):
    """Workflows (DAGs written in one transaction) and jobs enqueued after others."""

    async def submit_workflow(self, workflow: NewWorkflow) -> None:
        ready_queues: set[str] = set()
        earliest_scheduled: float | None = None
        records = []
        for w in workflow.jobs:
            j = w.job
            if j.state == "queued":
                ready_queues.add(j.queue)
            elif j.state == "scheduled" and (
                earliest_scheduled is None or j.run_at < earliest_scheduled
            ):
                earliest_scheduled = j.run_at
            records.append(
                (j.id, j.name, j.queue, j.priority, j.state, j.args, to_datetime(j.run_at),
                 j.max_attempts, workflow.id, w.step, w.pending_deps, w.has_dependents,
                 w.pass_results, j.concurrency_key, j.concurrency_limit, j.rate_key,
                 j.rate_count, j.rate_period, j.trace)
            )  # fmt: skip
        async with self._errors(), self._enqueue_lane.connection() as con, con.transaction():
            inserted = await con.fetchval(
                self.q["insert_workflow"], workflow.id, workflow.name, workflow.sinks
            )
            if inserted is None:
                return  # a retried submission whose first try committed: all is written
            await con.copy_records_to_table(
                self.table, schema_name=self.schema, columns=_WORKFLOW_JOB_COLUMNS,
                records=records,
            )  # fmt: skip
            if workflow.edges:
                await con.copy_records_to_table(
                    f"{self.prefix}job_deps", schema_name=self.schema, columns=_EDGE_COLUMNS,
                    records=workflow.edges,
                )  # fmt: skip
            await con.execute(self.q["notify_new"], sorted(ready_queues), earliest_scheduled)

    async def enqueue_after(
        self,
        job: NewJob,
        after: Sequence[JobId],
        *,
        workflow_id: JobId | None = None,
        step: str | None = None,
    ) -> JobId:
        deps = list(dict.fromkeys(after))  # each dependency once, in the order given

        async def body(con: asyncpg.Connection) -> None:
            rows = await con.fetch(self.q["lock_dependencies"], deps)
            states = {r["id"]: r["state"] for r in rows}
            missing = [d for d in deps if d not in states]
            if missing:
                raise DependencyNotFoundError(job.name, missing)
            active = [d for d in deps if states[d] not in TERMINAL_STATES]
            reason = upstream_reason(states[d] for d in deps)
            pending = 0 if reason else len(active)
            state = "cancelled" if reason else ("waiting" if pending else job.state)
            if active and not reason:
                await con.execute(self.q["mark_dependents"], active)
            found = await con.fetchval(
                self.q["insert_dependent"], job.id, job.name, job.queue, job.priority, state,
                job.args, job.run_at, job.max_attempts, workflow_id, pending, step, None,
                reason, job.concurrency_key, job.concurrency_limit, job.rate_key,
                job.rate_count, job.rate_period, job.trace,
            )  # fmt: skip
            if found is not None:  # not a retried insert
                await con.execute(
                    self.q["insert_edges"], [job.id] * len(deps), list(range(len(deps))), deps
                )

        await self._transaction(body)
        return job.id

    async def workflow_info(self, workflow_id: JobId) -> WorkflowInfo | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["workflow_info"], workflow_id)
        if row is None:
            return None
        return WorkflowInfo(
            row["id"], row["name"], row["created_at"], list(row["sinks"]),
            orjson.loads(row["counts"]),
        )  # fmt: skip

    async def workflow_failures(self, workflow_id: JobId, limit: int) -> list[StepFailure]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["workflow_failures"], workflow_id, limit)
        return [
            StepFailure(
                r["id"],
                r["name"],
                r["step"],
                r["state"],
                None if r["error"] is None else orjson.loads(r["error"]),
                r["reason"],
            )
            for r in rows
        ]

    async def cancel_workflow(self, workflow_id: JobId, reason: str, now: float) -> tuple[int, int]:
        async def body(con: asyncpg.Connection) -> tuple[int, int]:
            locked = await con.fetch(self.q["lock_workflow"], workflow_id)
            if not locked:
                return 0, 0
            row = await con.fetchrow(
                self.q["cancel_locked"], [r["id"] for r in locked], reason, now
            )
            assert row is not None
            ended = list(row["ended"] or ())
            if ended:  # dependents outside the workflow (enqueued with after=) end too
                await con.execute(self.q["settle_jobs"], ended, ["cancelled"] * len(ended))
            return int(row["cancelled"]), int(row["stopping"])

        return await self._transaction(body)

    async def parent_results(self, job_id: JobId) -> list[ParentResult]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["parent_results"], job_id)
        return [
            ParentResult(
                r["id"],
                r["name"],
                r["step"],
                r["state"],
                None if r["result"] is None else orjson.loads(r["result"]),
            )
            for r in rows
        ]
