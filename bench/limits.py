"""limits: the drain rate of no-op jobs that carry concurrency keys, against plain no-op jobs.

Each repeat drains two backlogs of N jobs on one node in this process (``concurrency`` 1000),
back to back and alternating which goes first: plain no-op jobs, and no-op jobs each with a
concurrency key (``k:{i % 1000}``: 1,000 distinct keys, limit 1). Timed as bench/drain.py
times it, from ``app.start()`` until the completer has written all N outcomes, with fresh
statistics (VACUUM ANALYZE) after the enqueue. The figure of the issue is the keyed rate as a
share of the plain one, in the same run; the target is at least half.

With 1,000 keys and 1,000 slots, a claim of 1,000 candidates takes 1,000 advisory locks and
counts the running jobs of each key through the partial index, in the claim's transaction.
"""

from __future__ import annotations

import asyncpg

from asyncjobs import App

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

NAME = "limits"
SCHEMA = "bench_limits"
CONCURRENCY = 1000
KEYS = 1000
TARGET_SHARE = 0.5
DRAIN_TIMEOUT_S = 180.0


async def keyed_noop(k: int) -> None:
    return None


def build(dsn: str) -> App:
    app, _ = make_app(dsn, SCHEMA, concurrency=CONCURRENCY)
    app.job(concurrency_key="k:{k}", concurrency_limit=1)(keyed_noop)
    return app


async def _drain(dsn: str, n: int, keyed: bool) -> float:
    """Enqueue n jobs (keyed or plain), then drain them; returns jobs per second."""
    await fresh_schema(dsn, SCHEMA)
    producer = build(dsn)
    await producer.start(node=False)
    try:
        if keyed:
            sigs = [producer.signature("keyed_noop", i % KEYS) for i in range(n)]
        else:
            sigs = [producer.signature("noop") for _ in range(n)]
        await producer.enqueue_many(sigs)
    finally:
        await producer.stop()
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f"VACUUM ANALYZE {SCHEMA}.{TABLE}")
    finally:
        await con.close()
    elapsed, _ = await timed_drain(build(dsn), n, DRAIN_TIMEOUT_S)
    con = await asyncpg.connect(dsn)
    try:
        await check_drained(con, SCHEMA, n)
    finally:
        await con.close()
    return n / elapsed


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(20_000, 2_000)
    keyed, plain = await alternate(
        ctx,
        lambda: _drain(ctx.dsn, n, keyed=True),
        lambda: _drain(ctx.dsn, n, keyed=False),
        lambda k, p: f"keyed {k:,.0f} jobs/s, plain {p:,.0f} jobs/s ({k / p:.0%})",
    )
    params = {
        "n": n,
        "concurrency": CONCURRENCY,
        "keys": f"{KEYS} distinct (k:{{i % {KEYS}}}), limit 1",
        "job": "async def keyed_noop(k): return None / async def noop(): return None",
        "timed": "app.start() until completer.flushed == n, after VACUUM ANALYZE",
        "shares": [k / p for k, p in zip(keyed, plain, strict=True)],
    }
    return [
        Figure(
            name="limits_keyed_drain",
            unit="jobs/s",
            samples=keyed,
            target=None,
            higher_is_better=True,
            params=params,
        ),
        Figure(
            name="limits_plain_drain",
            unit="jobs/s",
            samples=plain,
            target=None,
            higher_is_better=True,
            params=params,
        ),
        Figure(
            name="limits_keyed_share",
            unit="\N{MULTIPLICATION SIGN}",
            samples=[k / p for k, p in zip(keyed, plain, strict=True)],
            target=TARGET_SHARE,
            higher_is_better=True,
            params=params,
        ),
    ]
