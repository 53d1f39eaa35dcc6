"""Schedules fired by several node processes, and one-time jobs across node restarts."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import asyncpg

from asyncjobs import App, JobState
from tests.helpers import wait_until

from .jobs_app import read_runs
from .nodes import NodeRunner, subprocess_env
from .schedules_app import TICK_S

SCHEDULES_APP = "tests.acceptance.schedules_app:app"


async def test_three_racing_nodes_fire_every_fire_time_exactly_once(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    env = subprocess_env(pg_dsn, pg_schema, poll_interval_s="0.2", test_runs_dir=str(runs_dir))
    racers = [await nodes.start(app=SCHEDULES_APP, env=env) for _ in range(3)]
    count = f"SELECT count(*) FROM {pg_schema}.asyncjobs_jobs WHERE schedule = 'tick'"
    await wait_until(
        lambda: _at_least(db, count, 120), timeout=60, interval=0.1, what="120 fire times"
    )
    for node in racers:
        node.send(15)
    for node in racers:
        assert await node.wait_exit(30) == 0

    rows = await db.fetch(
        f"SELECT id, extract(epoch FROM fire_at)::float8 AS fire_at, state::text "
        f"FROM {pg_schema}.asyncjobs_jobs WHERE schedule = 'tick' ORDER BY fire_at"
    )
    fire_times = [r["fire_at"] for r in rows]
    assert len(fire_times) >= 120
    assert len(set(fire_times)) == len(fire_times)  # never two jobs for one fire time
    steps = {round((b - a) / TICK_S) for a, b in itertools.pairwise(fire_times)}
    assert steps == {1}  # and none skipped between the first and the last
    finished = [r["id"] for r in rows if r["state"] == JobState.SUCCEEDED.value]
    executed = [job_id for per_node in read_runs(str(runs_dir)).values() for job_id, _ in per_node]
    assert len(executed) == len(set(executed))  # each run executed once
    assert {str(i) for i in finished} <= set(executed)
    (record,) = await producer.store.list_schedules()
    assert record.fired == len(fire_times) and record.missed == 0


async def test_a_one_time_job_runs_once_at_its_time_across_a_node_restart(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema, poll_interval_s="0.5")
    first = await nodes.start(env=env)
    enqueued = time.time()
    job_id = await producer.enqueue("record", delay=3.0)
    assert (await producer.get(job_id)).state is JobState.SCHEDULED
    first.send(15)
    assert await first.wait_exit(20) == 0  # the node that saw it enqueued is gone
    await nodes.start(env=env)
    assert await producer.result(job_id, timeout=30) is None
    record = await producer.get(job_id)
    assert record.attempt == 1 and record.started_at is not None
    assert record.started_at.timestamp() >= enqueued + 3.0  # not early
    runs = await db.fetchval(
        f"SELECT count(*) FROM {pg_schema}.acceptance_runs WHERE job_id = $1", job_id
    )
    assert runs == 1


async def _at_least(db: asyncpg.Connection, query: str, n: int) -> bool:
    return bool(await db.fetchval(query) >= n)
