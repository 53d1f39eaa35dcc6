"""enqueue_sequential: one producer awaiting ``app.enqueue(noop)`` in a loop.

This is the round-trip-bound case: nothing overlaps, so every call is one INSERT (with its
NOTIFY) and one commit. A few warm-up calls first open the enqueue connection, which the
store opens lazily, so the figure is the steady state.

Bare baseline, in the same repeat: the same rows inserted one autocommit ``INSERT ...
pg_notify`` statement at a time on one held asyncpg connection. Also recorded (JSON only):
the commit limit, single-row inserts into a one-integer-column table.
"""

from __future__ import annotations

import statistics
import time

from . import baselines
from .common import Context, Figure, alternate, fresh_schema, make_app

NAME = "enqueue_sequential"
SCHEMA = "bench_enqueue_sequential"
BARE_SCHEMA = "bench_enqueue_sequential_bare"
TARGET_JOBS_PER_S = 3_000.0
WARMUP = 50


async def _once(dsn: str, n: int) -> float:
    await fresh_schema(dsn, SCHEMA)
    app, jobs = make_app(dsn, SCHEMA)
    await app.start(node=False)
    try:
        for _ in range(WARMUP):
            await app.enqueue(jobs.noop)
        t0 = time.perf_counter()
        for _ in range(n):
            await app.enqueue(jobs.noop)
        return n / (time.perf_counter() - t0)
    finally:
        await app.stop()


async def _bare(dsn: str, n: int) -> tuple[float, float]:
    """(bare INSERT+NOTIFY rate, one-column commit limit), both rows per second."""
    await fresh_schema(dsn, BARE_SCHEMA)
    rate = await baselines.enqueue_sequential(dsn, BARE_SCHEMA, n, WARMUP)
    return rate, await baselines.commit_limit(dsn, BARE_SCHEMA, n, WARMUP)


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(3_000, 300)
    rates, bare = await alternate(
        ctx,
        lambda: _once(ctx.dsn, n),
        lambda: _bare(ctx.dsn, n),
        lambda r, b: f"{r:,.0f} jobs/s; bare {b[0]:,.0f}/s; commit limit {b[1]:,.0f}/s",
    )
    limits = [limit for _, limit in bare]
    return [
        Figure(
            name="enqueue_sequential",
            unit="jobs/s",
            samples=rates,
            target=TARGET_JOBS_PER_S,
            higher_is_better=True,
            baseline_samples=[rate for rate, _ in bare],
            params={
                "n": n,
                "producers": 1,
                "warmup": WARMUP,
                "call": "await app.enqueue(noop)",
                "bare": "one autocommit INSERT ... RETURNING + pg_notify statement per row, "
                "one held connection",
                "commit_limit_per_s_median": statistics.median(limits),
                "commit_limit_per_s": limits,
            },
        )
    ]
