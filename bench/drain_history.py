"""drain_history: does a node's drain rate stay flat as the jobs table grows?

Three drains of n no-op jobs by one node in this process (``concurrency=1000``, as in
``drain``), in each repeat, in a rotating order:

- **empty**: the table holds only the n queued jobs (the reference);
- **history**: the table also holds 1,000,000 finished (succeeded) jobs, as a node sees after a
  few days of 1.5 million jobs a day with the default retention;
- **backlog**: the table holds 1,000,000 queued jobs, and the clock stops when the node has
  finished n of them (what a node pays per job while a big backlog waits).

The extra million rows are written by one ``INSERT ... SELECT generate_series`` in SQL (rows as
asyncjobs writes them: the same columns, args ``[[],{}]``), then ``VACUUM ANALYZE`` gives the
planner the statistics autovacuum eventually would. Their ids increase with the insertion
order, as asyncjobs' UUIDv7 ids do, and sort before the n jobs enqueued through the API:
random (v4) ids would scatter the claim order over the heap, a cost real ids never have. Each
drain is timed as ``drain`` times it: from just before ``app.start()`` until the completer
has written n outcomes.

The figures are each drain's rate, with the empty table's rate of the same repeat as the
baseline, and the ratios (the issue's goal: at least 0.9 of the empty table's rate).
"""

from __future__ import annotations

import asyncpg

from .common import TABLE, Context, Figure, fresh_schema, make_app, state_counts, timed_drain

NAME = "drain_history"
SCHEMA = "bench_drain_history"
CONCURRENCY = 1000
DRAIN_TIMEOUT_S = 300.0
TARGET_RATIO = 0.9

# The extra rows, as asyncjobs writes them. {state} and the timestamps vary by scenario.
_FILL = """
INSERT INTO {t} (id, name, queue, priority, state, attempt, max_attempts, run_at, created_at,
                 started_at, finished_at, args, result)
SELECT ('01000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'noop', 'default', 0,
       '{state}', {attempt}, 1, now(), now(), {finished}, {finished}, '[[],{{}}]'::jsonb,
       {result}
FROM generate_series(1, $1) AS i
"""


async def _prepare(dsn: str, scenario: str, n: int, extra: int) -> None:
    """A fresh schema for ``scenario``: n queued jobs (through the API), and ``extra``
    finished (history) or queued (backlog) rows written in SQL."""
    await fresh_schema(dsn, SCHEMA)
    producer, jobs = make_app(dsn, SCHEMA)
    await producer.start(node=False)  # creates the tables
    try:
        if scenario != "backlog":
            await producer.enqueue_many([jobs.noop.s() for _ in range(n)])
    finally:
        await producer.stop()
    con = await asyncpg.connect(dsn)
    try:
        table = f"{SCHEMA}.{TABLE}"
        if scenario == "history":
            sql = _FILL.format(
                t=table, state="succeeded", attempt=1, finished="now()", result="'null'::jsonb"
            )
            await con.execute(sql, extra)
        elif scenario == "backlog":
            sql = _FILL.format(t=table, state="queued", attempt=0, finished="NULL", result="NULL")
            await con.execute(sql, extra)
        await con.execute(f"VACUUM ANALYZE {table}")
    finally:
        await con.close()


async def _drain(dsn: str, scenario: str, n: int, extra: int) -> float:
    """One drain of n jobs in ``scenario``; returns its rate in jobs/s."""
    await _prepare(dsn, scenario, n, extra)
    app, _ = make_app(dsn, SCHEMA, concurrency=CONCURRENCY)
    elapsed, _ = await timed_drain(app, n, DRAIN_TIMEOUT_S)
    con = await asyncpg.connect(dsn)
    try:
        counts = await state_counts(con, SCHEMA)
    finally:
        await con.close()
    if scenario == "backlog":  # n (or a few more) done, the rest still queued, none lost
        done = counts.get("succeeded", 0)
        ok = done >= n and done + counts.get("queued", 0) == extra == sum(counts.values())
    else:
        ok = counts == {"succeeded": n + (extra if scenario == "history" else 0)}
    if not ok:
        raise AssertionError(f"{scenario}: the table does not agree with the drain: {counts}")
    return n / elapsed


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(20_000, 2_000)
    extra = ctx.size(1_000_000, 20_000)
    scenarios = ("empty", "history", "backlog")
    rates: dict[str, list[float]] = {s: [] for s in scenarios}
    for i in range(ctx.repeats):
        order = scenarios[i % 3 :] + scenarios[: i % 3]  # nobody always gets the warm slot
        for scenario in order:
            rates[scenario].append(await _drain(ctx.dsn, scenario, n, extra))
        ctx.note(
            f"repeat {i + 1}: " + ", ".join(f"{s} {rates[s][-1]:,.0f} jobs/s" for s in scenarios)
        )
    con = await asyncpg.connect(ctx.dsn)
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    finally:
        await con.close()
    params = {
        "n": n,
        "extra_rows": extra,
        "concurrency": CONCURRENCY,
        "job": "async def noop(): return None",
        "history": f"{extra:,} succeeded rows beside the n queued jobs",
        "backlog": f"{extra:,} queued rows; timed until n of them finished",
        "baseline": "the same drain with only the n queued jobs in the table, same repeat",
        "timed": "app.start() until completer.flushed == n",
    }
    figures = []
    for scenario in ("history", "backlog"):
        figures.append(
            Figure(
                name=f"drain_with_{scenario}",
                unit="jobs/s",
                samples=rates[scenario],
                target=None,
                higher_is_better=True,
                params={**params, "empty_table_jobs_per_s": rates["empty"]},
            )
        )
        figures.append(
            Figure(
                name=f"drain_with_{scenario}_vs_empty",
                unit="\N{MULTIPLICATION SIGN}",
                samples=[a / b for a, b in zip(rates[scenario], rates["empty"], strict=True)],
                target=TARGET_RATIO,
                higher_is_better=True,
                params=params,
            )
        )
    return figures
