"""Node death inside a workflow (DESIGN §6, §10): a node is killed in the middle of one.

Retryable steps it was running re-run on the surviving node and the workflow goes on past
them; steps without retries become ``lost``, their transitive dependents are cancelled as
``upstream_failed`` (never started), and every branch that does not depend on a lost step
still completes. Every execution is recorded in the runs table, so which attempt ran in which
process is proved, not assumed.
"""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import asyncpg

from asyncjobs import App, Workflow
from tests.helpers import wait_until

from .nodes import NodeRunner, subprocess_env
from .test_chaos import FAST_LIVENESS

HOLD_S = 600  # the first attempts on the victim hold until it is killed, whatever comes first
SETTLE_TIMEOUT_S = 60.0

Events = list[tuple[int, str, int]]  # (attempt, event, pid), in the order recorded


async def steps_by_key(db: asyncpg.Connection, schema: str, workflow_id: uuid.UUID) -> Any:
    """The workflow's job rows, by step key."""
    rows = await db.fetch(
        f"SELECT id, step, state::text AS state, attempt, node_id, reason, started_at, "
        f"finished_at FROM {schema}.asyncjobs_jobs WHERE workflow_id = $1",
        workflow_id,
    )
    return {r["step"]: r for r in rows}


async def events_by_job(db: asyncpg.Connection, schema: str) -> dict[uuid.UUID, Events]:
    rows = await db.fetch(
        f"SELECT job_id, attempt, event, pid FROM {schema}.acceptance_runs ORDER BY seq"
    )
    events: dict[uuid.UUID, Events] = {}
    for r in rows:
        events.setdefault(r["job_id"], []).append((r["attempt"], r["event"], r["pid"]))
    return events


