"""durable: what a durable job's steps cost (issue 16), and what parked jobs cost a node.

Three measurements, each repeat in fresh schemas:

- **step overhead**: a durable job on a node embedded in this process runs N steps of a
  no-op coroutine in a loop, ``await ctx.step("noop", nothing, idempotent=...)``, and times
  each ``await`` (``time.perf_counter``). One job with idempotent steps, one with steps that
  are not idempotent (the default), in an order that alternates between repeats; a small job
  of both kinds runs first, so connections are open and statements prepared. The figures are
  the p50 and p99 per step of each kind. An idempotent step commits one statement (its
  result, ``record_step``); a step that is not idempotent first commits a ``running``
  record, in a statement of its own, so it costs two commits by design: expect about 2x one
  commit there. The issue's goal, a step within 1.3x one commit, is carried by the
  ``_vs_commit`` figures of idempotent steps: each repeat's step percentile over the bare
  one of the same repeat.
- **a job of 1,000 steps** (K; the default kind, not idempotent) on the same node, after the
  steps above have been deleted (``TRUNCATE``): its wall time from just before ``enqueue``
  until ``app.result`` returns, and then, after ``VACUUM ANALYZE`` of the steps table, its
  rows per step (1 by design: a step's record is replaced when it ends, never added to) and
  its bytes per step: ``pg_total_relation_size`` (heap, TOAST, free space and visibility
  maps, indexes) over K. The JSON also gives the reading after ``VACUUM FULL``, and the
  split by heap and index.
- **parked jobs**: a node in its own process (``bench.node_proc``, default concurrency,
  poll interval and promoter) is given M durable jobs (``bench.common.nap``), in two
  ``enqueue_many`` of M/2; each records its start time and parks in ``ctx.sleep(D)``. A few
  hundred such jobs first park and resume, so the node has run the whole path before the
  first reading. The node's RSS (psutil) is read before the M jobs are enqueued, once the
  first half is parked, and once all are (each time when ``app.counts()["scheduled"]``
  says so, polled with a deadline, and the node has settled). ``durable_parked_rss_per_job``
  is the growth from before to all parked, over M: what a parked job costs the node. The
  issue's goal is no growth: a parked job holds no task and no memory. But the first jobs
  also lift the node's memory to a high-water mark that later ones reuse (Python and malloc
  keep what transient objects used: M/2 jobs pass through the node's slots before the first
  half is parked), so ``_second_half`` gives the growth from half to all parked over M/2:
  the marginal cost of one more parked job. RSS moves by whole pages, so a few bytes per job
  either way are noise; a structure kept per parked job would show as tens of bytes or more.
  Then each job's wake-up lag: the wall time at which the run that resumed it started (the
  job's first line, on the node) minus its due time (the ``until`` its sleep step recorded,
  on the node's clock too). Due times are spread as the jobs' starts were, D seconds later;
  D is chosen so that every job has parked before the first is due (a repeat where one had
  not fails rather than report a mixed figure).

Bare baseline for the step figures, alternating with the repeats: a plain asyncpg loop on one
held connection, in a fresh schema of its own, that commits the same one-row
``INSERT ... ON CONFLICT (job_id, seq) DO UPDATE`` into the same job_steps table one
autocommit statement at a time (a succeeded step's values, without ``record_step``'s fence on
the job's row), each timed the same way: the p50 and p99 of one commit. Its first 2K
statements, timed together, are also the baseline of the 1,000-step job: the commits that job
makes, with nothing else. The parked jobs have no bare counterpart.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import asyncpg
import psutil

from asyncjobs import App, JobContext, JobDef, JobId, Settings
from asyncjobs.settings import CONCURRENCY, POLL_INTERVAL_S

from .common import (
    TABLE,
    Context,
    Figure,
    alternate,
    drop_schema,
    fresh_schema,
    make_app,
    percentile,
    wait_for_count,
)
from .node_proc import NodeProcess

NAME = "durable"
SCHEMA = "bench_durable"
BARE_SCHEMA = "bench_durable_bare"
PARK_SCHEMA = "bench_durable_park"
STEPS_TABLE = "asyncjobs_job_steps"  # the steps table under the default table prefix
TARGET_STEP_VS_COMMIT = 1.3  # the goal: one step within 1.3x one commit
WARMUP_STEPS = 50  # of each kind, and bare statements
WARMUP_PARKED = 300  # more than the node's concurrency: every slot has parked and resumed once
WARMUP_SLEEP_S = 0.2
SETTLE_S = 0.5  # before each RSS reading
RUN_TIMEOUT_S = 120.0
PARK_TIMEOUT_S = 60.0
US = 1e6


async def nothing() -> None:
    return None


# -- step overhead and the 1,000-step job ------------------------------------------------------


def _register_stepper(app: App, timings: dict[JobId, list[float]]) -> JobDef[[int, bool], float]:
    async def stepper(ctx: JobContext, n: int, idempotent: bool) -> float:
        """n no-op steps; each one's wall time (s) goes to ``timings``; returns the total."""
        perf = time.perf_counter
        mine = timings.setdefault(ctx.job_id, [])
        t_start = perf()
        for _ in range(n):
            t0 = perf()
            await ctx.step("noop", nothing, idempotent=idempotent)
            mine.append(perf() - t0)
        return perf() - t_start

    return app.job(durable=True)(stepper)


