"""Nodes killed, and nodes racing: nothing lost, nothing run twice by surprise (DESIGN §10).

Real ``asyncjobs node`` processes on real Postgres. Every execution is recorded outside the
job table (a runs table, or per-process files), so the counts are proved, not assumed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import asyncpg

from asyncjobs import App, JobState
from tests.helpers import wait_until

from .jobs_app import read_runs
from .nodes import NodeRunner, subprocess_env

FAST_LIVENESS = {"heartbeat_interval_s": "1", "node_timeout_s": "3", "poll_interval_s": "1"}


async def states(db: asyncpg.Connection, schema: str) -> dict[str, int]:
    rows = await db.fetch(
        f"SELECT state::text, count(*) FROM {schema}.asyncjobs_jobs GROUP BY state"
    )
    return {r["state"]: r["count"] for r in rows}


async def test_kill_9_of_a_busy_node_loses_at_most_once_jobs_and_reruns_retryable_ones(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema, **FAST_LIVENESS)
    victim = await nodes.start("--concurrency", "1000", env=env)
    once = await producer.enqueue_many([producer.signature("hold", 600) for _ in range(500)])
    retry = await producer.enqueue_many(
        [producer.signature("hold_first_attempt", 600) for _ in range(500)]
    )
    runs = f"{pg_schema}.acceptance_runs"
    await wait_until(
        lambda: db.fetchval(f"SELECT count(*) = 1000 FROM {runs} WHERE event = 'start'"),
        timeout=60,
        what="the victim to start all 1,000 jobs",
    )
    survivor = await nodes.start("--concurrency", "1000", env=env)

    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_until(
        lambda: db.fetchval(
            f"SELECT reaped_at IS NOT NULL FROM {pg_schema}.asyncjobs_nodes WHERE id = $1",
            victim.node_id,
        ),
        timeout=30,
        interval=0.05,
        what="the survivor to reap the killed node",
    )
    reap_s = time.monotonic() - killed_at
    await wait_until(
        lambda: db.fetchval(
            f"SELECT count(*) = 0 FROM {pg_schema}.asyncjobs_jobs "
            "WHERE state IN ('queued', 'running', 'scheduled')"
        ),
        timeout=60,
        what="every job to end",
    )
    print(f"kill -9 to fully reaped: {reap_s:.2f} s (heartbeat 1 s, node timeout 3 s)")

    assert await states(db, pg_schema) == {"lost": 500, "succeeded": 500}
    reaped_by = await db.fetchval(
        f"SELECT reaped_by FROM {pg_schema}.asyncjobs_nodes WHERE id = $1", victim.node_id
    )
    assert reaped_by == survivor.node_id
    rows = await db.fetch(f"SELECT job_id, attempt, event, pid FROM {runs} ORDER BY seq")
    events: dict[tuple[object, int], list[tuple[str, int]]] = {}
    for r in rows:
        events.setdefault((r["job_id"], r["attempt"]), []).append((r["event"], r["pid"]))
    lost = await db.fetch(
        f"SELECT id, attempt, reason FROM {pg_schema}.asyncjobs_jobs WHERE id = ANY($1)", once
    )
    for job in lost:
        # Ran once, on the victim, never finished there, and never again anywhere.
        assert job["attempt"] == 1
        assert events[(job["id"], 1)] == [("start", victim.pid)]
        assert not any(key[0] == job["id"] and key[1] > 1 for key in events)
        assert job["reason"].startswith(f"node {victim.node_id} stopped heartbeating at ")
    for job_id in retry:
        assert events[(job_id, 1)] == [("start", victim.pid)]
        assert events[(job_id, 2)] == [("start", survivor.pid), ("end", survivor.pid)]
        assert (job_id, 3) not in events
    assert reap_s < 3 + 2 * 1.25 + 2  # the timeout, a reaper pass or two, and slack


async def test_three_nodes_drain_30000_jobs_and_run_each_exactly_once(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    env = subprocess_env(pg_dsn, pg_schema, test_runs_dir=str(runs_dir))
    for _ in range(3):
        await nodes.start("--concurrency", "200", env=env)
    started = time.monotonic()
    ids = await producer.enqueue_many([producer.signature("note") for _ in range(30_000)])
    await wait_until(
        lambda: db.fetchval(
            f"SELECT count(*) = 30000 FROM {pg_schema}.asyncjobs_jobs WHERE state = 'succeeded'"
        ),
        timeout=120,
        interval=0.1,
        what="30,000 jobs to succeed",
    )
    elapsed = time.monotonic() - started
    print(f"three nodes drained 30,000 jobs in {elapsed:.2f} s ({30_000 / elapsed:,.0f} jobs/s)")

    runs = read_runs(str(runs_dir))
    assert len(runs) == 3 and all(runs.values()), "every node took work"
    executed = [job_id for per_node in runs.values() for job_id, _ in per_node]
    assert len(executed) == len(set(executed)) == 30_000  # each exactly once
    assert set(executed) == {str(i) for i in ids}
    assert await states(db, pg_schema) == {JobState.SUCCEEDED.value: 30_000}
