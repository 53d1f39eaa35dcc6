"""Durable jobs under chaos (issue 16): nodes killed mid-step, Postgres restarted mid-step, a
node cut off mid-step. A completed step never runs again; a step that is not idempotent and
was running when its node died is in doubt, and its job ends ``lost``, never re-run.

Real ``asyncjobs node`` processes on real Postgres, running the five-step durable job
``provision`` of jobs_app.py. Every execution of a step's function is recorded outside the
job tables (``acceptance_step_runs``, with the attempt and process that ran it), so "ran
exactly once" is counted, not assumed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from asyncjobs import App, JobState, Settings, localpg
from asyncjobs.localpg import LocalCluster
from tests.helpers import wait_until

from .jobs_app import PROVISION_STEPS, RUNS_DDL, STEP_RUNS_DDL, build_app
from .nodes import NodeProcess, NodeRunner, subprocess_env
from .proxy import CuttableProxy

FAST_LIVENESS = {"heartbeat_interval_s": "1", "node_timeout_s": "3", "poll_interval_s": "1"}
JOBS = 100  # per kill or restart
QUOTA, IP, DISK, BOOT, NOTIFY = PROVISION_STEPS  # DISK is step 3, the one the tests interrupt

Run = tuple[str, int, int]  # what ran (event), in which attempt, in which process


def ran(node: NodeProcess, attempt: int, *steps: str) -> list[Run]:
    """The records of ``steps``' functions running once each, in that attempt on that node."""
    return [(f"step:{name}", attempt, node.pid) for name in steps]


def made(node: NodeProcess, attempt: int, vm: str, *steps: str) -> list[dict[str, Any]]:
    """What those steps returned (each returns who ran it): what the job's result holds."""
    return [{"step": s, "vm": vm, "attempt": attempt, "pid": node.pid} for s in steps]


def in_doubt_reason(node: NodeProcess) -> str:
    return f"step '{DISK}' (#3) was running on node {node.node_id} when it died"


async def step_runs(con: asyncpg.Connection, schema: str) -> dict[uuid.UUID, list[Run]]:
    """Every recorded execution, by job, in the order they were recorded."""
    rows = await con.fetch(
        f"SELECT job_id, event, attempt, pid FROM {schema}.acceptance_step_runs ORDER BY at, token"
    )
    out: dict[uuid.UUID, list[Run]] = {}
    for r in rows:
        out.setdefault(r["job_id"], []).append((r["event"], r["attempt"], r["pid"]))
    return out


async def steps_of(app: App, job_id: uuid.UUID) -> list[tuple[int, str, str, int, Any]]:
    """The job's recorded steps (app.steps): seq, name, state, attempt, node."""
    return [(s.seq, s.name, s.state, s.attempt, s.node_id) for s in await app.steps(job_id)]


async def jobs_in(con: asyncpg.Connection, schema: str, ids: Sequence[uuid.UUID]) -> list[Any]:
    return await con.fetch(
        f"SELECT id, state::text, attempt, max_attempts, reason, result, node_id "
        f"FROM {schema}.asyncjobs_jobs WHERE id = ANY($1) ORDER BY id",
        list(ids),
    )


async def holding(con: asyncpg.Connection, schema: str, event: str, n: int) -> bool:
    """True once ``n`` jobs recorded ``event`` (they hold there), and each of them has its
    steps 1 and 2 recorded as succeeded."""
    return bool(
        await con.fetchval(
            f"SELECT (SELECT count(*) FROM {schema}.acceptance_step_runs WHERE event = $1) = $2 "
            f"AND (SELECT count(*) FROM {schema}.asyncjobs_job_steps "
            "     WHERE seq <= 2 AND state = 'succeeded') = 2 * $2",
            event,
            n,
        )
    )


async def none_unfinished(con: asyncpg.Connection, schema: str) -> bool:
    return bool(
        await con.fetchval(
            f"SELECT count(*) = 0 FROM {schema}.asyncjobs_jobs "
            "WHERE state IN ('queued', 'running', 'scheduled', 'waiting')"
        )
    )


# -- kill -9 of a node in the middle of a five-step durable job -------------------------------