async def _run_job(
    app: App, job: JobDef[[int, bool], float], n: int, idempotent: bool
) -> tuple[JobId, float, float]:
    """Run one stepper job; returns its id, its wall time from enqueue to result, and the
    time the job itself measured from its first step to its last."""
    t0 = time.perf_counter()
    job_id = await app.enqueue(job, n, idempotent)
    in_job = await app.result(job_id, timeout=RUN_TIMEOUT_S)
    return job_id, time.perf_counter() - t0, float(in_job)


def _percentiles_us(samples: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(samples, 50) * US,
        "p99": percentile(samples, 99) * US,
        "max": max(samples) * US,
        "mean": sum(samples) / len(samples) * US,
    }


async def _step_sizes(con: asyncpg.Connection, k: int) -> dict[str, float]:
    table = f"{SCHEMA}.{STEPS_TABLE}"
    total, table_size, heap, indexes = await con.fetchrow(
        "SELECT pg_total_relation_size($1::regclass), pg_table_size($1::regclass),"
        " pg_relation_size($1::regclass, 'main'), pg_indexes_size($1::regclass)",
        table,
    )
    row_bytes = await con.fetchval(f"SELECT avg(pg_column_size(s.*))::float8 FROM {table} AS s")
    return {
        "total_bytes": total,
        "per_step": total / k,
        "heap_per_step": heap / k,
        "table_other_per_step": (table_size - heap) / k,  # TOAST, free space, visibility maps
        "indexes_per_step": indexes / k,
        "row_datum_bytes_avg": row_bytes,
    }


async def _steps_once(dsn: str, n: int, k: int, idempotent_first: bool) -> dict[str, Any]:
    """One repeat: per-step timings of both kinds, then the K-step job and its footprint."""
    await fresh_schema(dsn, SCHEMA)
    timings: dict[JobId, list[float]] = {}
    app = App(settings=Settings(dsn=dsn, schema=SCHEMA))
    stepper = _register_stepper(app, timings)
    await app.start()
    con = await asyncpg.connect(dsn)
    try:
        for idempotent in (True, False):
            await _run_job(app, stepper, WARMUP_STEPS, idempotent)
        out: dict[str, Any] = {}
        for idempotent in (idempotent_first, not idempotent_first):
            job_id, _, _ = await _run_job(app, stepper, n, idempotent)
            key = "idempotent" if idempotent else "not_idempotent"
            out[key] = _percentiles_us(timings[job_id])
        await con.execute(f"TRUNCATE {SCHEMA}.{STEPS_TABLE}")
        job_id, wall, in_job = await _run_job(app, stepper, k, False)
    finally:
        await app.stop()
    try:
        rows, succeeded = await con.fetchrow(
            f"SELECT count(*), count(*) FILTER (WHERE state = 'succeeded')"
            f" FROM {SCHEMA}.{STEPS_TABLE} WHERE job_id = $1",
            job_id,
        )
        if succeeded != k:
            raise RuntimeError(f"the {k}-step job has {succeeded} succeeded steps, not {k}")
        await con.execute(f"VACUUM ANALYZE {SCHEMA}.{STEPS_TABLE}")
        sizes = await _step_sizes(con, k)
        await con.execute(f"VACUUM FULL ANALYZE {SCHEMA}.{STEPS_TABLE}")
        compacted = await _step_sizes(con, k)
    finally:
        await con.close()
    return out | {
        "job_wall_s": wall,
        "job_in_job_s": in_job,
        "job_step_us": _percentiles_us(timings[job_id]),
        "rows_per_step": rows / k,
        "sizes": sizes,
        "sizes_compacted": compacted,
    }


