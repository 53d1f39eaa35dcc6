"""enqueue_concurrent: 100 tasks each awaiting ``app.enqueue(noop)`` in a loop.

This measures the batcher: calls that overlap a write in flight are coalesced into one INSERT,
so the rate should be far above the sequential one. A warm-up round (one call per task) opens
the enqueue connections first.
"""

from __future__ import annotations

import asyncio
import time

from asyncjobs import App

from .common import Context, Figure, Jobs, fresh_schema, make_app

NAME = "enqueue_concurrent"
SCHEMA = "bench_enqueue_concurrent"
TASKS = 100
TARGET_JOBS_PER_S = 20_000.0


async def _producer(app: App, jobs: Jobs, count: int) -> None:
    for _ in range(count):
        await app.enqueue(jobs.noop)


async def _once(dsn: str, n: int) -> float:
    await fresh_schema(dsn, SCHEMA)
    app, jobs = make_app(dsn, SCHEMA)
    await app.start(node=False)
    try:
        await asyncio.gather(*(_producer(app, jobs, 1) for _ in range(TASKS)))
        per_task = n // TASKS
        t0 = time.perf_counter()
        await asyncio.gather(*(_producer(app, jobs, per_task) for _ in range(TASKS)))
        return per_task * TASKS / (time.perf_counter() - t0)
    finally:
        await app.stop()


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(20_000, 2_000)
    rates: list[float] = []
    for i in range(ctx.repeats):
        rates.append(await _once(ctx.dsn, n))
        ctx.note(f"repeat {i + 1}: {rates[-1]:,.0f} jobs/s")
    return [
        Figure(
            name="enqueue_concurrent",
            unit="jobs/s",
            samples=rates,
            target=TARGET_JOBS_PER_S,
            higher_is_better=True,
            params={
                "n": n,
                "tasks": TASKS,
                "per_task": n // TASKS,
                "call": "await app.enqueue(noop)",
            },
        )
    ]
