"""enqueue_sequential: one producer awaiting ``app.enqueue(noop)`` in a loop.

This is the round-trip-bound case: nothing overlaps, so every call is one INSERT (with its
NOTIFY) and one commit. A few warm-up calls first open the enqueue connection, which the
store opens lazily, so the figure is the steady state.
"""

from __future__ import annotations

import time

from .common import Context, Figure, fresh_schema, make_app

NAME = "enqueue_sequential"
SCHEMA = "bench_enqueue_sequential"
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


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(3_000, 300)
    rates: list[float] = []
    for i in range(ctx.repeats):
        rates.append(await _once(ctx.dsn, n))
        ctx.note(f"repeat {i + 1}: {rates[-1]:,.0f} jobs/s")
    return [
        Figure(
            name="enqueue_sequential",
            unit="jobs/s",
            samples=rates,
            target=TARGET_JOBS_PER_S,
            higher_is_better=True,
            params={"n": n, "producers": 1, "warmup": WARMUP, "call": "await app.enqueue(noop)"},
        )
    ]