def bare_step_sql(schema: str) -> str:
    """Writes a succeeded no-op step's record, as record_step does, without its fence."""
    return f"""
        INSERT INTO {schema}.{STEPS_TABLE} AS s (job_id, seq, attempt, idempotent, started_at,
            finished_at, node_id, kind, state, name, digest, call, result, error)
        VALUES ($1, $2, 1, $3, to_timestamp($4), to_timestamp($5), $6, 'call', 'succeeded',
            'noop', $7, '[[],{{}}]', $8, NULL)
        ON CONFLICT (job_id, seq) DO UPDATE
        SET attempt = EXCLUDED.attempt, idempotent = EXCLUDED.idempotent,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            node_id = EXCLUDED.node_id, kind = EXCLUDED.kind, state = EXCLUDED.state,
            name = EXCLUDED.name, digest = EXCLUDED.digest, call = EXCLUDED.call,
            result = EXCLUDED.result, error = EXCLUDED.error
        RETURNING s.seq"""


async def _bare(dsn: str, n: int, k: int) -> dict[str, Any]:
    """max(n, 2k) bare one-row commits; their percentiles, and the time of the first 2k."""
    await fresh_schema(dsn, BARE_SCHEMA)
    sql = bare_step_sql(BARE_SCHEMA)
    job_id, node_id = JobId(int=time.time_ns() << 64), JobId(int=1)
    digest = bytes(16)
    perf = time.perf_counter
    times: list[float] = []
    con = await asyncpg.connect(dsn)
    try:
        for seq in range(1, WARMUP_STEPS + 1):
            now = time.time()
            await con.fetchval(sql, JobId(int=1), seq, True, now, now, node_id, digest, "null")
        for seq in range(1, max(n, 2 * k) + 1):
            t0 = perf()
            now = time.time()
            await con.fetchval(sql, job_id, seq, True, now, now, node_id, digest, "null")
            times.append(perf() - t0)
    finally:
        await con.close()
    return {"commit": _percentiles_us(times[:n]), "job_commits_s": sum(times[: 2 * k])}


# -- parked jobs ---------------------------------------------------------------------------------


async def _park(
    app: App, job: JobDef[[float], float], m: int, total: int, sleep_s: float
) -> list[JobId]:
    """Enqueue m jobs that sleep sleep_s, in one enqueue_many; return once ``total`` jobs are
    parked (``app.counts()``, polled with a deadline) and the node has settled."""
    ids = await app.enqueue_many([job.s(sleep_s) for _ in range(m)])
    deadline = time.perf_counter() + PARK_TIMEOUT_S
    while (scheduled := (await app.counts()).get("scheduled", 0)) < total:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {scheduled} of {total} jobs parked in {PARK_TIMEOUT_S:g} s")
        await asyncio.sleep(0.01)
    await asyncio.sleep(SETTLE_S)
    return ids


