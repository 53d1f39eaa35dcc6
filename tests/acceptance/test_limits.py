"""Concurrency keys and rate limits across real node processes (asyncjobs.limits).

Every job records its start and end in the runs table (the database's clock), so overlaps
and windows are measured from outside the nodes, not assumed.
"""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from asyncjobs import App
from tests.helpers import most_at_once, wait_until

from .nodes import NodeRunner, describe, run_cli, subprocess_env

FAST_LIVENESS = {"heartbeat_interval_s": "1", "node_timeout_s": "3", "poll_interval_s": "1"}


async def intervals(
    db: asyncpg.Connection, schema: str
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Each key's (start, end) intervals, from the runs table."""
    rows = await db.fetch(
        f"""
        SELECT j.concurrency_key AS key, s.at AS started, e.at AS ended
        FROM {schema}.acceptance_runs AS s
        JOIN {schema}.acceptance_runs AS e
          ON e.job_id = s.job_id AND e.attempt = s.attempt AND e.event = 'end'
        JOIN {schema}.asyncjobs_jobs AS j ON j.id = s.job_id
        WHERE s.event = 'start'
        """
    )
    out: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for r in rows:
        out[r["key"]].append((r["started"], r["ended"]))
    return out


async def all_succeeded(db: asyncpg.Connection, schema: str, n: int) -> bool:
    return bool(
        await db.fetchval(
            f"SELECT count(*) = $1 FROM {schema}.asyncjobs_jobs WHERE state = 'succeeded'", n
        )
    )


async def test_limit_1_across_three_nodes_never_overlaps_and_every_job_finishes(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema)
    for _ in range(3):
        await nodes.start("--concurrency", "50", env=env)
    n = 1000
    await producer.enqueue_many(
        [producer.signature("exclusive", f"vm-{i % 10}", 0.002) for i in range(n)]
    )
    await wait_until(
        lambda: all_succeeded(db, pg_schema, n), timeout=120, what="all 1,000 jobs to succeed"
    )
    by_key = await intervals(db, pg_schema)
    assert sorted(by_key) == [f"k:vm-{i}" for i in range(10)]
    assert sum(len(spans) for spans in by_key.values()) == n
    for key, spans in by_key.items():
        assert most_at_once(spans) == 1, f"two jobs with key {key} ran at once"
    pids = await db.fetchval(f"SELECT count(DISTINCT pid) FROM {pg_schema}.acceptance_runs")
    assert pids == 3, "every node took a share of the keys"


async def test_limit_3_is_reached_and_never_passed(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema)
    for _ in range(2):
        await nodes.start("--concurrency", "50", env=env)
    n = 120
    await producer.enqueue_many(
        [producer.signature("three_at_once", f"array-{i % 2}", 0.05) for i in range(n)]
    )
    await wait_until(lambda: all_succeeded(db, pg_schema, n), timeout=60, what="all jobs")
    by_key = await intervals(db, pg_schema)
    assert {key: most_at_once(spans) for key, spans in by_key.items()} == {
        "k:array-0": 3,
        "k:array-1": 3,
    }
    # The slots are used: 60 jobs of 50 ms per key, 3 at a time, take about a second; one at
    # a time would take three.
    for spans in by_key.values():
        busy = max(e for _, e in spans) - min(s for s, _ in spans)
        assert busy < timedelta(seconds=2.5), f"60 jobs took {busy}: the slots sat idle"


async def test_a_rate_limit_holds_across_two_nodes(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    """20 per second over two nodes: no one-second window holds more than 20 starts, plus a
    tolerance of 2. The limit is enforced on claim times (the database's clock, under the
    bucket's lock); a job records its start a moment later, after its claim commits and its
    task runs, so a window of recorded starts can catch a job or two from the edge."""
    env = subprocess_env(pg_dsn, pg_schema, poll_interval_s="0.2")
    for _ in range(2):
        await nodes.start("--concurrency", "50", env=env)
    n = 200
    await producer.enqueue_many([producer.signature("rated") for _ in range(n)])
    await wait_until(lambda: all_succeeded(db, pg_schema, n), timeout=60, what="all jobs")
    starts = sorted(
        r["at"]
        for r in await db.fetch(f"SELECT at FROM {pg_schema}.acceptance_runs WHERE event = 'start'")
    )
    assert len(starts) == n
    busiest = max(
        sum(1 for t in starts[i:] if t < first + timedelta(seconds=1))
        for i, first in enumerate(starts)
    )
    assert busiest <= 22, f"{busiest} starts in one second, over 20 + 2"
    span = (starts[-1] - starts[0]).total_seconds()
    assert 8.5 <= span <= 15, f"200 jobs at 20/s took {span:.1f} s"
    assert await db.fetchval(f"SELECT count(DISTINCT pid) FROM {pg_schema}.acceptance_runs") == 2


async def test_a_killed_node_frees_its_slots_after_the_reap(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema, **FAST_LIVENESS)
    victim = await nodes.start(env=env)
    held = await producer.enqueue("exclusive", "vm-7", 600)
    runs = f"{pg_schema}.acceptance_runs"
    await wait_until(
        lambda: db.fetchval(f"SELECT count(*) = 1 FROM {runs} WHERE event = 'start'"),
        timeout=30,
        what="the victim to start the job that holds the key",
    )
    survivor = await nodes.start(env=env)
    assert await producer.result(await producer.enqueue("rated"), timeout=30) is None

    shown = await run_cli("status", env=subprocess_env(pg_dsn, pg_schema))
    assert shown.returncode == 0, describe(shown)
    lines = shown.stdout.splitlines()
    at = lines.index("busy concurrency keys (running / limit):")
    assert lines[at + 2].split()[:4] == ["k:vm-7", "1/1", "exclusive", str(held)], describe(shown)
    assert lines[at + 2].endswith(f"on node {victim.node_id}"), describe(shown)
    queues = lines[lines.index("queues:") + 2].split()
    assert queues[:5] == ["default", "0", "0", "1", "0"], describe(shown)
    node_rows = lines[lines.index("nodes:") + 2 : at]
    assert sorted(row.split()[0] for row in node_rows) == sorted(
        [str(victim.node_id), str(survivor.node_id)]
    ), describe(shown)
    assert "rate limits:" in lines and any(
        line.split()[:2] == ["rated", "20/1s"] for line in lines
    ), describe(shown)
    status = orjson.loads(
        (await run_cli("status", "--json", env=subprocess_env(pg_dsn, pg_schema))).stdout
    )
    assert [k["key"] for k in status["busy_keys"]] == ["k:vm-7"]

    waiting = await producer.enqueue("exclusive", "vm-7", 0)
    other = await producer.enqueue("exclusive", "vm-8", 0)
    # Another key is not blocked by the held one.
    assert await producer.result(other, timeout=30) is None
    record: Any = await producer.get(waiting)
    assert record.state.value == "queued", "the key's only slot is held: the job must wait"

    os.killpg(victim.pid, signal.SIGKILL)
    assert await producer.result(waiting, timeout=30) is None  # runs once the reap frees it
    lost = await producer.get(held)
    assert lost.state.value == "lost"
    ran_on = await db.fetchval(
        f"SELECT pid FROM {runs} WHERE job_id = $1 AND event = 'start'", waiting
    )
    assert ran_on == survivor.pid