async def test_node_death_in_a_workflow_reruns_retryable_steps_and_cancels_dependents_of_lost_ones(
    nodes: NodeRunner, producer: App, db: asyncpg.Connection, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema, **FAST_LIVENESS)
    victim = await nodes.start("--concurrency", "20", env=env)

    wf = Workflow("node death")
    first = wf.add(producer.signature("record"), key="first")
    # Running on the victim when it dies: two retryable steps, two at-most-once ones.
    retry_a = wf.add(producer.signature("hold_first_attempt", HOLD_S), after=[first], key="retry_a")
    retry_b = wf.add(producer.signature("hold_first_attempt", HOLD_S), key="retry_b")
    once_a = wf.add(producer.signature("hold", HOLD_S), after=[first], key="once_a")
    once_b = wf.add(producer.signature("hold", HOLD_S), key="once_b")
    # Past the retryable steps: a chain, a child, and a join of both. None depends on a lost
    # step, so this part of the workflow must complete.
    retry_a_child = wf.add(producer.signature("record"), after=[retry_a], key="retry_a_child")
    wf.add(producer.signature("record"), after=[retry_a_child], key="retry_a_grandchild")
    wf.add(producer.signature("record"), after=[retry_b], key="retry_b_child")
    both_retried = wf.add(producer.signature("record"), after=[retry_a, retry_b], key="join")
    # Downstream of the at-most-once steps: a chain, a child, a step that also waits on a
    # retryable step (which later succeeds), and a step after that one and the join above.
    once_a_child = wf.add(producer.signature("record"), after=[once_a], key="once_a_child")
    wf.add(producer.signature("record"), after=[once_a_child], key="once_a_grandchild")
    wf.add(producer.signature("record"), after=[once_b], key="once_b_child")
    mixed = wf.add(producer.signature("record"), after=[retry_a, once_b], key="mixed")
    wf.add(producer.signature("record"), after=[mixed, both_retried], key="mixed_child")
    workflow_id = await producer.submit(wf)

    holding = [retry_a.id, retry_b.id, once_a.id, once_b.id]
    runs = f"{pg_schema}.acceptance_runs"
    await wait_until(
        lambda: db.fetchval(
            f"SELECT count(DISTINCT job_id) = 4 FROM {runs} WHERE event = 'start' "
            "AND job_id = ANY($1)",
            holding,
        ),
        timeout=30,
        what="the victim to start the four holding steps",
    )
    before = await steps_by_key(db, pg_schema, workflow_id)
    running = {k for k, r in before.items() if r["state"] == "running"}
    assert running == {"retry_a", "retry_b", "once_a", "once_b"}
    assert {before[k]["node_id"] for k in running} == {victim.node_id}
    assert before["first"]["state"] == "succeeded"
    assert {r["state"] for k, r in before.items() if k not in running | {"first"}} == {"waiting"}
    status = await producer.workflow_status(workflow_id)
    assert status.state == "running"

    survivor = await nodes.start("--concurrency", "20", env=env)
    os.killpg(victim.pid, signal.SIGKILL)
    await wait_until(
        lambda: db.fetchval(
            f"SELECT reaped_at IS NOT NULL FROM {pg_schema}.asyncjobs_nodes WHERE id = $1",
            victim.node_id,
        ),
        timeout=30,
        interval=0.05,
        what="the survivor to reap the killed node",
    )

    async def finished() -> Any:
        current = await producer.workflow_status(workflow_id)
        return current if current.is_finished else None

    status = await wait_until(
        finished, timeout=SETTLE_TIMEOUT_S, interval=0.1, what="the workflow to finish"
    )

    reaped_by = await db.fetchval(
        f"SELECT reaped_by FROM {pg_schema}.asyncjobs_nodes WHERE id = $1", victim.node_id
    )
    assert reaped_by == survivor.node_id
    after = await steps_by_key(db, pg_schema, workflow_id)
    events = await events_by_job(db, pg_schema)
    v, s = victim.pid, survivor.pid

    assert {k: r["state"] for k, r in after.items()} == {
        "first": "succeeded",
        "retry_a": "succeeded",
        "retry_b": "succeeded",
        "retry_a_child": "succeeded",
        "retry_a_grandchild": "succeeded",
        "retry_b_child": "succeeded",
        "join": "succeeded",
        "once_a": "lost",
        "once_b": "lost",
        "once_a_child": "cancelled",
        "once_a_grandchild": "cancelled",
        "once_b_child": "cancelled",
        "mixed": "cancelled",
        "mixed_child": "cancelled",
    }
    assert status.state == "failed"
    assert status.total == 14
    assert {k: n for k, n in status.counts.items() if n} == {
        "succeeded": 7,
        "lost": 2,
        "cancelled": 5,
    }

    # Ran before the kill, on the victim, once.
    assert events[first.id] == [(1, "run", v)]
    # Retryable: the first attempt started on the victim and never ended there; the second
    # ran whole on the survivor; there was no third.
    for key in ("retry_a", "retry_b"):
        row = after[key]
        assert events[row["id"]] == [(1, "start", v), (2, "start", s), (2, "end", s)], key
        assert (row["attempt"], row["node_id"]) == (2, survivor.node_id), key
    # Past them, every step ran once, on the survivor.
    for key in ("retry_a_child", "retry_a_grandchild", "retry_b_child", "join"):
        row = after[key]
        assert events[row["id"]] == [(1, "run", s)], key
        assert (row["attempt"], row["node_id"]) == (1, survivor.node_id), key

    # At most once: started on the victim, never ended, never ran again; lost with the
    # reaper's reason.
    reaper_reason = f"node {victim.node_id} stopped heartbeating at "
    for key in ("once_a", "once_b"):
        row = after[key]
        assert events[row["id"]] == [(1, "start", v)], key
        assert (row["attempt"], row["node_id"]) == (1, victim.node_id), key
        assert row["reason"].startswith(reaper_reason), (key, row["reason"])
    assert sorted((f.step, f.state) for f in status.failures) == [
        ("once_a", "lost"),
        ("once_b", "lost"),
    ]
    assert all(f.reason is not None and f.reason.startswith(reaper_reason) for f in status.failures)

    # Their transitive dependents never started anywhere, and were cancelled by the reaper's
    # own transaction (the same now() as the lost steps), before any retry ran.
    lost_at = {after["once_a"]["finished_at"], after["once_b"]["finished_at"]}
    assert len(lost_at) == 1
    for key in ("once_a_child", "once_a_grandchild", "once_b_child", "mixed", "mixed_child"):
        row = after[key]
        assert row["id"] not in events, key
        assert (row["attempt"], row["started_at"], row["node_id"]) == (0, None, None), key
        assert row["reason"] == "upstream_failed", (key, row["reason"])
        assert row["finished_at"] in lost_at, key
    assert max(lost_at) <= min(after[k]["started_at"] for k in ("retry_a", "retry_b"))