async def _parked_once(dsn: str, m: int, sleep_s: float) -> dict[str, Any]:
    """One repeat: the node's RSS before and with m jobs parked, and each one's wake-up lag."""
    half = m // 2
    await fresh_schema(dsn, PARK_SCHEMA)
    try:
        async with NodeProcess(dsn, PARK_SCHEMA, concurrency=CONCURRENCY) as node:
            process = psutil.Process(node.pid)
            app, jobs = make_app(dsn, PARK_SCHEMA)
            await app.start(node=False)
            con = await asyncpg.connect(dsn)
            try:
                await app.enqueue_many([jobs.nap.s(WARMUP_SLEEP_S) for _ in range(WARMUP_PARKED)])
                await wait_for_count(
                    con, PARK_SCHEMA, "succeeded", WARMUP_PARKED, timeout=PARK_TIMEOUT_S
                )
                await asyncio.sleep(SETTLE_S)
                rss_before = process.memory_info().rss
                t0 = time.perf_counter()
                ids = await _park(app, jobs.nap, half, half, sleep_s)
                rss_half = process.memory_info().rss
                ids += await _park(app, jobs.nap, m - half, m, sleep_s)
                parked_s = time.perf_counter() - t0 - 2 * SETTLE_S
                rss_parked = process.memory_info().rss
                still = (await app.counts()).get("scheduled", 0)
                if still != m:
                    raise RuntimeError(
                        f"{m - still} jobs woke before the RSS reading: sleep {sleep_s:g} s is "
                        f"too short for parking {m} jobs ({parked_s:.1f} s)"
                    )
                await wait_for_count(
                    con, PARK_SCHEMA, "succeeded", WARMUP_PARKED + m,
                    timeout=sleep_s + RUN_TIMEOUT_S,
                )  # fmt: skip
                await asyncio.sleep(SETTLE_S)
                rss_resumed = process.memory_info().rss
                rows = await con.fetch(
                    f"SELECT j.result::text::float8 AS started,"
                    f" (s.result->>'until')::float8 AS due, j.attempt"
                    f" FROM {PARK_SCHEMA}.{TABLE} AS j"
                    f" JOIN {PARK_SCHEMA}.{STEPS_TABLE} AS s ON s.job_id = j.id AND s.seq = 1"
                    f" WHERE j.id = ANY($1::uuid[])",
                    ids,
                )
            finally:
                await con.close()
                await app.stop()
    finally:
        await drop_schema(dsn, PARK_SCHEMA)
    if len(rows) != m:
        raise RuntimeError(f"{len(rows)} of {m} parked jobs have a result and a sleep step")
    lags = [(r["started"] - r["due"]) * 1000 for r in rows]
    dues = [r["due"] for r in rows]
    return {
        "rss_per_job": (rss_parked - rss_before) / m,
        "rss_per_job_second_half": (rss_parked - rss_half) / (m - half),
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags),
        "lag_min_ms": min(lags),
        "parked_s": parked_s,
        "due_spread_s": max(dues) - min(dues),
        "attempts": sorted({r["attempt"] for r in rows}),
        "rss_bytes": {
            "before": rss_before,
            "half_parked": rss_half,
            "parked": rss_parked,
            "resumed": rss_resumed,
        },
    }


