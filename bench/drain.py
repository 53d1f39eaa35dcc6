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

Bare baseline, in the same repeat: the same backlog in its own schema, drained by
``baselines.drain`` (claim up to 500 with SKIP LOCKED, one task per job, completions batched
with ``unnest`` on a second connection), timed from opening its connections. The plan of its
completion statement is recorded once (JSON: ``bare_complete_plan``), since ADR 0002 saw that
shape degenerate.
"""

from __future__ import annotations

import statistics

import asyncpg

from . import baselines
from .common import (
    TABLE,
    Context,
    Figure,
    alternate,
    check_drained,
    fresh_schema,
    make_app,
    timed_drain,
)

NAME = "drain"
SCHEMA = "bench_drain"
BARE_SCHEMA = "bench_drain_bare"
CONCURRENCY = 1000  # the figure is for a node that may run 1000 jobs at once
TARGET_JOBS_PER_S = 25_000.0
DRAIN_TIMEOUT_S = 120.0


async def enqueue_backlog(dsn: str, schema: str, n: int) -> None:
    """A fresh schema holding n queued no-op jobs (one COPY), with fresh planner statistics."""
    await fresh_schema(dsn, schema)
    producer, jobs = make_app(dsn, schema)
    await producer.start(node=False)
    try:
        await producer.enqueue_many([jobs.noop.s() for _ in range(n)])
    finally:
        await producer.stop()
    con = await asyncpg.connect(dsn)
    try:
        # Fresh statistics, as autovacuum would eventually provide: the claim and complete
        # plans should not be judged on an empty-table estimate.
        await con.execute(f"VACUUM ANALYZE {schema}.{TABLE}")
    finally:
        await con.close()


async def _once(dsn: str, n: int) -> tuple[float, float]:
    """One drain; returns (seconds from start to all outcomes written, start-up seconds)."""
    await enqueue_backlog(dsn, SCHEMA, n)
    app, _ = make_app(dsn, SCHEMA, concurrency=CONCURRENCY)
    timed = await timed_drain(app, n, DRAIN_TIMEOUT_S)
    await _check_drained(dsn, SCHEMA, n)
    return timed


async def _bare(dsn: str, n: int) -> tuple[float, float]:
    """One bare drain of the same backlog; returns (seconds in all, connect seconds)."""
    await enqueue_backlog(dsn, BARE_SCHEMA, n)
    elapsed, connected = await baselines.drain(dsn, BARE_SCHEMA, n, CONCURRENCY)
    await _check_drained(dsn, BARE_SCHEMA, n)
    return elapsed, connected


async def _check_drained(dsn: str, schema: str, n: int) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await check_drained(con, schema, n)
    finally:
        await con.close()


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(20_000, 2_000)
    runs, bare = await alternate(
        ctx,
        lambda: _once(ctx.dsn, n),
        lambda: _bare(ctx.dsn, n),
        lambda r, b: (
            f"{n / r[0]:,.0f} jobs/s (start-up {r[1] * 1000:.0f} ms); bare {n / b[0]:,.0f} jobs/s"
        ),
    )
    startups = [startup for _, startup in runs]
    return [
        Figure(
            name="drain",
            unit="jobs/s",
            samples=[n / elapsed for elapsed, _ in runs],
            target=TARGET_JOBS_PER_S,
            higher_is_better=True,
            baseline_samples=[n / elapsed for elapsed, _ in bare],
            params={
                "n": n,
                "concurrency": CONCURRENCY,
                "job": "async def noop(): return None",
                "history": "kept (finished jobs are not deleted)",
                "timed": "app.start() until completer.flushed == n",
                "startup_s_median": statistics.median(startups),
                "startup_s": startups,
                "bare": "claim <= 500 (SKIP LOCKED), a task per job, completions batched "
                "with unnest on a second connection; timed from connecting",
                "bare_connect_s": [connected for _, connected in bare],
                # The last bare drain's table: every job succeeded, the statistics from before.
                "bare_complete_plan": await baselines.complete_plan(
                    ctx.dsn, BARE_SCHEMA, baselines.CLAIM_BATCH
                ),
            },
        )
    ]
