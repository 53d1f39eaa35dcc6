"""Bare baselines: each benchmark's work done with plain asyncpg and asyncio, no asyncjobs code.

The machine's commit rate and CPU drift by tens of percent from one run to the next, so an
absolute figure compares only within its run. Each benchmark therefore also times the same
work done the simplest way, right next to its own measurement, and reports the ratio.

Every function here takes a schema that the caller has freshly migrated (and, for the drain,
filled), so the bare code writes the same table, with the same indexes, as asyncjobs does. The
timed spans contain asyncpg calls and a few lines of Python, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psutil
from asyncpg.pgproto.pgproto import UUID

from .bare_proc import RUNNING_LINE, TABLE, channel, claim_sql
from .common import open_loop, wait_for_count
from .node_proc import ChildProcess

COLUMNS = ("id", "name", "queue", "priority", "state", "args", "run_at", "max_attempts")
ARGS = "[[],{}]"  # a no-op job's encoded (args, kwargs)
CLAIM_BATCH = 500  # asyncjobs' CLAIM_BATCH_SIZE


def ordered_ids(n: int) -> list[UUID]:
    """n ids in the UUIDv7 layout, increasing, as asyncjobs makes them.

    Random (v4) ids would land all over the primary-key index and slow the bare insert down;
    like asyncjobs', these land at its right edge.
    """
    base = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | 0b10 << 62
    return [UUID((base | i).to_bytes(16, "big")) for i in range(n)]


def insert_notify_sql(schema: str) -> str:
    """Inserts one ready no-op job with id $1 and wakes the listeners, in one statement."""
    return f"""
        WITH ins AS (
            INSERT INTO {schema}.{TABLE} ({", ".join(COLUMNS)})
            VALUES ($1, 'noop', 'default', 0, 'queued', '{ARGS}', now(), 1)
            RETURNING queue
        )
        SELECT pg_notify('{channel(schema)}', 'q:' || queue) FROM ins"""


# -- enqueue -------------------------------------------------------------------------------------


async def enqueue_sequential(dsn: str, schema: str, n: int, warmup: int) -> float:
    """Rows per second of single-row autocommit INSERT + NOTIFY on one held connection."""
    sql = insert_notify_sql(schema)
    ids = ordered_ids(warmup + n)
    con = await asyncpg.connect(dsn)
    try:
        for job_id in ids[:warmup]:
            await con.execute(sql, job_id)
        t0 = time.perf_counter()
        for job_id in ids[warmup:]:
            await con.execute(sql, job_id)
        return n / (time.perf_counter() - t0)
    finally:
        await con.close()


async def commit_limit(dsn: str, schema: str, n: int, warmup: int) -> float:
    """Commits per second of a one-row, one-integer-column INSERT: the floor under any enqueue."""
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f"CREATE TABLE {schema}.bare_tiny (x integer)")
        sql = f"INSERT INTO {schema}.bare_tiny VALUES ($1)"
        for i in range(warmup):
            await con.execute(sql, i)
        t0 = time.perf_counter()
        for i in range(n):
            await con.execute(sql, i)
        return n / (time.perf_counter() - t0)
    finally:
        await con.close()


async def enqueue_many(dsn: str, schema: str, n: int, warmup: int) -> float:
    """Rows per second of one COPY of n records built beforehand, in one transaction."""
    now = datetime.now(UTC)
    ids = ordered_ids(warmup + n)
    records = [(i, "noop", "default", 0, "queued", ARGS, now, 1) for i in ids]
    con = await asyncpg.connect(dsn)
    try:
        # The same warm-up as asyncjobs': a first COPY opens and primes the connection.
        await con.copy_records_to_table(
            TABLE, schema_name=schema, columns=COLUMNS, records=records[:warmup]
        )
        batch = records[warmup:]
        t0 = time.perf_counter()
        async with con.transaction():
            await con.copy_records_to_table(
                TABLE, schema_name=schema, columns=COLUMNS, records=batch
            )
        return n / (time.perf_counter() - t0)
    finally:
        await con.close()


# -- drain ---------------------------------------------------------------------------------------


def complete_sql(schema: str) -> str:
    """Marks the given (id, attempt) pairs succeeded: the textbook batch update by unnest."""
    return f"""
        UPDATE {schema}.{TABLE} AS j SET state = 'succeeded', finished_at = now()
        FROM unnest($1::uuid[], $2::integer[]) AS u(id, attempt)
        WHERE j.id = u.id AND j.attempt = u.attempt"""


async def _noop() -> None:
    return None


async def drain(dsn: str, schema: str, n: int, concurrency: int) -> tuple[float, float]:
    """Work through n queued no-op jobs; returns (seconds in all, seconds to connect).

    A fetcher claims up to 500 at a time on one connection while slots are free, one task per
    job; a completer writes the finished ones in batches on a second connection.
    """
    t0 = time.perf_counter()
    claim_con, done_con = await asyncio.gather(asyncpg.connect(dsn), asyncpg.connect(dsn))
    connected = time.perf_counter() - t0
    claim, complete = claim_sql(schema), complete_sql(schema)
    loop = asyncio.get_running_loop()
    running: dict[UUID, asyncio.Task[None]] = {}
    done_ids: list[UUID] = []
    done_attempts: list[int] = []
    slot_free = asyncio.Event()
    has_done = asyncio.Event()

    async def run_one(job_id: UUID, attempt: int) -> None:
        await _noop()
        del running[job_id]
        done_ids.append(job_id)
        done_attempts.append(attempt)
        slot_free.set()
        has_done.set()

    async def fetch() -> None:
        claimed = 0
        while claimed < n:
            free = concurrency - len(running)
            if free <= 0:
                slot_free.clear()
                await slot_free.wait()
                continue
            rows = await claim_con.fetch(claim, min(free, CLAIM_BATCH))
            if not rows:
                raise RuntimeError(f"the queue ran dry after {claimed} of {n} jobs")
            claimed += len(rows)
            for job_id, attempt in rows:
                running[job_id] = loop.create_task(run_one(job_id, attempt))

    async def write() -> None:
        nonlocal done_ids, done_attempts
        written = 0
        while written < n:
            await has_done.wait()
            has_done.clear()
            ids, attempts = done_ids, done_attempts
            done_ids, done_attempts = [], []
            status = await done_con.execute(complete, ids, attempts)
            if int(status.split()[-1]) != len(ids):
                raise RuntimeError(f"completing {len(ids)} jobs updated {status!r}")
            written += len(ids)

    try:
        await asyncio.gather(fetch(), write())
        return time.perf_counter() - t0, connected
    finally:
        await asyncio.gather(claim_con.close(), done_con.close())


async def complete_plan(dsn: str, schema: str, n: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the bare completion of n finished jobs, rolled back.

    ADR 0002 found this statement shape (with a state condition) planned as a quadratic join
    on stale statistics; this records which plan the bare one gets on the drained table.
    """
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(f"SELECT id, attempt FROM {schema}.{TABLE} LIMIT $1", n)
        tr = con.transaction()
        await tr.start()
        try:
            plan_json = await con.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {complete_sql(schema)}",
                [r[0] for r in rows],
                [r[1] for r in rows],
            )
        finally:
            await tr.rollback()
    finally:
        await con.close()
    doc = json.loads(plan_json)[0]
    nodes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(f"{node['Node Type']} {node.get('Relation Name') or ''}".strip())
        for child in node.get("Plans", []):
            walk(child)

    walk(doc["Plan"])
    return {"rows": len(rows), "nodes": nodes, "execution_ms": doc["Execution Time"]}


