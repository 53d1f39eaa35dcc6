"""storage: Postgres bytes per queued job and per finished job, table plus indexes.

Each repeat enqueues N no-op jobs into a fresh schema (one ``enqueue_many``, as
``drain.enqueue_backlog`` does), runs ``VACUUM ANALYZE`` and reads
``pg_total_relation_size`` of the jobs table: the heap, its TOAST table, its free-space and
visibility maps, and every index. Divided by N, that is the first figure.

A node in this process (``concurrency`` 1000) then runs every job to completion, history
kept, and the same reading after another ``VACUUM ANALYZE`` gives the second figure. A claim
and a completion each write a new version of the row (``state`` is in the partial indexes'
predicates, so neither update can be HOT), and VACUUM marks the dead versions reusable but
seldom shrinks the files: the figure is what the disk holds right after a backlog drained.
A third figure, after ``VACUUM FULL`` (table and indexes rewritten), is what the same history
costs once that free space has been reused by later jobs, as it is in a steady flow.

The JSON splits each reading into the heap (main fork), the rest of the table (TOAST, free
space and visibility maps) and each index, and gives each column's average stored size
(``pg_column_size``), so a figure over its target says which columns and indexes carry it.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from .common import TABLE, Context, Figure, check_drained, make_app, wait_until
from .drain import enqueue_backlog

NAME = "storage"
SCHEMA = "bench_storage"
CONCURRENCY = 1000
TARGET_BYTES_PER_QUEUED_JOB = 300.0
DRAIN_TIMEOUT_S = 300.0


async def _sizes(con: asyncpg.Connection, n: int) -> dict[str, Any]:
    """The jobs table's footprint, in all and split, per job and in bytes."""
    table = f"{SCHEMA}.{TABLE}"
    total, table_size, heap, indexes = await con.fetchrow(
        "SELECT pg_total_relation_size($1::regclass), pg_table_size($1::regclass),"
        " pg_relation_size($1::regclass, 'main'), pg_indexes_size($1::regclass)",
        table,
    )
    index_rows = await con.fetch(
        "SELECT c.relname, pg_relation_size(c.oid) AS bytes"
        " FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = $1::regclass ORDER BY bytes DESC, c.relname",
        table,
    )
    return {
        "total_bytes": total,
        "per_job": total / n,
        "heap_per_job": heap / n,
        "table_other_per_job": (table_size - heap) / n,  # TOAST, free space and visibility maps
        "indexes_per_job": indexes / n,
        "index_per_job": {r["relname"]: r["bytes"] / n for r in index_rows},
    }


async def _column_sizes(con: asyncpg.Connection) -> dict[str, float]:
    """Each column's average stored size in bytes (NULLs cost a bit in the row's bitmap only)."""
    columns = await con.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        f"{SCHEMA}.{TABLE}",
    )
    names = [r["attname"] for r in columns]
    # Column names come from the catalogue, quoted; nothing here is user input.
    select = ", ".join(f'coalesce(avg(pg_column_size("{name}")), 0)::float8' for name in names)
    row = await con.fetchrow(f"SELECT {select} FROM {SCHEMA}.{TABLE}")
    sizes = await con.fetchrow(
        f"SELECT avg(pg_column_size(j.*))::float8 AS row_bytes FROM {SCHEMA}.{TABLE} AS j"
    )
    return {"row_datum_bytes_avg": sizes["row_bytes"]} | {
        name: value for name, value in zip(names, row, strict=True)
    }


async def _vacuum_and_measure(dsn: str, n: int, *, full: bool = False) -> dict[str, Any]:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f"VACUUM {'FULL ' if full else ''}ANALYZE {SCHEMA}.{TABLE}")
        return await _sizes(con, n) | {"columns": await _column_sizes(con)}
    finally:
        await con.close()


async def _once(dsn: str, n: int) -> dict[str, dict[str, Any]]:
    await enqueue_backlog(dsn, SCHEMA, n)  # fresh schema, n queued no-ops, VACUUM ANALYZE
    queued = await _vacuum_and_measure(dsn, n)
    app, _ = make_app(dsn, SCHEMA, concurrency=CONCURRENCY)
    await app.start()
    try:
        completer = app.node.completer
        await wait_until(lambda: completer.flushed >= n, timeout=DRAIN_TIMEOUT_S, what="the drain")
    finally:
        await app.stop()
    con = await asyncpg.connect(dsn)
    try:
        await check_drained(con, SCHEMA, n)
    finally:
        await con.close()
    finished = await _vacuum_and_measure(dsn, n)
    compacted = await _vacuum_and_measure(dsn, n, full=True)
    return {"queued": queued, "finished": finished, "finished_compacted": compacted}


def _brief(reading: dict[str, Any]) -> str:
    return (
        f"{reading['per_job']:,.0f} B/job (heap {reading['heap_per_job']:,.0f}, "
        f"indexes {reading['indexes_per_job']:,.0f})"
    )


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(100_000, 5_000)
    runs: list[dict[str, dict[str, Any]]] = []
    for i in range(ctx.repeats):
        runs.append(await _once(ctx.dsn, n))
        r = runs[-1]
        ctx.note(
            f"repeat {i + 1}: queued {_brief(r['queued'])}; finished {_brief(r['finished'])}; "
            f"compacted {r['finished_compacted']['per_job']:,.0f} B/job"
        )
    params: dict[str, Any] = {
        "n": n,
        "job": "async def noop(): return None, enqueued with one enqueue_many",
        "measured": "pg_total_relation_size(jobs table) / n: heap, TOAST, FSM, VM and indexes",
        "queued": "after the enqueue and VACUUM ANALYZE",
        "finished": "after a node (concurrency 1,000) ran every job, then VACUUM ANALYZE",
        "finished_compacted": "after VACUUM FULL ANALYZE of the finished table",
        "history": "kept (finished jobs are not deleted)",
        # The last repeat's breakdown; every repeat's is in ``readings``.
        "breakdown": runs[-1],
        "readings": [{state: reading["per_job"] for state, reading in r.items()} for r in runs],
    }
    return [
        Figure(
            name="storage_bytes_per_queued_job",
            unit="B/job",
            samples=[r["queued"]["per_job"] for r in runs],
            target=TARGET_BYTES_PER_QUEUED_JOB,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="storage_bytes_per_finished_job",
            unit="B/job",
            samples=[r["finished"]["per_job"] for r in runs],
            target=None,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="storage_bytes_per_finished_job_compacted",
            unit="B/job",
            samples=[r["finished_compacted"]["per_job"] for r in runs],
            target=None,
            higher_is_better=False,
            params=params,
        ),
    ]
