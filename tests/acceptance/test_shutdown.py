"""Stopping a node process with signals (DESIGN §4, Shutdown): drain, grace, second signal."""

from __future__ import annotations

import signal
import time
import uuid

import asyncpg

from asyncjobs import App

from ..helpers import wait_until
from .nodes import NodeRunner


async def jobs_by_id(db: asyncpg.Connection, schema: str) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await db.fetch(
        f"SELECT id, state::text AS state, attempt, reason, node_id, finished_at, result "
        f"FROM {schema}.asyncjobs_jobs"
    )
    return {row["id"]: row for row in rows}


async def running_ids(db: asyncpg.Connection, schema: str) -> set[uuid.UUID]:
    rows = await db.fetch(f"SELECT id FROM {schema}.asyncjobs_jobs WHERE state = 'running'")
    return {row["id"] for row in rows}


async def events(db: asyncpg.Connection, schema: str, event: str) -> list[uuid.UUID]:
    rows = await db.fetch(
        f"SELECT job_id FROM {schema}.acceptance_runs WHERE event = $1 ORDER BY seq", event
    )
    return [row["job_id"] for row in rows]


async def stopped_at(db: asyncpg.Connection, schema: str, node_id: uuid.UUID | None) -> object:
    return await db.fetchval(
        f"SELECT stopped_at FROM {schema}.asyncjobs_nodes WHERE id = $1", node_id
    )


async def test_sigterm_lets_running_jobs_finish_and_leaves_queued_jobs_for_another_node(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_schema: str
) -> None:
    node = await nodes.start("--concurrency", "4", "--shutdown-grace", "20")
    ids = await producer.enqueue_many([producer.signature("hold", 1.0) for _ in range(12)])

    async def four_running() -> set[uuid.UUID] | None:
        running = await running_ids(db, pg_schema)
        return running if len(running) == 4 else None

    running = await wait_until(four_running, timeout=10, what="4 jobs running on the node")
    node.send(signal.SIGTERM)
    code = await node.wait_exit(15, "after SIGTERM with 1 s jobs running")

    assert code == 0, node.output()
    jobs = await jobs_by_id(db, pg_schema)
    for job_id in running:
        job = jobs[job_id]
        assert (job["state"], job["attempt"], job["node_id"]) == ("succeeded", 1, node.node_id), (
            f"a job running at SIGTERM should have been let finish: {dict(job)}\n{node.output()}"
        )
    waiting = set(ids) - running
    assert len(waiting) == 8
    for job_id in waiting:
        job = jobs[job_id]
        assert (job["state"], job["attempt"], job["node_id"]) == ("queued", 0, None), (
            f"the node claimed a job after SIGTERM: {dict(job)}\n{node.output()}"
        )
    assert sorted(await events(db, pg_schema, "start")) == sorted(running)
    assert sorted(await events(db, pg_schema, "end")) == sorted(running)
    assert await stopped_at(db, pg_schema, node.node_id) is not None, (
        "the node row has no stopped_at after a clean shutdown"
    )

    other = await nodes.start("--concurrency", "8")

    async def all_succeeded() -> bool:
        states = {row["state"] for row in (await jobs_by_id(db, pg_schema)).values()}
        return states == {"succeeded"}

    await wait_until(all_succeeded, timeout=15, what="another node to run the queued jobs")
    jobs = await jobs_by_id(db, pg_schema)
    assert {jobs[job_id]["node_id"] for job_id in waiting} == {other.node_id}
    assert all(jobs[job_id]["attempt"] == 1 for job_id in ids)


async def test_sigterm_past_the_grace_period_cancels_at_most_once_jobs_and_requeues_retryable_ones(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_schema: str
) -> None:
    node = await nodes.start("--shutdown-grace", "1")
    once = await producer.enqueue("hold", 60)
    retryable = await producer.enqueue("hold_retryable", 60)

    async def both_started() -> bool:
        return set(await events(db, pg_schema, "start")) == {once, retryable}

    await wait_until(both_started, timeout=10, what="both jobs to start")
    sent = node.send(signal.SIGTERM)
    code = await node.wait_exit(15, "after SIGTERM with --shutdown-grace 1")
    elapsed = time.monotonic() - sent

    assert code == 0, node.output()
    assert 0.9 <= elapsed < 5.0, f"exited {elapsed:.2f} s after SIGTERM\n{node.output()}"
    jobs = await jobs_by_id(db, pg_schema)
    assert (jobs[once]["state"], jobs[once]["reason"]) == ("cancelled", "node shutdown"), dict(
        jobs[once]
    )
    assert jobs[once]["finished_at"] is not None
    assert (
        jobs[retryable]["state"],
        jobs[retryable]["reason"],
        jobs[retryable]["attempt"],
        jobs[retryable]["finished_at"],
    ) == ("queued", "node shutdown", 1, None), dict(jobs[retryable])
    assert await events(db, pg_schema, "end") == []
    assert await stopped_at(db, pg_schema, node.node_id) is not None


async def test_second_signal_cancels_running_jobs_without_waiting_for_the_grace_period(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_schema: str
) -> None:
    node = await nodes.start("--shutdown-grace", "30")
    job_id = await producer.enqueue("hold", 60)

    async def started() -> bool:
        return await events(db, pg_schema, "start") == [job_id]

    await wait_until(started, timeout=10, what="the job to start")
    node.send(signal.SIGTERM)
    await node.wait_output("draining")  # the first signal is handled: the node waits 30 s
    sent = node.send(signal.SIGINT)
    code = await node.wait_exit(6, "after a second signal (the grace period is 30 s)")
    elapsed = time.monotonic() - sent

    assert code == 0, node.output()
    assert elapsed < 3.0, f"exited {elapsed:.2f} s after the second signal\n{node.output()}"
    job = (await jobs_by_id(db, pg_schema))[job_id]
    assert (job["state"], job["reason"]) == ("cancelled", "node shutdown"), dict(job)
    assert await events(db, pg_schema, "end") == []
