"""Cancelling a job that runs in another process (DESIGN §4, Canceller; §10, cancel requested)."""

from __future__ import annotations

import time

import asyncpg

from asyncjobs import App, JobState

from ..helpers import wait_until
from .nodes import NodeRunner


async def test_cancel_of_a_running_job_takes_effect_in_the_node_process_within_one_second(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_schema: str
) -> None:
    # The default heartbeat (5 s) is far slower than the limit, so only the pushed cancel
    # request (NOTIFY) can meet it.
    node = await nodes.start()
    job_id = await producer.enqueue("hold", 60)

    async def started() -> bool:
        return bool(
            await db.fetchval(
                f"SELECT count(*) FROM {pg_schema}.acceptance_runs WHERE job_id = $1", job_id
            )
        )

    await wait_until(started, timeout=10, what="the job to start on the node")

    async def cancelled() -> bool:
        state = await db.fetchval(
            f"SELECT state::text FROM {pg_schema}.asyncjobs_jobs WHERE id = $1", job_id
        )
        return state == "cancelled"

    asked = time.monotonic()
    assert await producer.cancel(job_id) is JobState.RUNNING
    await wait_until(
        cancelled,
        timeout=10,
        interval=0.005,
        what=f"the job to end cancelled\n{node.output()}",
    )
    elapsed = time.monotonic() - asked

    assert elapsed < 1.0, f"the cancel took {elapsed:.3f} s to take effect\n{node.output()}"
    record = await producer.get(job_id)
    assert record.reason == "cancelled by request"
    assert record.finished_at is not None
    assert record.attempt == 1
    end = await db.fetchval(
        f"SELECT count(*) FROM {pg_schema}.acceptance_runs WHERE job_id = $1 AND event = 'end'",
        job_id,
    )
    assert end == 0, "the job ran to its end although it was cancelled"
