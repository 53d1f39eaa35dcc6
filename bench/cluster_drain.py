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
3-node/1-node ratio is what this machine gives, not what a cluster of machines would. To show
what bounds it, each drain also reads the CPU time used in its timed span by the node
processes and by every Postgres process (backends, WAL writer, the rest), from /proc through
psutil, and how many of the machine's cores were busy (JSON: ``cpu``).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from contextlib import AsyncExitStack

import asyncpg
import psutil

from .common import TABLE, Context, Figure, alternate, check_drained, no_jobs_in
from .drain import CONCURRENCY, enqueue_backlog
from .node_proc import NodeProcess

NAME = "cluster_drain"
SCHEMA = "bench_cluster"
NODE_COUNTS = (1, 3)
POLL_S = 0.005
GATE_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 120.0


class CpuMeter:
    """CPU seconds used by some processes (and by Postgres's) between ``start`` and ``stop``."""

    def __init__(self, pids: list[int]) -> None:
        self.nodes = [psutil.Process(pid) for pid in pids]

    @staticmethod
    def _cpu(processes: list[psutil.Process]) -> float:
        total = 0.0
        for p in processes:
            with contextlib.suppress(psutil.Error):  # a backend that ended meanwhile
                t = p.cpu_times()
                total += t.user + t.system
        return total

    @staticmethod
    def _postgres() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]

    def start(self) -> None:
        self.pg = self._postgres()  # the nodes' pools are open by now: their backends too
        self.t0, self.busy0 = time.perf_counter(), psutil.cpu_times()
        self.node0, self.pg0 = self._cpu(self.nodes), self._cpu(self.pg)

    def stop(self) -> dict[str, float]:
        node, pg, busy = self._cpu(self.nodes), self._cpu(self.pg), psutil.cpu_times()
        wall = time.perf_counter() - self.t0
        idle = (busy.idle + busy.iowait) - (self.busy0.idle + self.busy0.iowait)
        return {
            "wall_s": wall,
            "nodes_cpu_s": node - self.node0,
            "postgres_cpu_s": pg - self.pg0,
            "cores": float(psutil.cpu_count() or 1),
            "cores_busy": (psutil.cpu_count() or 1) - idle / wall,
        }


async def _once(dsn: str, n: int, nodes: int, cpu: list[dict[str, float]]) -> float:
    """One drain of n jobs by ``nodes`` node processes; returns the seconds it took and
    appends the CPU it used to ``cpu``."""
    await enqueue_backlog(dsn, SCHEMA, n)
    done_sql = f"SELECT {no_jobs_in(SCHEMA, 'queued', 'running')}"
    gate = await asyncpg.connect(dsn)
    try:
        async with AsyncExitStack() as stack:
            tx = gate.transaction()
            await tx.start()
            # SHARE blocks UPDATE (the claim) but not SELECT (heartbeats read cancel requests).
            await gate.execute(f"LOCK TABLE {SCHEMA}.{TABLE} IN SHARE MODE")
            pids = []
            for _ in range(nodes):
                node = await stack.enter_async_context(
                    NodeProcess(dsn, SCHEMA, concurrency=CONCURRENCY, shutdown_grace_s=0.0)
                )
                pids.append(node.pid)
            await _wait_for_waiting_claims(dsn, nodes)
            meter = CpuMeter(pids)
            meter.start()
            t0 = time.perf_counter()
            await tx.rollback()
            deadline = t0 + DRAIN_TIMEOUT_S
            while not await gate.fetchval(done_sql):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{nodes} nodes did not drain {n} jobs in time")
                await asyncio.sleep(POLL_S)
            elapsed = time.perf_counter() - t0
            cpu.append(meter.stop())
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


def _cpu_summary(samples: list[dict[str, float]], n: int) -> dict[str, float]:
    def median(key: str) -> float:
        return statistics.median(s[key] for s in samples)

    per_k = 1000 / n
    return {
        "nodes_cpu_ms_per_1000_jobs": median("nodes_cpu_s") * 1000 * per_k,
        "postgres_cpu_ms_per_1000_jobs": median("postgres_cpu_s") * 1000 * per_k,
        "cores_busy": median("cores_busy"),
        "cores": median("cores"),
    }


async def run(ctx: Context) -> list[Figure]:
    n = ctx.size(30_000, 3_000)
    one, many = NODE_COUNTS
    # alternate() swaps which side runs first in each repeat; here both sides are asyncjobs.
    cpu: dict[int, list[dict[str, float]]] = {one: [], many: []}
    multi, single = await alternate(
        ctx,
        lambda: _once(ctx.dsn, n, many, cpu[many]),
        lambda: _once(ctx.dsn, n, one, cpu[one]),
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
        # What bounds the 3-node figure: CPU seconds per 1,000 jobs and busy cores, medians
        "cpu": {f"{k}_nodes": _cpu_summary(v, n) for k, v in cpu.items()},
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
