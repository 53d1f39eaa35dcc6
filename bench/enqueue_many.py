"""enqueue_many: one ``app.enqueue_many`` call with 20,000 signatures.

The signatures are built before the clock starts: the figure is the library's cost (validate,
encode, COPY, NOTIFY, commit), not the caller's list comprehension. A warm-up call of a few
hundred jobs first takes the same COPY path, so the connection is open and the code is warm.

Bare baseline, in the same repeat: ``copy_records_to_table`` of the same rows, built (ids
included) before the clock starts, in one transaction, after the same warm-up.
"""

from __future__ import annotations

import time

from . import baselines
from .common import Context, Figure, alternate, fresh_schema, make_app

NAME = "enqueue_many"
SCHEMA = "bench_enqueue_many"
BARE_SCHEMA = "bench_enqueue_many_bare"
TARGET_JOBS_PER_S = 200_000.0
WARMUP = 500  # above the COPY threshold (asyncjobs.app.BULK_THRESHOLD)


async def _once(dsn: str, n: int) -> float:
    await fresh_schema(dsn, SCHEMA)
    app, jobs = make_app(dsn, SCHEMA)
    await app.start(node=False)
    try:
        await app.enqueue_many([jobs.noop.s() for _ in range(WARMUP)])
        signatures = [jobs.noop.s() for _ in range(n)]
        t0 = time.perf_counter()
        ids = await app.enqueue_many(signatures)
        elapsed = time.perf_counter() - t0
    finally:
        await app.stop()
    if len(ids) != n:
        raise RuntimeError(f"enqueue_many returned {len(ids)} ids for {n} signatures")
    return n / elapsed


async def _bare(dsn: str, n: int) -> float:
    await fresh_schema(dsn, BARE_SCHEMA)
    return await baselines.enqueue_many(dsn, BARE_SCHEMA, n, WARMUP)


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(20_000, 2_000)
    rates, bare = await alternate(
        ctx,
        lambda: _once(ctx.dsn, n),
        lambda: _bare(ctx.dsn, n),
        lambda r, b: f"{r:,.0f} jobs/s; bare {b:,.0f} rows/s",
    )
    return [
        Figure(
            name="enqueue_many",
            unit="jobs/s",
            samples=rates,
            target=TARGET_JOBS_PER_S,
            higher_is_better=True,
            baseline_samples=bare,
            params={
                "n": n,
                "calls": 1,
                "call": "await app.enqueue_many([noop.s(), ...])",
                "bare": "one copy_records_to_table of prebuilt records in a transaction",
            },
        )
    ]
