"""latency: from just before ``enqueue()`` to the job's first line, on an idle node.

The node runs in its own process (``bench.node_proc``), so producer and node do not share an
event loop. The producer sends on an open-loop schedule, job i at t0 + i/rate, whether or not
earlier sends have returned, so a slow enqueue delays nothing after it and queueing shows up
in the figure instead of being hidden by it.

The node's poll interval is set to a minute: a job it found by polling instead of by NOTIFY
would stand out by seconds, so the figure is the LISTEN/NOTIFY path. Warm-up jobs first open
every lazily opened connection on both sides; then the node is left idle to go back to
waiting for a notification.

Both end points are ``time.time()`` on the same machine (the job returns its start time as its
result), so the two processes share one clock.

Bare baseline, in the same repeat: ``baselines.latency``, a producer sending one
``INSERT ... pg_notify`` statement per job on the same schedule, and a child process that
LISTENs and, on each notification, runs the claim statement; a job's end point is
``time.time()`` when its claim returned.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from asyncjobs import App, JobDef, JobId

from . import baselines
from .common import (
    TABLE,
    Context,
    Figure,
    alternate,
    fresh_schema,
    make_app,
    open_loop,
    percentile,
    wait_for_count,
)
from .node_proc import NodeProcess

NAME = "latency"
SCHEMA = "bench_latency"
BARE_SCHEMA = "bench_latency_bare"
RATE_PER_S = 200.0
NODE_CONCURRENCY = 100  # the default; 200 jobs/s of no-ops never fill it
NODE_POLL_S = 60.0  # see the module docstring: only NOTIFY can explain a fast start
WARMUP = 20
IDLE_BEFORE_S = 0.3
TARGETS_MS = {"p50": 1.5, "p90": None, "p99": 3.0, "max": None}


async def _send_open_loop(
    app: App, job: JobDef[[], float], n: int
) -> tuple[list[float], list[JobId], float]:
    """Enqueue n jobs at RATE_PER_S; returns send times, ids, and the worst schedule lag."""
    sent = [0.0] * n
    ids: list[JobId | None] = [None] * n

    async def send(i: int) -> None:
        sent[i] = time.time()
        ids[i] = await app.enqueue(job)

    worst_lag = await open_loop(send, n, RATE_PER_S)  # raises if any enqueue failed
    return sent, [job_id for job_id in ids if job_id is not None], worst_lag


def _stats(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
    }


async def _once(dsn: str, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """One run; returns the latency percentiles and the segment timings, in ms."""
    await fresh_schema(dsn, SCHEMA)
    con = await asyncpg.connect(dsn)
    try:
        async with NodeProcess(
            dsn, SCHEMA, concurrency=NODE_CONCURRENCY, poll_interval_s=NODE_POLL_S
        ):
            app, jobs = make_app(dsn, SCHEMA)
            await app.start(node=False)
            try:
                for _ in range(WARMUP):
                    await app.result(await app.enqueue(jobs.stamp), timeout=10)
                await asyncio.sleep(IDLE_BEFORE_S)
                sent, ids, worst_lag = await _send_open_loop(app, jobs.stamp, n)
            finally:
                await app.stop()
            # A job whose wake-up was lost starts at the node's next poll: wait past it, so
            # that shows as a latency rather than as an error.
            await wait_for_count(con, SCHEMA, "succeeded", n + WARMUP, timeout=NODE_POLL_S + 15)
        rows = await con.fetch(
            f"SELECT id, result::text::float8 AS started,"
            f" extract(epoch FROM created_at)::float8 AS created,"
            f" extract(epoch FROM started_at)::float8 AS claimed"
            f" FROM {SCHEMA}.{TABLE} WHERE id = ANY($1::uuid[])",
            ids,
        )
    finally:
        await con.close()
    by_id = {r["id"]: r for r in rows}
    latencies, to_insert, to_claim, claim_to_start = [], [], [], []
    for job_id, t_sent in zip(ids, sent, strict=True):
        r = by_id[job_id]
        latencies.append((r["started"] - t_sent) * 1000)
        # Segments, for finding where the time goes (JSON only). created_at is the insert's
        # transaction start on the server; started_at is the node's clock when it claimed.
        to_insert.append((r["created"] - t_sent) * 1000)
        to_claim.append((r["claimed"] - r["created"]) * 1000)
        claim_to_start.append((r["started"] - r["claimed"]) * 1000)
    stats = _stats(latencies)
    segments = {
        "send_to_insert_ms_p50": percentile(to_insert, 50),
        "insert_to_claim_ms_p50": percentile(to_claim, 50),
        "claim_to_start_ms_p50": percentile(claim_to_start, 50),
        "insert_to_claim_ms_p99": percentile(to_claim, 99),
        "claim_to_start_ms_p99": percentile(claim_to_start, 99),
        "worst_send_lag_ms": worst_lag * 1000,
    }
    return stats, segments


async def _bare(dsn: str, n: int) -> tuple[dict[str, float], float]:
    """One bare run; returns its percentiles (ms) and worst send lag (ms)."""
    await fresh_schema(dsn, BARE_SCHEMA)
    latencies, worst_lag = await baselines.latency(
        dsn, BARE_SCHEMA, n, RATE_PER_S, WARMUP, IDLE_BEFORE_S, NODE_CONCURRENCY
    )
    return _stats(latencies), worst_lag * 1000


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(1_000, 100)
    runs, bare = await alternate(
        ctx,
        lambda: _once(ctx.dsn, n),
        lambda: _bare(ctx.dsn, n),
        lambda r, b: (
            f"p50 {r[0]['p50']:.2f} ms, p99 {r[0]['p99']:.2f} ms; "
            f"bare p50 {b[0]['p50']:.2f} ms, p99 {b[0]['p99']:.2f} ms"
        ),
    )
    params = {
        "n": n,
        "rate_per_s": RATE_PER_S,
        "schedule": "open loop: job i sent at t0 + i/rate",
        "node": "separate process (python -m bench.node_proc)",
        "node_concurrency": NODE_CONCURRENCY,
        "node_poll_interval_s": NODE_POLL_S,
        "measured": "job start time.time() minus time.time() just before app.enqueue()",
        "segments_per_repeat": [segments for _, segments in runs],
        "bare": "INSERT+pg_notify statement -> LISTEN + claim in a child process; "
        "end point: time.time() when the claim returned",
        "bare_worst_send_lag_ms": [lag for _, lag in bare],
    }
    return [
        Figure(
            name=f"latency_{key}",
            unit="ms",
            samples=[stats[key] for stats, _ in runs],
            target=target,
            higher_is_better=False,
            params=params,
            baseline_samples=[stats[key] for stats, _ in bare],
        )
        for key, target in TARGETS_MS.items()
    ]
