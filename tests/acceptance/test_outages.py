"""Postgres going away: a node cut off past its timeout, and a Postgres restart mid-drain.

What the node must do (DESIGN §4, §10): keep running its jobs and buffer their outcomes,
reconnect with backoff, stop claiming once it may have been reaped, and lose nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from asyncjobs import App, Settings
from asyncjobs.localpg import LocalCluster
from tests.helpers import wait_until

from .jobs_app import RUNS_DDL, build_app, read_runs
from .nodes import NodeRunner, subprocess_env
from .proxy import CuttableProxy

FAST_LIVENESS = {"heartbeat_interval_s": "1", "node_timeout_s": "3", "poll_interval_s": "1"}


async def fetchval(dsn: str, query: str, *args: object) -> object:
    """One query on a fresh connection (the database may have restarted since the last)."""
    try:
        con = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return await con.fetchval(query, *args)
    finally:
        await con.close()


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[CuttableProxy]:
    parts = urlsplit(pg_dsn)
    cuttable = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await cuttable.start()
    yield cuttable
    await cuttable.close()


def through(proxy: CuttableProxy, dsn: str) -> str:
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}").geturl()


async def test_a_node_cut_off_past_its_timeout_is_reaped_fences_itself_and_rejoins(
    nodes: NodeRunner, producer: App, proxy: CuttableProxy, pg_dsn: str, pg_schema: str,
) -> None:  # fmt: skip
    cut_off = await nodes.start(
        "--concurrency", "100",
        env=subprocess_env(through(proxy, pg_dsn), pg_schema, **FAST_LIVENESS),
    )  # fmt: skip
    once = await producer.enqueue_many([producer.signature("hold", 600) for _ in range(20)])
    retry = await producer.enqueue_many(
        [producer.signature("hold_first_attempt", 600) for _ in range(20)]
    )
    runs = f"{pg_schema}.acceptance_runs"
    await wait_until(
        lambda: fetchval(pg_dsn, f"SELECT count(*) = 40 FROM {runs} WHERE event = 'start'"),
        timeout=30,
        what="the node to start its 40 jobs",
    )
    healthy = await nodes.start(
        "--concurrency", "100", env=subprocess_env(pg_dsn, pg_schema, **FAST_LIVENESS)
    )

    await proxy.cut()
    await wait_until(
        lambda: fetchval(
            pg_dsn,
            f"SELECT reaped_by FROM {pg_schema}.asyncjobs_nodes WHERE id = $1",
            cut_off.node_id,
        ),
        timeout=20,
        what="the healthy node to reap the cut-off one",
    )
    await wait_until(
        lambda: fetchval(
            pg_dsn,
            f"SELECT count(*) = 20 FROM {pg_schema}.asyncjobs_jobs "
            "WHERE state = 'succeeded' AND id = ANY($1)",
            retry,
        ),
        timeout=30,
        what="the healthy node to re-run the retryable jobs",
    )
    await cut_off.wait_output("stops claiming", timeout=15)

    await proxy.restore()
    await cut_off.wait_output("rejoined as node", timeout=30)
    rejoined = await fetchval(
        pg_dsn,
        f"SELECT id FROM {pg_schema}.asyncjobs_nodes WHERE pid = $1 AND reaped_at IS NULL",
        cut_off.pid,
    )
    assert rejoined is not None and rejoined != cut_off.node_id

    # The rejoined node works again: with the healthy node stopped, it alone runs new jobs.
    healthy.send(15)
    assert await healthy.wait_exit(20) == 0
    more = await producer.enqueue_many([producer.signature("record") for _ in range(20)])
    for job_id in more:
        assert await producer.result(job_id, timeout=30) is None

    con = await asyncpg.connect(pg_dsn)
    try:
        lost = await con.fetch(
            f"SELECT state::text, attempt, reason FROM {pg_schema}.asyncjobs_jobs "
            "WHERE id = ANY($1)",
            once,
        )
        events = await con.fetch(f"SELECT job_id, attempt, event, pid FROM {runs} ORDER BY seq")
        left_running = await con.fetchval(
            f"SELECT count(*) FROM {pg_schema}.asyncjobs_jobs WHERE state = 'running'"
        )
    finally:
        await con.close()
    assert {(r["state"], r["attempt"]) for r in lost} == {("lost", 1)}
    assert all(r["reason"].startswith(f"node {cut_off.node_id} stopped") for r in lost)
    by_job: dict[object, list[tuple[int, str, int]]] = {}
    for e in events:
        by_job.setdefault(e["job_id"], []).append((e["attempt"], e["event"], e["pid"]))
    for job_id in once:  # started once on the cut-off node; never finished, never re-run
        assert by_job[job_id] == [(1, "start", cut_off.pid)]
    for job_id in retry:  # the cut-off node's first attempt was stopped when it rejoined
        assert by_job[job_id] == [
            (1, "start", cut_off.pid),
            (2, "start", healthy.pid),
            (2, "end", healthy.pid),
        ]
    for job_id in more:
        assert by_job[job_id] == [(1, "run", cut_off.pid)]
    assert left_running == 0


async def test_a_stale_attempt_is_rejected_and_the_newer_result_stands(
    nodes: NodeRunner, producer: App, proxy: CuttableProxy, pg_dsn: str, pg_schema: str,
) -> None:  # fmt: skip
    stale = await nodes.start(
        env=subprocess_env(through(proxy, pg_dsn), pg_schema, **FAST_LIVENESS)
    )
    job_id = await producer.enqueue("whoami", 1.5)
    await wait_until(
        lambda: fetchval(
            pg_dsn, f"SELECT count(*) = 1 FROM {pg_schema}.acceptance_runs WHERE event = 'start'"
        ),
        timeout=20,
        what="the first attempt to start",
    )
    await proxy.cut()  # attempt 1 finishes during the cut: its outcome waits in the buffer
    fresh = await nodes.start(env=subprocess_env(pg_dsn, pg_schema, **FAST_LIVENESS))
    assert await producer.result(job_id, timeout=30) == {"attempt": 2, "pid": fresh.pid}

    await proxy.restore()  # the stale node flushes attempt 1's outcome, and it is refused
    await stale.wait_output("rejected 1 stale outcomes", timeout=30)
    record = await producer.get(job_id)
    assert record.result == {"attempt": 2, "pid": fresh.pid} and record.attempt == 2


@pytest.fixture
def private_cluster(private_cluster_dir: Path) -> LocalCluster:
    """A throwaway Postgres this test may restart (the machine's server is never touched)."""
    cluster = LocalCluster(private_cluster_dir, fsync=False)
    cluster.start()
    return cluster


async def test_a_postgres_restart_mid_drain_loses_and_duplicates_nothing(
    private_cluster: LocalCluster, tmp_path: Path
) -> None:
    dsn, schema = private_cluster.dsn, "restart"
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    producer = build_app(Settings(dsn=dsn, schema=schema))
    await producer.start(node=False)
    runner = NodeRunner(dsn, schema, tmp_path)
    count_done = f"SELECT count(*) FROM {schema}.asyncjobs_jobs WHERE state = 'succeeded'"
    try:
        con = await asyncpg.connect(dsn)
        await con.execute(RUNS_DDL.format(schema=schema))
        await con.close()
        env = subprocess_env(
            dsn, schema, heartbeat_interval_s="1", node_timeout_s="10", poll_interval_s="1",
            test_runs_dir=str(runs_dir),
        )  # fmt: skip
        for _ in range(2):
            await runner.start("--concurrency", "50", env=env)
        ids = await producer.enqueue_many([producer.signature("note", 0.05) for _ in range(4_000)])
        await wait_until(
            lambda: _at_least(dsn, count_done, 800), timeout=60, what="the drain to be under way"
        )
        began = time.monotonic()
        private_cluster.restart("fast")  # every connection of every node is cut
        back = time.monotonic()
        done_when_back = int(await fetchval(dsn, count_done) or 0)
        await wait_until(
            lambda: _at_least(dsn, count_done, done_when_back + 1),
            timeout=60,
            interval=0.02,
            what="the nodes to make progress again after the restart",
        )
        recovered = time.monotonic()
        await wait_until(
            lambda: _at_least(dsn, count_done, 4_000),
            timeout=120,
            what="every job to succeed after the restart",
        )
        print(
            f"Postgres restart took {back - began:.2f} s; the nodes finished jobs again "
            f"{recovered - back:.2f} s after it was back"
        )
    finally:
        runner.close()
        await producer.stop()
    runs = read_runs(str(runs_dir))
    executed = [job_id for per_node in runs.values() for job_id, _ in per_node]
    assert len(executed) == len(set(executed)) == 4_000, "each job ran exactly once"
    assert set(executed) == {str(i) for i in ids}
    assert os.listdir(runs_dir)


async def _at_least(dsn: str, query: str, n: int) -> bool:
    value = await fetchval(dsn, query)
    return value is not None and int(value) >= n  # type: ignore[call-overload]
