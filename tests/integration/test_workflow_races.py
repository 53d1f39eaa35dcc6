"""Races between the statements that end jobs and those that add or settle dependents.

Postgres only: these are about locks and snapshots under READ COMMITTED. Each race is made
certain, not likely, by a trigger (in the test's own schema) that holds one transaction
inside its critical window while the other runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from asyncjobs import Settings
from asyncjobs.ids import new_id
from asyncjobs.store.base import NewJob, NodeInfo, Outcome
from asyncjobs.store.postgres import PostgresStore

ERROR = b'{"type": "Boom", "message": "x", "traceback": ""}'


def job(name: str, queue: str = "default") -> NewJob:
    return NewJob(new_id(), name, queue, 0, "queued", b"[[],{}]", time.time(), 1, None)


@pytest.fixture
async def store(pg_settings: Settings) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_settings)
    await s.open()
    await s.migrate()
    yield s
    await s.close()


async def node(store: PostgresStore, *queues: str) -> object:
    node_id = new_id()
    await store.register_node(NodeInfo(node_id, "h", 1, "v", queues, 10))
    return node_id


async def state_of(store: PostgresStore, job_id: object) -> tuple[str, int, str | None]:
    row = await store.pool.fetchrow(
        f"SELECT state::text, pending_deps, reason FROM {store.schema}.asyncjobs_jobs "
        "WHERE id = $1",
        job_id,
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_a_dependent_added_while_its_upstream_fails_is_never_left_waiting(
    store: PostgresStore, pg_dsn: str
) -> None:
    """F fails while N is being added after W (which waits for F): the cascade that cancels
    W must see N's edge, which committed after the cascade began."""
    nid = await node(store, "default")
    f = job("f")
    await store.enqueue([f])
    assert [c.id for c in await store.claim(nid, {"default": 10}, time.time())] == [f.id]
    w = job("w")
    await store.enqueue_after(w, [f.id])
    con = await asyncpg.connect(pg_dsn)
    try:
        # Holds enqueue_after between locking W and committing N's edge.
        await con.execute(f"""
            CREATE FUNCTION {store.schema}.hold() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
            CREATE TRIGGER hold AFTER INSERT ON {store.schema}.asyncjobs_job_deps
            FOR EACH STATEMENT EXECUTE FUNCTION {store.schema}.hold();""")
        n = job("n")
        adding = asyncio.create_task(store.enqueue_after(n, [w.id]))
        # Fail F once the insert is inside its window (W locked, edge not yet committed).
        deadline = time.monotonic() + 10
        while not await con.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        ):
            assert time.monotonic() < deadline, "enqueue_after never reached its window"
            await asyncio.sleep(0.01)
        outcome = Outcome(f.id, 1, "failed", None, ERROR, time.time(), None, None)
        assert await store.complete(nid, [outcome]) == []
        await adding
    finally:
        await con.close()
    assert await state_of(store, w.id) == ("cancelled", 1, "upstream_failed")
    assert (await state_of(store, n.id))[0] == "cancelled"
    assert (await state_of(store, n.id))[2] == "upstream_failed"


async def test_two_completers_with_mixed_outcomes_over_crossed_dependents_do_not_deadlock(
    store: PostgresStore, pg_dsn: str
) -> None:
    """X runs after p1 and q2, Y after p2 and q1. Node A completes p1 (succeeds) and q1
    (fails) while node B completes p2 (succeeds) and q2 (fails): each settles both X and Y,
    and must lock them in one order."""
    na, nb = await node(store, "qa"), await node(store, "qb")
    p1, q1, p2, q2 = job("p1", "qa"), job("q1", "qa"), job("p2", "qb"), job("q2", "qb")
    await store.enqueue([p1, q1, p2, q2])
    await store.claim(na, {"qa": 10}, time.time())
    await store.claim(nb, {"qb": 10}, time.time())
    x, y = job("x", "z"), job("y", "z")
    await store.enqueue_after(x, [p1.id, q2.id])
    await store.enqueue_after(y, [p2.id, q1.id])
    con = await asyncpg.connect(pg_dsn)
    try:
        # Each settle holds its first lock a while, so both hold one before either goes on.
        await con.execute(f"""
            CREATE FUNCTION {store.schema}.hold() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
            CREATE TRIGGER hold AFTER UPDATE ON {store.schema}.asyncjobs_jobs FOR EACH ROW
            WHEN (OLD.state = 'waiting') EXECUTE FUNCTION {store.schema}.hold();""")
    finally:
        await con.close()
    now = time.time()

    async def complete(node_id: object, ok: NewJob, bad: NewJob) -> list[object]:
        return await store.complete(
            node_id,  # type: ignore[arg-type]
            [
                Outcome(ok.id, 1, "succeeded", b"1", None, now, None, None),
                Outcome(bad.id, 1, "failed", None, ERROR, now, None, None),
            ],
        )

    assert await asyncio.gather(complete(na, p1, q1), complete(nb, p2, q2)) == [[], []]
    for dependent in (x, y):
        state, _, reason = await state_of(store, dependent.id)
        assert (state, reason) == ("cancelled", "upstream_failed")


async def test_a_failure_does_not_walk_again_what_an_earlier_failure_cancelled(
    store: PostgresStore,
) -> None:
    """Two members of a group fail one after the other: the second finds the callback (and
    everything after it) cancelled already, and stops there."""
    nid = await node(store, "default")
    members = [job(f"m{i}") for i in range(2)]
    await store.enqueue(members)
    await store.claim(nid, {"default": 10}, time.time())
    callback = job("cb")
    await store.enqueue_after(callback, [m.id for m in members])
    after = job("after")
    await store.enqueue_after(after, [callback.id])
    for m in members:
        outcome = Outcome(m.id, 1, "failed", None, ERROR, time.time(), None, None)
        assert await store.complete(nid, [outcome]) == []
        assert await state_of(store, after.id) == ("cancelled", 1, "upstream_failed")
    settled = await store.pool.fetchval(
        f"SELECT {store.schema}.asyncjobs_settle_jobs($1::uuid[], "
        f"$2::{store.schema}.asyncjobs_job_state[])",
        [members[1].id],
        ["failed"],
    )
    assert settled == 0  # nothing waiting was found downstream: the walk stopped at once