# -- latency -------------------------------------------------------------------------------------


async def latency(
    dsn: str, schema: str, n: int, rate_per_s: float, warmup: int, idle_s: float, batch: int
) -> tuple[list[float], float]:
    """INSERT+NOTIFY here, LISTEN -> claim in a child; returns latencies (ms) and worst lag (s).

    The same open-loop schedule as asyncjobs' figure. Sends share one held connection, so a
    send due while another is in flight waits for it (asyncjobs would batch the two).
    """
    sql = insert_notify_sql(schema)
    ids = ordered_ids(warmup + n)
    sent = [0.0] * n
    args = [sys.executable, "-m", "bench.bare_proc", "listen", "--dsn", dsn, "--schema", schema]
    con = await asyncpg.connect(dsn)
    lock = asyncio.Lock()

    async def send(i: int) -> None:
        sent[i] = time.time()
        async with lock:
            await con.execute(sql, ids[warmup + i])

    try:
        async with ChildProcess([*args, "--batch", str(batch)]) as consumer:
            for i in range(warmup):
                await con.execute(sql, ids[i])
                await wait_for_count(con, schema, "running", i + 1, timeout=10)
            await asyncio.sleep(idle_s)
            worst_lag = await open_loop(send, n, rate_per_s)
            await wait_for_count(con, schema, "running", warmup + n, timeout=15)
            out = await consumer.stop()
    finally:
        await con.close()
    if not out.strip():
        raise RuntimeError("the bare consumer was killed before it reported its claims")
    started = dict(json.loads(out))
    latencies = [(started[str(ids[warmup + i])] - sent[i]) * 1000 for i in range(n)]
    return latencies, worst_lag


# -- memory --------------------------------------------------------------------------------------


async def sleepers(n: int, settle_s: float) -> tuple[float, int, int]:
    """RSS growth per bare ``asyncio.sleep(30)`` task in a uvloop child: (bytes, before, after)."""
    args = [sys.executable, "-m", "bench.bare_proc", "sleepers", "--n", str(n)]
    async with ChildProcess(args) as child:
        process = psutil.Process(child.pid)
        await asyncio.sleep(settle_s)
        rss_before = process.memory_info().rss
        process.send_signal(signal.SIGUSR1)
        line = await child.readline(timeout=60)
        if line.strip() != RUNNING_LINE:
            raise RuntimeError(f"the bare sleepers did not start (the child said {line!r})")
        await asyncio.sleep(settle_s)
        rss_after = process.memory_info().rss
    return (rss_after - rss_before) / n, rss_before, rss_after
