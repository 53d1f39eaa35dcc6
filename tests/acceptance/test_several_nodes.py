"""Several node processes on one schema (DESIGN §4, Fetcher: SKIP LOCKED claims)."""

from __future__ import annotations

from collections import Counter

import asyncpg

from asyncjobs import App

from ..helpers import wait_until
from .nodes import NodeRunner

JOBS = 2000


async def test_two_nodes_drain_2000_jobs_and_run_every_job_exactly_once(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_schema: str
) -> None:
    first = await nodes.start("--concurrency", "50")
    second = await nodes.start("--concurrency", "50")
    ids = await producer.enqueue_many([producer.signature("record") for _ in range(JOBS)])
    assert len(set(ids)) == JOBS

    async def none_left() -> bool:
        left = await db.fetchval(
            f"SELECT count(*) FROM {pg_schema}.asyncjobs_jobs "
            "WHERE state IN ('scheduled', 'waiting', 'queued', 'running')"
        )
        return left == 0

    await wait_until(none_left, timeout=45, interval=0.1, what=f"two nodes to drain {JOBS} jobs")

    states = await db.fetch(
        f"SELECT state::text AS state, attempt, node_id, count(*) AS n "
        f"FROM {pg_schema}.asyncjobs_jobs GROUP BY 1, 2, 3"
    )
    by_node = {row["node_id"]: row["n"] for row in states}
    assert {(row["state"], row["attempt"]) for row in states} == {("succeeded", 1)}, (
        f"{[dict(row) for row in states]}\n{nodes.outputs()}"
    )
    assert sum(by_node.values()) == JOBS
    assert set(by_node) == {first.node_id, second.node_id}, f"jobs per node: {by_node}"

    runs = await db.fetch(f"SELECT job_id, attempt, pid FROM {pg_schema}.acceptance_runs")
    counts = Counter((row["job_id"], row["attempt"]) for row in runs)
    duplicates = {key: n for key, n in counts.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} job attempts ran more than once: {duplicates}"
    ran = Counter(row["job_id"] for row in runs)
    assert set(ran) == set(ids), f"{len(set(ids) - set(ran))} jobs never ran"
    assert max(ran.values()) == 1, "a job ran in two attempts"
    per_pid = Counter(row["pid"] for row in runs)
    assert set(per_pid) == {first.pid, second.pid}, f"runs per node process: {per_pid}"