async def kill_while_holding(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, dsn: str, schema: str,
    holds_at: str, **options: Any,
) -> tuple[NodeProcess, NodeProcess, list[uuid.UUID]]:  # fmt: skip
    """JOBS provision jobs on a victim node, killed (-9) once every one of them holds at
    ``holds_at`` (an event each records there); a survivor node, started just before the
    kill, reaps it. Returns once no job is unfinished."""
    await db.execute(STEP_RUNS_DDL.format(schema=schema))
    env = subprocess_env(dsn, schema, **FAST_LIVENESS)
    victim = await nodes.start("--concurrency", str(JOBS), env=env)
    ids = await producer.enqueue_many(
        [producer.signature("provision", f"vm-{i}", **options) for i in range(JOBS)]
    )
    await wait_until(
        lambda: holding(db, schema, holds_at, JOBS),
        timeout=30,
        interval=0.05,
        what=f"every job to complete steps 1-2 and hold at {holds_at!r}",
    )
    survivor = await nodes.start("--concurrency", str(JOBS), env=env)
    os.killpg(victim.pid, signal.SIGKILL)
    await wait_until(
        lambda: none_unfinished(db, schema), timeout=30, interval=0.05, what="every job to end"
    )
    reaped_by = await db.fetchval(
        f"SELECT reaped_by FROM {schema}.asyncjobs_nodes WHERE id = $1", victim.node_id
    )
    assert reaped_by == survivor.node_id
    return victim, survivor, list(ids)


