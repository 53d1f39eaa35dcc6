"""cluster_drain: how fast 1 node and 3 nodes work through one backlog of no-op jobs.

Each repeat drains the same backlog twice, once with one node process and once with three
(``bench.node_proc``, concurrency 1000 each, as in ``drain``), in alternating order. Each drain:
N no-op jobs enqueued with one ``enqueue_many`` (COPY) into a fresh schema, VACUUM ANALYZE
(``drain.enqueue_backlog``), then the nodes are started and timed until every job has succeeded.

A node process takes about half a second to start, longer than the drain itself, and three
start one after another. Timing from their start would measure Python start-up, and the first
node would drain much of the backlog alone. So a gate holds the jobs table in SHARE mode while
the nodes start: each node's first claim (an UPDATE) waits on it. Once every node has a claim
waiting (seen in pg_stat_activity), the gate is released and the clock starts: from there on,
all the nodes are up and claiming, as when a backlog lands on a running cluster.

The clock stops when one poll (every 5 ms, on the gate's connection) sees no job ``queued`` and
none ``running``: claims and outcomes are atomic, so then every outcome is written. Cheap: two
index probes on the partial indexes of queued and running jobs. A count afterwards checks that
all N succeeded.

The machine has 2 cores, shared by the nodes and Postgres: 3 nodes cannot scale 3x here. The
3-node/1-node ratio is what this machine gives, not what a cluster of machines would.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import asyncpg

from .common import TABLE, Context, Figure, alternate, check_drained, no_jobs_in
from .drain import CONCURRENCY, enqueue_backlog
from .node_proc import NodeProcess

NAME = "cluster_drain"
SCHEMA = "bench_cluster"
NODE_COUNTS = (1, 3)
POLL_S = 0.005
GATE_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 120.0


async def _once(dsn: str, n: int, nodes: int) -> float:
    """One drain of n jobs by ``nodes`` node processes; returns the seconds it took."""
    await enqueue_backlog(dsn, SCHEMA, n)
    done_sql = f"SELECT {no_jobs_in(SCHEMA, 'queued', 'running')}"
    gate = await asyncpg.connect(dsn)
    try:
        async with AsyncExitStack() as stack:
            tx = gate.transaction()
            await tx.start()
            # SHARE blocks UPDATE (the claim) but not SELECT (heartbeats read cancel requests).
            await gate.execute(f"LOCK TABLE {SCHEMA}.{TABLE} IN SHARE MODE")
            for _ in range(nodes):
                await stack.enter_async_context(
                    NodeProcess(dsn, SCHEMA, concurrency=CONCURRENCY, shutdown_grace_s=0.0)
                )
            await _wait_for_waiting_claims(dsn, nodes)
            t0 = time.perf_counter()
            await tx.rollback()
            deadline = t0 + DRAIN_TIMEOUT_S
            while not await gate.fetchval(done_sql):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{nodes} nodes did not drain {n} jobs in time")
                await asyncio.sleep(POLL_S)
            elapsed = time.perf_counter() - t0
        await check_drained(gate, SCHEMA, n)
    finally:
        await gate.close()
    return elapsed


async def _wait_for_waiting_claims(dsn: str, nodes: int) -> None:
    """Until every node's first claim waits on the gate (the claim calls claim_jobs)."""
    con = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + GATE_TIMEOUT_S
        while True:
            waiting = await con.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%claim_jobs(%' AND datname = current_database()"
            )
            if waiting >= nodes:
                return
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {waiting} of {nodes} nodes reached their first claim")
            await asyncio.sleep(0.01)
    finally:
        await con.close()


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(30_000, 3_000)
    one, many = NODE_COUNTS
    # alternate() swaps which side runs first in each repeat; here both sides are asyncjobs.
    multi, single = await alternate(
        ctx,
        lambda: _once(ctx.dsn, n, many),
        lambda: _once(ctx.dsn, n, one),
        lambda m, s: f"{one} node {n / s:,.0f} jobs/s; {many} nodes {n / m:,.0f} jobs/s",
    )
    params = {
        "n": n,
        "concurrency_per_node": CONCURRENCY,
        "job": "async def noop(): return None",
        "nodes": "separate processes (python -m bench.node_proc), one schema",
        "timed": "from releasing a SHARE lock that held every node's first claim, until no "
        "job is queued or running (polled every 5 ms)",
        "cores": "2: the nodes and Postgres share them, so 3 nodes cannot scale linearly here",
        "seconds_1_node": single,
        "seconds_3_nodes": multi,
    }
    return [
        Figure(
            name=name, unit=unit, samples=samples, target=None, higher_is_better=True, params=params
        )
        for name, unit, samples in (
            (f"cluster_drain_{one}_node", "jobs/s", [n / s for s in single]),
            (f"cluster_drain_{many}_nodes", "jobs/s", [n / m for m in multi]),
            (
                f"cluster_drain_{many}_vs_{one}",
                "\N{MULTIPLICATION SIGN}",  # a ratio
                [s / m for s, m in zip(single, multi, strict=True)],
            ),
        )
    ]
