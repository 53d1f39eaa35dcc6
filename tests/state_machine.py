"""The job state machine (DESIGN §3 and §10), driven through the Store protocol.

A pure-Python model says what every job's state must be after each step:
- enqueue (ready or scheduled, with unique keys, retryable or at most once);
- claim;
- complete (success, failure, cancel, retry now, retry later);
- cancel;
- promote_due, heartbeat and the passing of time;
- a node dying and being reaped, and a dead node still reporting.

Outcomes carry a fencing token (attempt and node). One for a stale attempt, another node or a
reaped node must be rejected and change nothing. The same machine runs against every store:
tests/unit (MemoryStore) and tests/integration (Postgres).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from asyncjobs.ids import new_ids
from asyncjobs.jobs import JobId, JobRecord, JobState
from asyncjobs.store.base import NewJob, NodeInfo, Outcome, Store


@dataclass
class Backend:
    """How the machine gets a fresh, empty store, counts its jobs, and closes it."""

    open: Callable[[], Awaitable[Store]]
    count: Callable[[Store], Awaitable[int]]
    close: Callable[[Store], Awaitable[None]]


QUEUES = ("a", "b")
TERMINAL = {"succeeded", "failed", "cancelled", "lost"}
PENDING = {"scheduled", "queued"}
# Retries are listed twice: they lead to second claims, where fencing matters most.
OUTCOME_KINDS = ("succeeded", "failed", "cancelled") + ("retry_queued", "retry_scheduled") * 2
ARGS = orjson.dumps([[], {}])


@dataclass
class ModelJob:
    id: JobId
    queue: str
    priority: int
    state: str
    run_at: float
    unique_key: str | None
    max_attempts: int = 3
    attempt: int = 0
    node: JobId | None = None
    cancel_requested: bool = False
    reason: str | None = None
    result: Any = None
    error: Any = None


new_job_specs = st.tuples(
    st.sampled_from(QUEUES),
    st.integers(-2, 2),
    st.one_of(st.just(0.0), st.floats(0.5, 120.0)),
    st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
    st.sampled_from([1, 3]),  # at most once, or retryable
)
JobSpec = tuple[str, int, float, str | None, int]


class JobStoreMachine(RuleBasedStateMachine):
    backend: Backend  # set by the test module that runs the machine

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = self.run(self.backend.open())
        self.now = 1_700_000_000.0
        self.model: dict[JobId, ModelJob] = {}
        self.nodes = [self.new_node(), self.new_node()]
        self.dead_nodes: list[JobId] = []
        self.claimed_tokens: set[tuple[JobId, int]] = set()
        self.terminal_records: dict[JobId, JobRecord] = {}
        self.highest_attempt: dict[JobId, int] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def new_node(self) -> JobId:
        node = uuid.uuid4()
        self.run(self.store.register_node(NodeInfo(node, "host", 1, "test", QUEUES, 10)))
        return node

    def teardown(self) -> None:
        try:
            self.run(self.backend.close(self.store))
        finally:
            self.loop.close()

    def in_state(self, *states: str) -> list[ModelJob]:
        return [job for job in self.model.values() if job.state in states]

    # -- rules ---------------------------------------------------------------------------------

    @initialize(specs=st.lists(new_job_specs, min_size=1, max_size=5))
    def enqueue_some_jobs_first(self, specs: list[JobSpec]) -> None:
        self.enqueue(specs)

    @rule(specs=st.lists(new_job_specs, min_size=1, max_size=3))
    def enqueue(self, specs: list[JobSpec]) -> None:
        ids = new_ids(len(specs))
        new_jobs = []
        expected = []
        for job_id, (queue, priority, delay, key, max_attempts) in zip(ids, specs, strict=True):
            state = "scheduled" if delay > 0 else "queued"
            run_at = self.now + delay
            new_jobs.append(
                NewJob(job_id, "job", queue, priority, state, ARGS, run_at, max_attempts, key)
            )
            holder = next(
                (
                    j
                    for j in self.model.values()
                    if key and j.unique_key == key and j.state not in TERMINAL
                ),
                None,
            )
            if holder is not None:
                expected.append(holder.id)
                continue
            self.model[job_id] = ModelJob(job_id, queue, priority, state, run_at, key, max_attempts)
            expected.append(job_id)
        assert self.run(self.store.enqueue(new_jobs)) == expected

    @rule(
        node=st.integers(0, 1),
        limits=st.dictionaries(st.sampled_from(QUEUES), st.integers(1, 3), min_size=1),
    )
    def claim(self, node: int, limits: dict[str, int]) -> None:
        node_id = self.nodes[node]
        claimed = self.run(self.store.claim(node_id, limits, self.now))
        expected: set[JobId] = set()
        for queue, limit in limits.items():
            ready = [j for j in self.in_state("queued") if j.queue == queue]
            ready.sort(key=lambda j: (-j.priority, j.id))  # highest priority, then oldest
            expected.update(j.id for j in ready[:limit])
        assert {c.id for c in claimed} == expected
        assert len(claimed) == len(expected)
        for c in claimed:
            job = self.model[c.id]
            assert c.attempt == job.attempt + 1
            assert (c.id, c.attempt) not in self.claimed_tokens, "claimed twice for one attempt"
            self.claimed_tokens.add((c.id, c.attempt))
            job.state, job.attempt, job.node, job.cancel_requested = (
                "running",
                c.attempt,
                node_id,
                False,
            )

    @precondition(lambda self: self.in_state("running"))
    @rule(count=st.integers(1, 3), wrong_node=st.sampled_from([False] * 3 + [True]), data=st.data())
    def complete(self, count: int, wrong_node: bool, data: st.DataObject) -> None:
        running = sorted(j.id for j in self.in_state("running"))
        owner = self.model[data.draw(st.sampled_from(running), label="owner's job")].node
        assert owner is not None
        # Mostly the owner reports; sometimes the other node reports the owner's jobs.
        reporter = self.nodes[1 - self.nodes.index(owner)] if wrong_node else owner
        outcomes = [self.draw_outcome(owner, data) for _ in range(count)]
        rejected = self.run(self.store.complete(reporter, outcomes))
        expected_rejected = []
        for o in outcomes:
            job = self.model[o.id]
            if job.state != "running" or job.attempt != o.attempt or job.node != reporter:
                expected_rejected.append(o.id)  # fencing: stale attempt, other node, not running
                continue
            state = o.state
            if job.cancel_requested and state in ("queued", "scheduled"):
                state = "cancelled"  # a retry never outruns a cancel request (DESIGN §10)
            elif job.attempt >= job.max_attempts and state in ("queued", "scheduled"):
                state = "failed"  # nor goes past the job's attempts
            job.result = orjson.loads(o.result) if o.result is not None else None
            job.error = orjson.loads(o.error) if o.error is not None else None
            if state != "cancelled" or (o.state == "cancelled" and o.reason is not None):
                job.reason = o.reason  # a cancel without its own reason keeps the request's
            if o.run_at is not None and state in ("queued", "scheduled"):
                job.run_at = o.run_at
            job.state = state
        assert Counter(rejected) == Counter(expected_rejected)

    def draw_outcome(self, owner: JobId, data: st.DataObject) -> Outcome:
        """An outcome for a job of ``owner``: mostly with its current token, sometimes stale."""
        mine = sorted(j.id for j in self.in_state("running") if j.node == owner)
        token = data.draw(st.sampled_from(["current"] * 4 + ["old attempt", "any"]))
        if mine and token != "any":
            job = self.model[data.draw(st.sampled_from(mine), label="job")]
            attempt = job.attempt if token == "current" else job.attempt - 1
        else:
            job = self.model[data.draw(st.sampled_from(sorted(self.model)), label="job")]
            attempt = data.draw(st.integers(0, job.attempt + 1), label="attempt")
        kind = data.draw(st.sampled_from(OUTCOME_KINDS), label="kind")
        result = error = reason = run_at = None
        if kind == "succeeded":
            result = orjson.dumps({"attempt": attempt})
        elif kind == "failed":
            error, reason = orjson.dumps({"type": "Boom", "attempt": attempt}), "raised Boom"
        elif kind == "cancelled":
            reason = data.draw(st.sampled_from([None, "node shutdown"]), label="reason")
        elif kind == "retry_queued":
            error, kind = orjson.dumps({"type": "Flaky"}), "queued"
        else:
            error, kind = orjson.dumps({"type": "Flaky"}), "scheduled"
            run_at = self.now + data.draw(st.floats(0.5, 60.0), label="backoff")
        finished = self.now if kind in TERMINAL else 0.0
        return Outcome(job.id, attempt, kind, result, error, finished, run_at, reason)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), reason=st.sampled_from(["by request", "not needed"]))
    def cancel(self, data: st.DataObject, reason: str) -> None:
        running = sorted(j.id for j in self.in_state("running"))
        pick_running = running and data.draw(st.booleans(), label="a running job")
        candidates = running if pick_running else sorted(self.model)
        job = self.model[data.draw(st.sampled_from(candidates), label="job")]
        state = self.run(self.store.cancel(job.id, reason, self.now))
        if job.state in PENDING:
            job.state, job.reason, job.cancel_requested = "cancelled", reason, False
        elif job.state == "running":
            job.reason, job.cancel_requested = reason, True
        assert state == JobState(job.state)
        assert self.run(self.store.cancel(uuid.uuid4(), reason, self.now)) is None

    @rule(seconds=st.floats(0.0, 90.0), limit=st.integers(1, 3))
    def time_passes_and_due_jobs_are_promoted(self, seconds: float, limit: int) -> None:
        self.now += seconds
        due = [j for j in self.in_state("scheduled") if j.run_at <= self.now]
        result = self.run(self.store.promote_due(self.now, limit))
        assert result.moved == min(limit, len(due))
        records = self.fetch([j.id for j in due])
        moved = [j for j in due if records[j.id].state == JobState.QUEUED]
        kept = [j for j in due if records[j.id].state == JobState.SCHEDULED]
        assert len(moved) == result.moved
        assert len(moved) + len(kept) == len(due)
        if moved and kept:  # the earliest due jobs go first
            assert max(j.run_at for j in moved) <= min(j.run_at for j in kept)
        for job in moved:
            job.state = "queued"
        later = [j.run_at for j in self.in_state("scheduled") if j.run_at > self.now]
        if later:  # Postgres keeps microseconds
            assert result.next_run_at is not None
            assert abs(result.next_run_at - min(later)) < 1e-5
        else:
            assert result.next_run_at is None

    @rule(node=st.integers(0, 1), running=st.integers(0, 5))
    def heartbeat(self, node: int, running: int) -> None:
        node_id = self.nodes[node]
        beat = self.run(self.store.heartbeat(node_id, running))
        assert beat.alive
        expected = {
            j.id for j in self.in_state("running") if j.node == node_id and j.cancel_requested
        }
        assert set(beat.cancel_requested) == expected
        assert not self.run(self.store.heartbeat(uuid.uuid4(), running)).alive  # reaped/unknown

    @rule(data=st.data())
    def a_node_dies_and_is_reaped(self, data: st.DataObject) -> None:
        # A stop and a missed heartbeat take the same path through the reaper; a stop is
        # deterministic on every store (the database clock cannot be moved forward).
        index = data.draw(st.integers(0, 1), label="dead node")
        dead, reaper = self.nodes[index], self.nodes[1 - index]
        self.run(self.store.deregister_node(dead))
        reaped = self.run(self.store.reap(reaper, 3600.0, 10))
        assert [r.node_id for r in reaped] == [dead]
        victims = [j for j in self.in_state("running") if j.node == dead]
        counts = Counter[str]()
        for job in victims:
            if job.cancel_requested:
                job.state = "cancelled"
            elif job.attempt < job.max_attempts:
                job.state = "queued"
            else:
                job.state = "lost"
            counts[job.state] += 1
        (one,) = reaped
        assert (one.requeued, one.lost, one.cancelled) == (
            counts["queued"],
            counts["lost"],
            counts["cancelled"],
        )
        for job_id, record in self.fetch([j.id for j in victims]).items():
            job = self.model[job_id]
            if job.state != "cancelled":
                assert record.reason is not None
                assert record.reason.startswith(f"node {dead} stopped heartbeating at ")
                job.reason = record.reason
        self.nodes[index] = self.new_node()
        self.dead_nodes.append(dead)

    @precondition(lambda self: self.dead_nodes and self.model)
    @rule(data=st.data())
    def a_dead_node_still_reports_and_claims(self, data: st.DataObject) -> None:
        zombie = data.draw(st.sampled_from(self.dead_nodes), label="zombie")
        job = self.model[data.draw(st.sampled_from(sorted(self.model)), label="job")]
        outcome = Outcome(job.id, job.attempt, "succeeded", b"1", None, self.now, None, None)
        assert self.run(self.store.complete(zombie, [outcome])) == [job.id]
        assert self.run(self.store.claim(zombie, dict.fromkeys(QUEUES, 5), self.now)) == []
        assert not self.run(self.store.heartbeat(zombie, 0)).alive

    # -- invariants --------------------------------------------------------------------------

    def fetch(self, ids: list[JobId]) -> dict[JobId, JobRecord]:
        async def read() -> dict[JobId, JobRecord]:
            out = {}
            for job_id in ids:
                record = await self.store.get(job_id)
                assert record is not None, f"job {job_id} disappeared"
                out[job_id] = record
            return out

        return self.run(read())  # type: ignore[no-any-return]

    @invariant()
    def the_store_matches_the_model(self) -> None:
        records = self.fetch(list(self.model))
        for job_id, job in self.model.items():
            record = records[job_id]
            assert record.state == JobState(job.state), f"{job_id}: {record.state} != {job}"
            assert record.attempt == job.attempt
            if job.state == "running":
                assert record.node_id == job.node
                assert record.cancel_requested == job.cancel_requested
            if job.state == "scheduled":
                assert abs(record.run_at.timestamp() - job.run_at) < 1e-5  # microseconds
            if job.state in TERMINAL:
                assert (record.result, record.error, record.reason) == (
                    job.result,
                    job.error,
                    job.reason,
                )

    @invariant()
    def a_terminal_job_never_changes(self) -> None:
        terminal = [job_id for job_id, job in self.model.items() if job.state in TERMINAL]
        for job_id, record in self.fetch(terminal).items():
            assert record.is_finished
            first_seen = self.terminal_records.setdefault(job_id, record)
            assert record == first_seen

    @invariant()
    def attempt_numbers_only_grow(self) -> None:
        for job_id, record in self.fetch(list(self.model)).items():
            assert record.attempt >= self.highest_attempt.get(job_id, 0)
            self.highest_attempt[job_id] = record.attempt

    @invariant()
    def attempts_never_exceed_the_limit(self) -> None:
        for job_id, record in self.fetch(list(self.model)).items():
            assert record.attempt <= self.model[job_id].max_attempts

    @invariant()
    def an_at_most_once_job_never_runs_twice(self) -> None:
        runs = Counter(job_id for job_id, _ in self.claimed_tokens)
        for job_id, job in self.model.items():
            assert runs[job_id] <= job.max_attempts, f"{job_id} ran {runs[job_id]} times"

    @invariant()
    def every_job_is_accounted_for(self) -> None:
        assert self.run(self.backend.count(self.store)) == len(self.model)