async def test_kill_9_during_a_step_that_is_not_idempotent_loses_the_job_and_runs_nothing_twice(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    victim, _, ids = await kill_while_holding(
        nodes, producer, db, pg_dsn, pg_schema, f"step:{DISK}", hold="step"
    )

    runs = await step_runs(db, pg_schema)
    for job in await jobs_in(db, pg_schema, ids):
        assert (job["state"], job["attempt"]) == ("lost", 1)
        assert job["reason"] == in_doubt_reason(victim)
        # Steps 1-2 once, step 3 once (killed), 4-5 never; and nothing anywhere since.
        assert runs[job["id"]] == ran(victim, 1, QUOTA, IP, DISK)
        assert await steps_of(producer, job["id"]) == [
            (1, QUOTA, "succeeded", 1, victim.node_id),
            (2, IP, "succeeded", 1, victim.node_id),
            (3, DISK, "running", 1, victim.node_id),
        ]


async def test_kill_9_during_an_idempotent_step_resumes_on_the_survivor_and_reruns_only_it(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    victim, survivor, ids = await kill_while_holding(
        nodes, producer, db, pg_dsn, pg_schema, f"step:{DISK}", hold="step", idempotent_step3=True
    )

    runs = await step_runs(db, pg_schema)
    for i, job_id in enumerate(ids):
        record = await producer.get(job_id)
        assert (record.state, record.attempt) == (JobState.SUCCEEDED, 2)
        assert record.node_id == survivor.node_id
        # Steps 1-2 replayed (their recorded results), 3 run again, then 4-5 once.
        vm = f"vm-{i}"
        assert record.result == made(victim, 1, vm, QUOTA, IP) + made(
            survivor, 2, vm, DISK, BOOT, NOTIFY
        )
        assert runs[job_id] == ran(victim, 1, QUOTA, IP, DISK) + ran(
            survivor, 2, DISK, BOOT, NOTIFY
        )
        assert [s[:4] for s in await steps_of(producer, job_id)] == [
            (1, QUOTA, "succeeded", 1),
            (2, IP, "succeeded", 1),
            (3, DISK, "succeeded", 2),
            (4, BOOT, "succeeded", 2),
            (5, NOTIFY, "succeeded", 2),
        ]


async def test_kill_9_between_two_steps_resumes_the_job_though_it_has_no_retries(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    victim, survivor, ids = await kill_while_holding(
        nodes, producer, db, pg_dsn, pg_schema, "between", hold="between"
    )

    runs = await step_runs(db, pg_schema)
    for i, job_id in enumerate(ids):
        record = await producer.get(job_id)
        # At most once (no Retry), but no step was in doubt: a resume, not a retry.
        assert (record.state, record.attempt, record.max_attempts) == (JobState.SUCCEEDED, 2, 2)
        vm = f"vm-{i}"
        assert record.result == made(victim, 1, vm, QUOTA, IP) + made(
            survivor, 2, vm, DISK, BOOT, NOTIFY
        )
        assert runs[job_id] == [
            *ran(victim, 1, QUOTA, IP),
            ("between", 1, victim.pid),
            *ran(survivor, 2, DISK, BOOT, NOTIFY),
        ]


# -- Postgres restarted while every job is inside a step ---------------------------------------


@pytest.fixture
def private_cluster(private_cluster_dir: Path) -> LocalCluster:
    """A throwaway Postgres this test may stop and start (the machine's server is untouched)."""
    cluster = LocalCluster(private_cluster_dir, fsync=False)
    cluster.start()
    return cluster


async def fetchval(dsn: str, query: str, *args: object) -> object:
    """One query on a fresh connection; None while the database is unreachable."""
    try:
        con = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return await con.fetchval(query, *args)
    finally:
        await con.close()


def jobs_retrying_a_step_write(node: NodeProcess) -> set[str]:
    """The ids of the jobs whose step write the node has logged it retries (an outage)."""
    text = node.log_path.read_text(errors="replace")
    return set(re.findall(r"job provision \(([0-9a-f-]{36})\) cannot record its step yet", text))


async def test_a_postgres_restart_mid_step_is_waited_out_and_no_step_runs_twice(
    private_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn, schema = private_cluster.dsn, "durable_outage"
    gate = tmp_path / "gate"
    producer = build_app(Settings(dsn=dsn, schema=schema))
    await producer.start(node=False)
    runner = NodeRunner(dsn, schema, tmp_path)
    try:
        await producer.store.migrate()
        con = await asyncpg.connect(dsn)
        try:
            await con.execute(RUNS_DDL.format(schema=schema))
            await con.execute(STEP_RUNS_DDL.format(schema=schema))
        finally:
            await con.close()
        env = subprocess_env(
            dsn, schema, heartbeat_interval_s="1", node_timeout_s="10", poll_interval_s="1"
        )
        node = await runner.start("--concurrency", str(JOBS), env=env)
        ids = await producer.enqueue_many(
            [
                producer.signature(
                    "provision", f"vm-{i}", hold="step", gate=str(gate), idempotent_step3=i % 2 == 1
                )
                for i in range(JOBS)
            ]
        )  # half of them with step 3 idempotent: its write is the result alone
        await wait_until(
            lambda: fetchval(
                dsn,
                f"SELECT count(*) = $1 FROM {schema}.acceptance_step_runs WHERE event = $2",
                JOBS,
                f"step:{DISK}",
            ),
            timeout=30,
            interval=0.05,
            what="every job to be inside step 3",
        )

        # Stopped, not restarted: step 3 ends while Postgres is away, so its result must wait.
        port = private_cluster.port
        private_cluster.stop()
        gate.touch()
        await wait_until(
            lambda: len(jobs_retrying_a_step_write(node)) == JOBS,
            timeout=20,
            interval=0.05,
            what=f"every job to retry the result of step 3 during the outage\n{node.output()}",
        )
        assert await fetchval(dsn, "SELECT 1") is None, "Postgres was down all along"
        monkeypatch.setattr(localpg, "_free_port", lambda: port)  # back on the node's port
        private_cluster.start()

        await wait_until(
            lambda: fetchval(
                dsn,
                f"SELECT count(*) = 0 FROM {schema}.asyncjobs_jobs "
                "WHERE state IN ('queued', 'running', 'scheduled', 'waiting')",
            ),
            timeout=60,
            interval=0.05,
            what=f"every job to end after the outage\n{node.output()}",
        )
        assert node.proc.poll() is None, "the node kept running"
        con = await asyncpg.connect(dsn)
        try:
            runs = await step_runs(con, schema)
            jobs = await jobs_in(con, schema, ids)
            node_rows = await con.fetch(
                f"SELECT id, reaped_at FROM {schema}.asyncjobs_nodes WHERE pid = $1", node.pid
            )
        finally:
            await con.close()
        assert [(r["id"], r["reaped_at"]) for r in node_rows] == [(node.node_id, None)]
        for job in jobs:
            assert (job["state"], job["attempt"]) == ("succeeded", 1)
            # Each step once, in the one attempt, on the one node: no step ran twice.
            assert runs[job["id"]] == ran(node, 1, *PROVISION_STEPS)
            steps = await steps_of(producer, job["id"])
            assert steps == [
                (seq, name, "succeeded", 1, node.node_id)
                for seq, name in enumerate(PROVISION_STEPS, 1)
            ]
    finally:
        runner.close()
        await producer.stop()


async def test_an_outage_longer_than_the_node_timeout_makes_no_node_reap_another(
    private_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node lives through the outage: once Postgres is back, every heartbeat is old,
    but a node reaps only after it has itself been in touch for node_timeout_s, by which
    time the others have heartbeated. Before that rule, the first node back reaped the other
    and its jobs in step 3 ended lost."""
    dsn, schema = private_cluster.dsn, "durable_long_outage"
    gate = tmp_path / "gate"
    producer = build_app(Settings(dsn=dsn, schema=schema))
    await producer.start(node=False)
    runner = NodeRunner(dsn, schema, tmp_path)
    try:
        await producer.store.migrate()
        con = await asyncpg.connect(dsn)
        try:
            await con.execute(RUNS_DDL.format(schema=schema))
            await con.execute(STEP_RUNS_DDL.format(schema=schema))
        finally:
            await con.close()
        env = subprocess_env(dsn, schema, **FAST_LIVENESS)  # node timeout 3 s
        first = await runner.start("--concurrency", "20", env=env)
        second = await runner.start("--concurrency", "20", env=env)
        ids = await producer.enqueue_many(
            [producer.signature("provision", f"vm-{i}", hold="step", gate=str(gate))
             for i in range(40)]
        )  # fmt: skip
        await wait_until(
            lambda: fetchval(
                dsn,
                f"SELECT count(*) = 40 FROM {schema}.acceptance_step_runs WHERE event = $1",
                f"step:{DISK}",
            ),
            timeout=30,
            interval=0.05,
            what="every job to be inside step 3",
        )
        port = private_cluster.port
        private_cluster.stop()
        # The outage must outlast the node timeout (3 s) with room to spare: this sleep is
        # the length of the outage, not a wait for some state.
        await asyncio.sleep(6)
        monkeypatch.setattr(localpg, "_free_port", lambda: port)
        private_cluster.start()
        gate.touch()
        await wait_until(
            lambda: fetchval(
                dsn,
                f"SELECT count(*) = 0 FROM {schema}.asyncjobs_jobs "
                "WHERE state IN ('queued', 'running', 'scheduled', 'waiting')",
            ),
            timeout=60,
            interval=0.05,
            what=f"every job to end\n{first.output()}\n{second.output()}",
        )
        con = await asyncpg.connect(dsn)
        try:
            reaped = await con.fetchval(
                f"SELECT count(*) FROM {schema}.asyncjobs_nodes WHERE reaped_at IS NOT NULL"
            )
            jobs = await jobs_in(con, schema, ids)
            runs = await step_runs(con, schema)
        finally:
            await con.close()
        assert reaped == 0, f"a live node was reaped\n{first.output()}\n{second.output()}"
        assert {j["state"] for j in jobs} == {"succeeded"}
        for job in jobs:
            assert [event for event, _, _ in runs[job["id"]]] == [
                f"step:{name}" for name in PROVISION_STEPS
            ]
    finally:
        runner.close()
        await producer.stop()


# -- a node cut off from Postgres while its jobs are inside step 3 -----------------------------


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


async def test_a_node_cut_off_mid_step_is_reaped_and_its_late_step_results_are_fenced(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, proxy: CuttableProxy,
    pg_dsn: str, pg_schema: str, tmp_path: Path,
) -> None:  # fmt: skip
    await db.execute(STEP_RUNS_DDL.format(schema=pg_schema))
    cut_off = await nodes.start(
        "--concurrency", "100",
        env=subprocess_env(through(proxy, pg_dsn), pg_schema, **FAST_LIVENESS),
    )  # fmt: skip
    # Step 3 holds until its gate opens, and a cancel does not stop it: it ends after its
    # node was reaped, either while the node is still cut off (gate "outage": its result
    # waits for the database, then races the rejoin) or once the node has rejoined and
    # given up on it (gate "rejoined": its result is written, and must be refused).
    gates = {name: tmp_path / name for name in ("outage", "rejoined")}
    ids: dict[tuple[bool, str], list[uuid.UUID]] = {}
    for idempotent in (False, True):
        for name, gate in gates.items():
            options = {"hold": "step", "gate": str(gate), "stubborn": True}
            vms = [f"vm-{idempotent:d}-{name}-{i}" for i in range(10)]
            ids[idempotent, name] = await producer.enqueue_many(
                [
                    producer.signature("provision", vm, idempotent_step3=idempotent, **options)
                    for vm in vms
                ]
            )
    everything = [job_id for group in ids.values() for job_id in group]
    await wait_until(
        lambda: holding(db, pg_schema, f"step:{DISK}", 40),
        timeout=30,
        interval=0.05,
        what="every job to complete steps 1-2 and be inside step 3",
    )
    healthy = await nodes.start(
        "--concurrency", "100", env=subprocess_env(pg_dsn, pg_schema, **FAST_LIVENESS)
    )

    await proxy.cut()
    await wait_until(
        lambda: db.fetchval(
            f"SELECT reaped_by FROM {pg_schema}.asyncjobs_nodes WHERE id = $1", cut_off.node_id
        ),
        timeout=20,
        what="the healthy node to reap the cut-off one",
    )
    await wait_until(
        lambda: none_unfinished(db, pg_schema),
        timeout=30,
        what="the doubtful jobs to be lost and the others to finish on the healthy node",
    )
    decided = await jobs_in(db, pg_schema, everything)
    decided_steps = [await steps_of(producer, job_id) for job_id in everything]

    gates["outage"].touch()
    outage = {str(i) for idempotent in (False, True) for i in ids[idempotent, "outage"]}
    await wait_until(
        lambda: outage <= jobs_retrying_a_step_write(cut_off),
        timeout=15,
        interval=0.05,
        what=f"step 3 to end, its result waiting for the database\n{cut_off.output()}",
    )
    await proxy.restore()
    await cut_off.wait_output("rejoined as node", timeout=30)
    gates["rejoined"].touch()
    await wait_until(  # its job raises (refused, or stopped), or goes on to step 4 (must not)
        lambda: db.fetchval(
            f"SELECT count(DISTINCT job_id) = 40 FROM {pg_schema}.acceptance_step_runs "
            "WHERE pid = $1 AND (event LIKE 'raised:%' OR event = $2)",
            cut_off.pid,
            f"step:{BOOT}",
        ),
        timeout=30,
        what=f"the cut-off node's 40 late runs of step 3 to end\n{cut_off.output()}",
    )

    # The late results changed nothing: not the jobs, not their steps.
    assert await jobs_in(db, pg_schema, everything) == decided
    assert [await steps_of(producer, job_id) for job_id in everything] == decided_steps
    runs = await step_runs(db, pg_schema)
    refused = (f"raised:{DISK}:StaleAttemptError", 1, cut_off.pid)
    stopped = (f"raised:{DISK}:CancelledError", 1, cut_off.pid)  # by the rejoin, unwritten
    ignored = (f"cancel-ignored:{DISK}", 1, cut_off.pid)  # the rejoin gave up on it
    fenced = 0
    for (idempotent, gate_name), group in ids.items():
        for job_id in group:
            job_runs = runs[job_id]
            late = [r for r in job_runs if not r[0].startswith("step:")]
            if gate_name == "rejoined":
                assert late == [ignored, refused]
            else:
                assert late in ([refused], [stopped])
                fenced += late == [refused]
            record = await producer.get(job_id)
            if not idempotent:
                assert (record.state, record.attempt) == (JobState.LOST, 1)
                assert record.reason == in_doubt_reason(cut_off)
                # Never run again, even after its node rejoined: 4-5 never ran anywhere.
                assert [r for r in job_runs if r[0].startswith("step:")] == ran(
                    cut_off, 1, QUOTA, IP, DISK
                )
                assert await steps_of(producer, job_id) == [
                    (1, QUOTA, "succeeded", 1, cut_off.node_id),
                    (2, IP, "succeeded", 1, cut_off.node_id),
                    (3, DISK, "running", 1, cut_off.node_id),
                ]
                continue
            assert (record.state, record.attempt) == (JobState.SUCCEEDED, 2)
            vm = f"vm-1-{gate_name}-{group.index(job_id)}"
            assert record.result == made(cut_off, 1, vm, QUOTA, IP) + made(
                healthy, 2, vm, DISK, BOOT, NOTIFY
            )
            # Steps 1-2 ran once; step 3 twice (the cut-off run, whose result was refused,
            # and the resume); steps 4-5 once, on the healthy node.
            assert [r for r in job_runs if r[0].startswith("step:")] == ran(
                cut_off, 1, QUOTA, IP, DISK
            ) + ran(healthy, 2, DISK, BOOT, NOTIFY)
            assert await steps_of(producer, job_id) == [
                (1, QUOTA, "succeeded", 1, cut_off.node_id),
                (2, IP, "succeeded", 1, cut_off.node_id),
                (3, DISK, "succeeded", 2, healthy.node_id),
                (4, BOOT, "succeeded", 2, healthy.node_id),
                (5, NOTIFY, "succeeded", 2, healthy.node_id),
            ]
    print(
        f"of the 20 results of step 3 that waited out the cut, {fenced} reached Postgres and "
        f"were refused; the rejoin stopped the other {20 - fenced} before they were written"
    )