# -- figures ---------------------------------------------------------------------------------------


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(2_000, 200)
    k = ctx.size(1_000, 100)
    m = ctx.size(10_000, 1_000)
    sleep_s = ctx.size(20, 5)  # every job parks before the first is due
    order = itertools.cycle((True, False))  # which kind of step a repeat times first
    runs, bare = await alternate(
        ctx,
        lambda: _steps_once(ctx.dsn, n, k, next(order)),
        lambda: _bare(ctx.dsn, n, k),
        lambda r, b: (
            f"step p50 {r['idempotent']['p50']:,.0f} µs idempotent, "
            f"{r['not_idempotent']['p50']:,.0f} µs not; bare commit p50 "
            f"{b['commit']['p50']:,.0f} µs; {k}-step job {r['job_wall_s']:.2f} s, "
            f"{r['sizes']['per_step']:,.0f} B/step"
        ),
    )
    parked: list[dict[str, Any]] = []
    for i in range(ctx.repeats):
        parked.append(await _parked_once(ctx.dsn, m, sleep_s))
        p = parked[-1]
        ctx.note(
            f"parked {i + 1}: {m:,} in {p['parked_s']:.2f} s, {p['rss_per_job']:,.1f} B/job "
            f"({p['rss_per_job_second_half']:,.1f} over the second half); "
            f"wake-up lag p50 {p['lag_p50_ms']:.2f} ms, p99 {p['lag_p99_ms']:.2f} ms"
        )
    params: dict[str, Any] = {
        "n_steps": n,
        "job_steps": k,
        "parked_jobs": m,
        "sleep_s": float(sleep_s),
        "step": 'await ctx.step("noop", nothing, idempotent=...) of async def nothing(): ...',
        "node_steps": "embedded in this process, default settings",
        "node_parked": f"separate process (python -m bench.node_proc), concurrency "
        f"{CONCURRENCY}, poll interval {POLL_INTERVAL_S:g} s (the defaults)",
        "bare": "one-row INSERT ... ON CONFLICT DO UPDATE into job_steps, autocommit, "
        "one held asyncpg connection",
        "steps_per_repeat": [{k_: r[k_] for k_ in ("idempotent", "not_idempotent")} for r in runs],
        "bare_commit_us_per_repeat": [b["commit"] for b in bare],
        "job_per_repeat": [
            {
                "wall_s": r["job_wall_s"],
                "in_job_s": r["job_in_job_s"],
                "step_us": r["job_step_us"],
                "bare_commits_s": b["job_commits_s"],
            }
            for r, b in zip(runs, bare, strict=True)
        ],
        "sizes_per_repeat": [
            {"vacuum": r["sizes"], "vacuum_full": r["sizes_compacted"]} for r in runs
        ],
        "parked_per_repeat": parked,
    }

    def step_figure(kind: str, q: str) -> Figure:
        return Figure(
            name=f"durable_step_{kind}_{q}",
            unit="µs",
            samples=[r[kind][q] for r in runs],
            target=None,
            higher_is_better=False,
            params=params,
            baseline_samples=[b["commit"][q] for b in bare],
        )

    def vs_commit(q: str) -> Figure:
        return Figure(
            name=f"durable_step_idempotent_{q}_vs_commit",
            unit="\N{MULTIPLICATION SIGN}",
            samples=[r["idempotent"][q] / b["commit"][q] for r, b in zip(runs, bare, strict=True)],
            target=TARGET_STEP_VS_COMMIT,
            higher_is_better=False,
            params=params,
        )

    def parked_figure(name: str, unit: str, key: str) -> Figure:
        return Figure(
            name=name,
            unit=unit,
            samples=[p[key] for p in parked],
            target=None,
            higher_is_better=False,
            params=params,
        )

    return [
        step_figure("idempotent", "p50"),
        step_figure("idempotent", "p99"),
        step_figure("not_idempotent", "p50"),
        step_figure("not_idempotent", "p99"),
        vs_commit("p50"),
        vs_commit("p99"),
        Figure(
            name=f"durable_job_{k}_steps",
            unit="s",
            samples=[r["job_wall_s"] for r in runs],
            target=None,
            higher_is_better=False,
            params=params,
            baseline_samples=[b["job_commits_s"] for b in bare],
        ),
        Figure(
            name="durable_rows_per_step",
            unit="rows/step",
            samples=[r["rows_per_step"] for r in runs],
            target=1.0,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="durable_bytes_per_step",
            unit="B/step",
            samples=[r["sizes"]["per_step"] for r in runs],
            target=None,
            higher_is_better=False,
            params=params,
        ),
        parked_figure("durable_parked_rss_per_job", "B/job", "rss_per_job"),
        parked_figure("durable_parked_rss_per_job_second_half", "B/job", "rss_per_job_second_half"),
        parked_figure("durable_wake_lag_p50", "ms", "lag_p50_ms"),
        parked_figure("durable_wake_lag_p99", "ms", "lag_p99_ms"),
    ]
