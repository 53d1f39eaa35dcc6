"""concurrent_sleepers: memory per running job, and how fast a node fills 100,000 slots.

A node in its own process (``bench.node_proc``, concurrency 100,000) is given 100,000 jobs that
each ``await asyncio.sleep(30)``, in one ``enqueue_many``. Two figures:

- the node process's RSS growth (psutil) from idle to all jobs running, divided by the number
  of jobs: what one waiting coroutine job costs the node;
- the time from the ``enqueue_many`` call until the database shows every job ``running``.

RSS is read after a short settle so that every job's task has taken its first step (a claimed
job is ``running`` in the database a moment before its coroutine has allocated its frames).
The node is then stopped at once (shutdown grace 0, SIGKILL if it is slow) instead of after
the 30 s sleeps, and this benchmark's schema is dropped: 100,000 interrupted jobs are of no
interest, and a killed node would leave them ``running`` for ever.

Bare baseline for the memory figure, in the same repeat: ``baselines.sleepers``, a uvloop
child process that starts n tasks each doing ``await asyncio.sleep(30)``, its RSS read the
same way. The ratio is what the node adds to a bare task and coroutine per job.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psutil

from . import baselines
from .common import (
    Context,
    Figure,
    alternate,
    count_state,
    drop_schema,
    fresh_schema,
    make_app,
    no_jobs_in,
)
from .node_proc import NodeProcess

NAME = "concurrent_sleepers"
SCHEMA = "bench_sleepers"
# Issue 17: 100,000 sleeping jobs all in flight within 5 s, at most 3.5 KB of RSS each.
TARGET_BYTES_PER_JOB = 3584.0
TARGET_ALL_RUNNING_S = 5.0
SETTLE_S = 0.5  # before each RSS reading: let the node go idle / let every task start
ALL_RUNNING_TIMEOUT_S = 120.0


async def _wait_none_queued(con: asyncpg.Connection, timeout: float) -> None:
    """Poll until no job is queued: one probe of the ready index. Counting the running jobs
    instead, every 5 ms, cost Postgres as much CPU as the claims it was timing (at 100,000 rows
    each count visits every row just updated)."""
    deadline = time.perf_counter() + timeout
    while not await con.fetchval(f"SELECT {no_jobs_in(SCHEMA, 'queued')}"):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"jobs still queued after {timeout:g} s")
        await asyncio.sleep(0.005)


async def _once(dsn: str, n: int) -> tuple[float, float, int, int]:
    """One run: (seconds until all running, RSS growth per job, RSS before, RSS after)."""
    await fresh_schema(dsn, SCHEMA)
    try:
        async with NodeProcess(
            dsn, SCHEMA, concurrency=n, shutdown_grace_s=0.0, kill_after_s=5.0
        ) as node:
            process = psutil.Process(node.pid)
            app, jobs = make_app(dsn, SCHEMA)
            await app.start(node=False)
            con = await asyncpg.connect(dsn)
            try:
                # One job through claim, run and complete, so the node's connections are
                # open and its code paths warm before the first RSS reading.
                await app.result(await app.enqueue(jobs.noop), timeout=10)
                await asyncio.sleep(SETTLE_S)
                rss_before = process.memory_info().rss
                signatures = [jobs.sleeper.s() for _ in range(n)]
                t0 = time.perf_counter()
                await app.enqueue_many(signatures)
                await _wait_none_queued(con, ALL_RUNNING_TIMEOUT_S)
                all_running = time.perf_counter() - t0
                running = await count_state(con, SCHEMA, "running")
                if running != n:  # none finishes (they sleep 30 s): none queued is all running
                    raise RuntimeError(f"{running} of {n} sleepers running, none queued")
                await asyncio.sleep(SETTLE_S)
                rss_after = process.memory_info().rss
            finally:
                await con.close()
                await app.stop()
    finally:
        await drop_schema(dsn, SCHEMA)
    return all_running, (rss_after - rss_before) / n, rss_before, rss_after


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(100_000, 2_000)
    runs, bare = await alternate(
        ctx,
        lambda: _once(ctx.dsn, n),
        lambda: baselines.sleepers(n, SETTLE_S),
        lambda r, b: f"all running in {r[0]:.3f} s, {r[1]:,.0f} B/job; bare {b[0]:,.0f} B/task",
    )
    params = {
        "n": n,
        "concurrency": n,
        "job": "async def sleeper(): await asyncio.sleep(30)",
        "node": "separate process (python -m bench.node_proc)",
        "enqueue": "one enqueue_many of n signatures",
        "rss_bytes_per_repeat": [{"before": r[2], "after": r[3]} for r in runs],
        "bare": "n asyncio tasks each awaiting asyncio.sleep(30) in a uvloop child process",
        "bare_rss_bytes_per_repeat": [{"before": b[1], "after": b[2]} for b in bare],
    }
    return [
        Figure(
            name="sleepers_rss_per_job",
            unit="B/job",
            samples=[r[1] for r in runs],
            target=TARGET_BYTES_PER_JOB,
            higher_is_better=False,
            params=params,
            baseline_samples=[b[0] for b in bare],
        ),
        Figure(
            name="sleepers_all_running",
            unit="s",
            samples=[r[0] for r in runs],
            target=TARGET_ALL_RUNNING_S,
            higher_is_better=False,
            params=params,
        ),
    ]
