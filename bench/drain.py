"""drain: how fast one node works through a backlog of no-op jobs, history kept.

Each repeat enqueues N no-op jobs (one COPY, from a producer-only app), runs VACUUM ANALYZE so
the planner sees the backlog as it is, then starts a node in this process with
``concurrency=1000`` and times from just before ``app.start()`` until the node's completer
has written all N outcomes. Start-up (pool, LISTEN, migration check, node registration) is
inside the timed span on purpose: it is what a node pays to drain a backlog, and it is
reported separately in the JSON (``startup_s``).

The clock stops on the completer's in-process counter rather than on a polling count query,
so the measurement adds no load to the database it measures; a count query afterwards checks
that the database agrees (no job left queued or running, N succeeded).
"""

from __future__ import annotations

import statistics
import time

import asyncpg

from .common import Context, Figure, fresh_schema, make_app, state_counts, wait_until

NAME = "drain"
SCHEMA = "bench_drain"
CONCURRENCY = 1000  # the figure is for a node that may run 1000 jobs at once
TARGET_JOBS_PER_S = 25_000.0
DRAIN_TIMEOUT_S = 120.0


async def _enqueue_backlog(dsn: str, n: int) -> None:
    producer, jobs = make_app(dsn, SCHEMA)
    await producer.start(node=False)
    try:
        await producer.enqueue_many([jobs.noop.s() for _ in range(n)])
    finally:
        await producer.stop()
    con = await asyncpg.connect(dsn)
    try:
        # Fresh statistics, as autovacuum would eventually provide: the claim and complete
        # plans should not be judged on an empty-table estimate.
        await con.execute(f"VACUUM ANALYZE {SCHEMA}.asyncjobs_jobs")
    finally:
        await con.close()


async def _once(dsn: str, n: int) -> tuple[float, float]:
    """One drain; returns (seconds from start to all outcomes written, start-up seconds)."""
    await fresh_schema(dsn, SCHEMA)
    await _enqueue_backlog(dsn, n)
    app, _ = make_app(dsn, SCHEMA, concurrency=CONCURRENCY)
    t0 = time.perf_counter()
    await app.start()
    try:
        started = time.perf_counter()
        completer = app.node.completer
        await wait_until(lambda: completer.flushed >= n, timeout=DRAIN_TIMEOUT_S, what="the drain")
        elapsed = time.perf_counter() - t0
    finally:
        await app.stop()
    con = await asyncpg.connect(dsn)
    try:
        counts = await state_counts(con, SCHEMA)
    finally:
        await con.close()
    if counts.get("succeeded", 0) != n or counts.get("queued") or counts.get("running"):
        raise RuntimeError(f"after the drain the jobs table holds {counts}, not {n} succeeded")
    return elapsed, started - t0


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(20_000, 2_000)
    rates: list[float] = []
    startups: list[float] = []
    for i in range(ctx.repeats):
        elapsed, startup = await _once(ctx.dsn, n)
        rates.append(n / elapsed)
        ctx.note(f"repeat {i + 1}: {n / elapsed:,.0f} jobs/s (start-up {startup * 1000:.0f} ms)")
        startups.append(startup)
    return [
        Figure(
            name="drain",
            unit="jobs/s",
            samples=rates,
            target=TARGET_JOBS_PER_S,
            higher_is_better=True,
            params={
                "n": n,
                "concurrency": CONCURRENCY,
                "job": "async def noop(): return None",
                "history": "kept (finished jobs are not deleted)",
                "timed": "app.start() until completer.flushed == n",
                "startup_s_median": statistics.median(startups),
                "startup_s": startups,
            },
        )
    ]
