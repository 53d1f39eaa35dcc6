"""pg_restart: how long nodes take to resume after Postgres restarts under them mid-drain.

This restarts Postgres, so it runs on a private throwaway cluster (``asyncjobs.localpg``,
fsync off, in a temporary folder), never on the server given by ``--dsn``. The cluster is
created once per run, always stopped, and its folder removed.

Each repeat, on a fresh schema: two node processes (``bench.node_proc``, concurrency 50 each,
heartbeat 1 s, node timeout 10 s so that nobody is reaped) drain N ``note`` jobs that each sleep
50 ms and then append their id to their process's file. Once 20 % have succeeded,
``restart("fast")`` (pg_ctl restart -m fast -w) drops every connection of every node. Figures:

- ``pg_restart_duration``: how long that call took (shutdown, start, until it accepts);
- ``pg_restart_first_progress``: from its return until the succeeded count first rises above
  the count read on the first connection made after the restart (polled every 10 ms on that
  connection: connections opened before the restart are dead);
- ``pg_restart_all_done``: from its return until all N have succeeded.

Jobs keep running while the database is away, and their outcomes stay buffered in the node, so
the first count after the restart can already include jobs finished during it. Every repeat then
checks, from the files the jobs wrote, that each job ran exactly once (JSON: ``exactly_once``);
a violation is reported in the params, not raised, so the timings are still recorded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg

from asyncjobs.localpg import LocalCluster

from .common import TABLE, Context, Figure, count_state, fresh_schema, make_app, state_counts
from .fault_jobs import RUNS_DIR_ENV, read_runs
from .node_proc import NodeProcess

NAME = "pg_restart"
SCHEMA = "bench_restart"
NODES = 2
CONCURRENCY = 50  # 2 x 50 slots of 50 ms jobs: about 2,000 jobs/s, so the drain lasts seconds
JOB_S = 0.05
RESTART_AT = 0.2  # the share of jobs succeeded when Postgres is restarted
LIVENESS = {"heartbeat_interval_s": 1.0, "node_timeout_s": 10.0}
POLL_S = 0.01
TIMEOUT_S = 60.0


async def _wait_done(con: asyncpg.Connection, at_least: int, started: float) -> float:
    """Poll until at least ``at_least`` jobs succeeded; returns seconds since ``started``."""
    # No index on succeeded jobs; a few thousand rows scan in well under a millisecond.
    while (await count_state(con, SCHEMA, "succeeded")) < at_least:
        if time.perf_counter() - started > TIMEOUT_S:
            raise TimeoutError(f"fewer than {at_least} jobs succeeded within {TIMEOUT_S:g} s")
        await asyncio.sleep(POLL_S)
    return time.perf_counter() - started


async def _connect_after_restart(dsn: str) -> asyncpg.Connection:
    deadline = time.perf_counter() + TIMEOUT_S
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(POLL_S)


async def _once(cluster: LocalCluster, dsn: str, n: int, runs_dir: Path) -> dict[str, Any]:
    await fresh_schema(dsn, SCHEMA)
    os.mkdir(runs_dir)
    env = {RUNS_DIR_ENV: str(runs_dir)}
    async with AsyncExitStack() as stack:
        for _ in range(NODES):
            await stack.enter_async_context(
                NodeProcess(
                    dsn, SCHEMA, concurrency=CONCURRENCY, poll_interval_s=1.0,
                    settings=LIVENESS, env=env,
                )
            )  # fmt: skip
        producer, jobs = make_app(dsn, SCHEMA)
        await producer.start(node=False)
        try:
            ids = await producer.enqueue_many([jobs.note.s(JOB_S) for _ in range(n)])
        finally:
            await producer.stop()  # before the restart: only the nodes should be affected
        before = await asyncpg.connect(dsn)
        try:
            await _wait_done(before, int(n * RESTART_AT), time.perf_counter())
        finally:
            await before.close()
        wall_began = time.time()
        began = time.perf_counter()
        # Blocking on purpose: nothing else in this process needs the loop meanwhile.
        cluster.restart("fast")
        back = time.perf_counter()
        wall_back = time.time()
        con = await _connect_after_restart(dsn)
        try:
            done_when_back = await count_state(con, SCHEMA, "succeeded")
            first_progress = await _wait_done(con, done_when_back + 1, back)
            all_done = await _wait_done(con, n, back)
            counts = await state_counts(con, SCHEMA)
            # Outcomes of jobs that ended while the server was down: buffered by the nodes.
            ended_during = await con.fetchval(
                f"SELECT count(*) FROM {SCHEMA}.{TABLE} "
                "WHERE finished_at BETWEEN to_timestamp($1) AND to_timestamp($2)",
                wall_began,
                wall_back,
            )
        finally:
            await con.close()
    runs = read_runs(runs_dir)
    executed = [job_id for job_id, _ in runs]
    expected = {str(i) for i in ids}
    return {
        "duration_s": back - began,
        "first_progress_s": first_progress,
        "all_done_s": all_done,
        "done_when_back": done_when_back,
        "ended_during_restart": int(ended_during),
        "counts": counts,
        "runs": len(executed),
        "duplicates": len(executed) - len(set(executed)),
        "missing": len(expected - set(executed)),
        "exactly_once": len(executed) == len(set(executed)) == n
        and set(executed) == expected
        and counts == {"succeeded": n},
    }


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(4_000, 1_000)
    base = Path(tempfile.mkdtemp(prefix="asyncjobs-bench-restart-"))
    os.chmod(base, 0o755)  # as root, the cluster runs as user postgres, who must reach it
    cluster = LocalCluster(base / "pg", fsync=False)
    results: list[dict[str, Any]] = []
    try:
        dsn = await asyncio.to_thread(cluster.start)
        for i in range(ctx.repeats):
            r = await _once(cluster, dsn, n, base / f"runs-{i}")
            results.append(r)
            ctx.note(
                f"repeat {i + 1}: restart {r['duration_s']:.3f} s; first progress "
                f"{r['first_progress_s']:.3f} s and all done {r['all_done_s']:.3f} s after it; "
                f"{r['done_when_back']} done when back; exactly once: {r['exactly_once']}"
            )
    finally:
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(base, ignore_errors=True)
    bad = [r for r in results if not r["exactly_once"]]
    params = {
        "n": n,
        "job": f"note(): await asyncio.sleep({JOB_S}), then append its id to a per-process file",
        "nodes": f"{NODES} separate processes (python -m bench.node_proc), concurrency "
        f"{CONCURRENCY} each",
        "heartbeat_interval_s": LIVENESS["heartbeat_interval_s"],
        "node_timeout_s": LIVENESS["node_timeout_s"],
        "postgres": "private throwaway cluster (asyncjobs.localpg), fsync off, "
        "synchronous_commit off; not the --dsn server",
        "restart": f"pg_ctl restart -m fast -w, once {RESTART_AT:.0%} of the jobs succeeded",
        "poll_s": POLL_S,
        "exactly_once": "yes, every repeat"
        if not bad
        else f"NO in {len(bad)} repeats: {[(r['duplicates'], r['missing']) for r in bad]} "
        "(duplicates, missing)",
        "per_repeat": [{k: v for k, v in r.items() if not k.endswith("_s")} for r in results],
    }
    return [
        Figure(
            name=f"pg_restart_{key}",
            unit="s",
            samples=[r[f"{key}_s"] for r in results],
            target=None,
            higher_is_better=False,
            params=params,
        )
        for key in ("duration", "first_progress", "all_done")
    ]
