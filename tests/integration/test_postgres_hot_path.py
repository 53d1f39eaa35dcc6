"""Postgres-specific guarantees of the hot path (ADR 0002).

- A completion racing a concurrent update of the same running row still applies.
- Claim and completion stay linear when the table's statistics are stale. This is measured in
  buffers touched, which is deterministic, not in seconds.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from asyncjobs import JobState, Settings
from asyncjobs.ids import new_id
from asyncjobs.store.base import MAX_INPUT_BYTES, NewJob, NodeInfo, Outcome
from asyncjobs.store.postgres import PostgresStore

ARGS = orjson.dumps(([], {}))


@pytest.fixture
async def store(pg_settings: Settings) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_settings)
    await s.open()
    await s.migrate()
    yield s
    await s.close()


async def running_jobs(store: PostgresStore, n: int) -> tuple[NodeInfo, list[NewJob]]:
    info = NodeInfo(new_id(), "h", 1, "0", ("default",), n)
    await store.register_node(info)
    jobs = [
        NewJob(new_id(), "j", "default", 0, "queued", ARGS, time.time(), 1, None) for _ in range(n)
    ]
    await store.enqueue_bulk(jobs)
    claimed = await store.claim(info.id, {"default": n}, time.time())
    assert len(claimed) == n
    return info, jobs


async def test_completion_racing_a_concurrent_update_of_the_row_still_applies(
    store: PostgresStore, pg_settings: Settings
) -> None:
    info, jobs = await running_jobs(store, 3)
    target = jobs[1].id
    other = await asyncpg.connect(pg_settings.dsn)
    try:
        tx = other.transaction()
        await tx.start()
        # What a cancel request does to a running row: update it, holding its lock.
        await other.execute(
            f"UPDATE {pg_settings.schema}.asyncjobs_jobs SET cancel_requested = true WHERE id = $1",
            target,
        )
        outcomes = [
            Outcome(j.id, 1, "succeeded", b'"done"', None, time.time(), None, None) for j in jobs
        ]
        completing = asyncio.create_task(store.complete(info.id, outcomes))
        await asyncio.sleep(0.2)  # let the completion reach the locked row and wait on it
        assert not completing.done()
        await tx.commit()
        assert await asyncio.wait_for(completing, 10) == []  # nothing rejected as stale
    finally:
        await other.close()
    record = await store.get(target)
    assert record is not None and record.state is JobState.SUCCEEDED and record.result == "done"


def buffers_touched(plan: list[asyncpg.Record]) -> int:
    text = "\n".join(r[0] for r in plan)
    first = re.search(r"Buffers: shared((?: \w+=\d+)+)", text)
    assert first is not None, text
    return sum(int(n) for n in re.findall(r"=(\d+)", first.group(1)))


async def test_claim_and_completion_stay_linear_with_stale_statistics(
    store: PostgresStore, pg_settings: Settings
) -> None:
    n = 4000  # the healthy plans touch ~12 buffers per job; a quadratic one ~n/40 per job
    t = f"{pg_settings.schema}.asyncjobs_"
    con = await asyncpg.connect(pg_settings.dsn)
    try:
        # History the planner knows about, and statistics that say nothing is running.
        await con.execute(
            f"INSERT INTO {t}jobs (id, name, queue, state, args, run_at) "
            "SELECT gen_random_uuid(), 'old', 'default', 'succeeded', '[[],{}]', now() "
            "FROM generate_series(1, 20000)"
        )
        await con.execute(f"ANALYZE {t}jobs")
        info = NodeInfo(new_id(), "h", 1, "0", ("default",), n)
        await store.register_node(info)
        jobs = [
            NewJob(new_id(), "j", "default", 0, "queued", ARGS, time.time(), 1, None)
            for _ in range(n)
        ]
        await store.enqueue_bulk(jobs)

        claim_plan = await con.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + store.q["claim"],
            info.id,
            ["default"],
            [n],
            time.time(),
            MAX_INPUT_BYTES,
            [],
        )
        assert buffers_touched(claim_plan) < 20 * n, "\n".join(r[0] for r in claim_plan)

        ids = [j.id for j in jobs]
        complete_plan = await con.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + store.q["complete"],
            info.id,
            ids,
            [1] * n,
            ["succeeded"] * n,
            [None] * n,
            [None] * n,
            [time.time()] * n,
            [None] * n,
            [None] * n,
            [0.001] * n,
            [None] * n,
        )
        # A quadratic plan touches millions of buffers here; a linear one a few per job.
        assert buffers_touched(complete_plan) < 20 * n, "\n".join(r[0] for r in complete_plan)
        done = await con.fetchval(
            f"SELECT count(*) FROM {t}jobs WHERE state = 'succeeded' AND name = 'j'"
        )
        assert done == n
    finally:
        await con.close()
