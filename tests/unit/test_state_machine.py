"""The job state machine against the MemoryStore (tests/state_machine.py has the model)."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, settings

from asyncjobs.ids import new_ids
from asyncjobs.store.base import NewJob, Store
from asyncjobs.store.memory import MemoryStore
from tests.state_machine import ARGS, Backend, JobStoreMachine


async def _open() -> Store:
    return MemoryStore()


async def _count(store: Store) -> int:
    assert isinstance(store, MemoryStore)
    return len(store.jobs)


async def _close(store: Store) -> None:
    await store.close()


class MemoryMachine(JobStoreMachine):
    backend = Backend(_open, _count, _close)


MemoryMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_memory_store_follows_the_job_state_machine = MemoryMachine.TestCase


def test_promote_due_reports_the_next_future_job_when_its_limit_leaves_due_jobs_behind() -> None:
    # PostgresStore answers min(run_at) of the scheduled jobs still in the future, whatever the
    # limit; the conformance of the two stores requires the same answer here.
    store = MemoryStore()
    now = 1_700_000_000.0
    due_1, due_2, future = new_ids(3)
    jobs = [
        NewJob(due_1, "job", "a", 0, "scheduled", ARGS, now - 2, 1, None),
        NewJob(due_2, "job", "a", 0, "scheduled", ARGS, now - 1, 1, None),
        NewJob(future, "job", "a", 0, "scheduled", ARGS, now + 10, 1, None),
    ]

    async def scenario() -> tuple[int, float | None]:
        await store.enqueue(jobs)
        return await store.promote_due(now, 1)

    moved, next_run_at = asyncio.run(scenario())
    assert moved == 1
    assert store.jobs[due_1].state == "queued"
    assert store.jobs[due_2].state == "scheduled"
    assert next_run_at == now + 10
