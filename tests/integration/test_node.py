"""The node, end to end, on both stores: what DESIGN §4 and the table in §10 promise."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from asyncjobs import (
    App,
    JobCancelledError,
    JobContext,
    JobFailedError,
    JobNotFoundError,
    JobState,
    MemoryStore,
    ResultTimeoutError,
    Retry,
    Settings,
    StoreUnavailableError,
)
from asyncjobs import enqueue as enqueue_module
from asyncjobs import ids as ids_module
from asyncjobs.store.postgres import PostgresStore
from tests.helpers import wait_until


class Transient(Exception):
    pass


class Fatal(Exception):
    pass


@dataclass
class Probe:
    """What the test jobs observed (they run in this process, so plain fields suffice)."""

    running: int = 0
    peak: int = 0
    started: list[Any] = field(default_factory=list)
    finished: list[Any] = field(default_factory=list)
    cleaned_up: list[Any] = field(default_factory=list)
    attempts_at: list[float] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def register(app: App, probe: Probe) -> dict[str, Any]:
    """The test jobs, declared on ``app``."""

    @app.job()
    async def add(a: int, b: int) -> int:
        return a + b

    @app.job()
    async def whoami(ctx: JobContext, tag: str) -> dict[str, Any]:
        return {"id": str(ctx.job_id), "name": ctx.job_name, "attempt": ctx.attempt, "tag": tag}

    @app.job()
    async def explode(message: str) -> None:
        raise Fatal(message)

    @app.job(retry=Retry(attempts=3, backoff=0.2, jitter=0.0, on=(Transient,)))
    async def flaky(ctx: JobContext, succeed_on: int, error: str = "transient") -> int:
        probe.attempts_at.append(time.monotonic())
        if ctx.attempt < succeed_on:
            raise (Transient if error == "transient" else Fatal)(f"attempt {ctx.attempt}")
        return ctx.attempt

    @app.job()
    async def track(tag: Any, seconds: float = 0.05) -> Any:
        probe.running += 1
        probe.peak = max(probe.peak, probe.running)
        probe.started.append(tag)
        try:
            await asyncio.sleep(seconds)
        finally:
            probe.running -= 1
        probe.finished.append(tag)
        return tag

    @app.job()
    async def wait_for_gate(tag: Any) -> Any:
        probe.started.append(tag)
        try:
            await probe.gate.wait()
        except asyncio.CancelledError:
            probe.cleaned_up.append(tag)
            raise
        return tag

    @app.job(soft_timeout=0.3, timeout=5)
    async def overrun() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            probe.cleaned_up.append("overrun")

    @app.job(timeout=0.3)
    async def stubborn() -> None:
        # Swallows the cancellation and keeps going: the node must give up on it.
        for _ in range(2):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                probe.cleaned_up.append("stubborn")

    @app.job(retry=Retry(attempts=2, backoff=0.0))
    async def long_retryable(tag: Any) -> None:
        probe.started.append(tag)
        await asyncio.sleep(60)

    @app.job()
    async def long_once(tag: Any) -> None:
        probe.started.append(tag)
        await asyncio.sleep(60)

    @app.job()
    async def returns_a_set() -> Any:
        return {1, 2}

    return locals()


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def node_app(make_app: Callable[..., App], probe: Probe) -> Callable[..., App]:
    """Build an app with the test jobs registered (not started)."""

    def build(**overrides: Any) -> App:
        app = make_app(**overrides)
        register(app, probe)
        return app

    return build


# -- results and failures -----------------------------------------------------------------------


async def test_job_result_is_returned_to_the_caller(node_app: Callable[..., App]) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("add", 2, b=40)
        assert await app.result(job_id, timeout=10) == 42
        record = await app.get(job_id)
        assert record.state is JobState.SUCCEEDED and record.attempt == 1
        assert record.started_at is not None and record.finished_at is not None
        assert record.finished_at >= record.started_at


async def test_a_result_whose_end_was_not_announced_is_found_well_before_the_slow_recheck(
    node_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that ends while its waiter registers may send no NOTIFY (the completion does not
    see the registration): the waiter's first re-reads come soon, not after 2 s."""
    async with node_app() as app:
        job_id = await app.enqueue("add", 1, 2)
        assert await app.result(job_id, timeout=10) == 3
        real_watch = app.store.watch
        stale: list[Any] = []

        async def watch_that_saw_it_running(watched: Any) -> Any:
            record = await real_watch(watched)
            if not stale:  # the race: read as running, and no announcement to come
                stale.append(record)
                return dataclasses.replace(record, state=JobState.RUNNING)
            return record

        monkeypatch.setattr(app.store, "watch", watch_that_saw_it_running)
        with anyio.fail_after(1.0):  # the first re-read came after 2 s; now after 50 ms
            assert await app.result(job_id) == 3
        assert stale


async def test_job_that_asks_for_a_context_gets_its_own(node_app: Callable[..., App]) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("whoami", tag="x")
        assert await app.result(job_id, timeout=10) == {
            "id": str(job_id),
            "name": "whoami",
            "attempt": 1,
            "tag": "x",
        }


async def test_failing_job_ends_failed_with_type_message_and_traceback(
    node_app: Callable[..., App],
) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("explode", "storage array said no")
        with pytest.raises(JobFailedError) as caught:
            await app.result(job_id, timeout=10)
        assert caught.value.error_type.endswith("Fatal")
        assert caught.value.error_message == "storage array said no"
        assert "raise Fatal(message)" in caught.value.traceback
        # It starts in the job: the node's frames that called it are left out.
        assert "asyncjobs/node/" not in caught.value.traceback, caught.value.traceback
        record = await app.get(job_id)
        assert record.state is JobState.FAILED and record.attempt == 1  # at most once


async def test_unencodable_result_fails_the_job_with_the_reason(
    node_app: Callable[..., App],
) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("returns_a_set")
        with pytest.raises(JobFailedError) as caught:
            await app.result(job_id, timeout=10)
        assert "PayloadEncodeError" in caught.value.error_type
        assert "result" in caught.value.error_message and "set" in caught.value.error_message


async def test_retryable_job_is_retried_with_backoff_until_it_succeeds(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("flaky", succeed_on=3)
        assert await app.result(job_id, timeout=10) == 3
        gaps = [b - a for a, b in zip(probe.attempts_at, probe.attempts_at[1:], strict=False)]
        # backoff 0.2 s then 0.4 s (no jitter); the promoter may add a little, never less
        assert gaps[0] >= 0.19 and gaps[1] >= 0.39, gaps
        record = await app.get(job_id)
        assert record.attempt == 3 and record.error is None


async def test_retries_stop_when_the_attempts_run_out(node_app: Callable[..., App]) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("flaky", succeed_on=99)
        with pytest.raises(JobFailedError, match="attempt 3"):
            await app.result(job_id, timeout=10)
        assert (await app.get(job_id)).attempt == 3


async def test_exception_outside_retry_on_fails_at_once(node_app: Callable[..., App]) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("flaky", succeed_on=3, error="fatal")
        with pytest.raises(JobFailedError, match="attempt 1"):
            await app.result(job_id, timeout=10)
        assert (await app.get(job_id)).attempt == 1


# -- time limits and cancellation ----------------------------------------------------------------


async def test_soft_time_limit_cancels_the_job_so_it_can_clean_up(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("overrun")
        with pytest.raises(JobFailedError) as caught:
            await app.result(job_id, timeout=10)
        assert "soft time limit of 0.3 s" in caught.value.error_message
        assert probe.cleaned_up == ["overrun"]


async def test_job_ignoring_cancellation_is_abandoned_and_its_slot_freed(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app(concurrency=1, cancel_grace_s=0.3) as app:
        stuck = await app.enqueue("stubborn")
        after = await app.enqueue("add", 1, 1)
        with pytest.raises(JobFailedError, match="time limit"):
            await app.result(stuck, timeout=10)
        assert await app.result(after, timeout=10) == 2  # the only slot came back
        assert "stubborn" in probe.cleaned_up


async def test_cancel_of_a_running_job_takes_effect_within_a_second(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("wait_for_gate", "c")
        await wait_until(lambda: probe.started == ["c"], what="the job to start")
        started = time.monotonic()
        assert await app.cancel(job_id, reason="operator asked") is JobState.RUNNING
        with pytest.raises(JobCancelledError, match="operator asked"):
            await app.result(job_id, timeout=5)
        assert time.monotonic() - started < 1.0
        assert probe.cleaned_up == ["c"]


async def test_cancelled_queued_job_never_runs(node_app: Callable[..., App], probe: Probe) -> None:
    async with node_app(queues="other") as app:  # serves no job's queue: all stay queued
        job_id = await app.enqueue("track", "never")
        assert await app.cancel(job_id) is JobState.CANCELLED
    async with node_app() as app:
        marker = await app.enqueue("track", "marker")
        await app.result(marker, timeout=10)
        assert probe.started == ["marker"]
        assert (await app.get(job_id)).state is JobState.CANCELLED


async def test_result_timeout_leaves_the_job_running(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app() as app:
        job_id = await app.enqueue("wait_for_gate", "slow")
        with pytest.raises(ResultTimeoutError):
            await app.result(job_id, timeout=0.2)
        assert (await app.get(job_id)).state is JobState.RUNNING
        probe.gate.set()
        assert await app.result(job_id, timeout=10) == "slow"


async def test_result_of_an_unknown_id_says_so(node_app: Callable[..., App]) -> None:
    async with node_app(queues="none") as app:
        with pytest.raises(JobNotFoundError):
            await app.result("01a1fd2c-0000-7000-8000-000000000000", timeout=1)


async def test_awaiting_a_job_right_after_enqueueing_it_does_not_delay_it(
    node_app: Callable[..., App],
) -> None:
    # result() used to lock the new row for a moment; a claim skipping it took the queue for
    # empty and the job waited for the poll. With the poll far away, any such miss times out.
    async with node_app(poll_interval_s=60.0) as app:
        for i in range(30):
            assert await app.result(await app.enqueue("add", i, 1), timeout=5) == i + 1


async def test_jobs_enqueued_while_a_claim_is_in_flight_are_not_missed(
    node_app: Callable[..., App],
) -> None:
    async with node_app(poll_interval_s=60.0) as producer_and_node:
        for _ in range(5):
            ids = []
            for i in range(40):  # paced, so notifications keep landing during claims
                ids.append(await producer_and_node.enqueue("add", i, 0))
                await asyncio.sleep(0.001)
            for job_id in ids:
                await producer_and_node.result(job_id, timeout=5)


# -- unknown jobs, capacity, queues, order ---------------------------------------------------------


async def test_unknown_job_at_run_time_fails_and_the_node_keeps_running(
    make_app: Callable[..., App], probe: Probe
) -> None:
    producer = make_app()
    register(producer, probe)

    @producer.job()
    async def only_in_producer() -> None:
        return None

    worker = make_app()
    register(worker, probe)
    await producer.start(node=False)
    try:
        async with worker:
            missing = await producer.enqueue("only_in_producer")
            with pytest.raises(JobFailedError, match="unknown job 'only_in_producer'"):
                await producer.result(missing, timeout=10)
            assert await producer.result(await producer.enqueue("add", 1, 2), timeout=10) == 3
    finally:
        await producer.stop()


async def test_node_never_runs_more_jobs_than_its_concurrency(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app(concurrency=3) as app:
        ids = await app.enqueue_many([app.signature("track", i, 0.02) for i in range(30)])
        for job_id in ids:
            await app.result(job_id, timeout=20)
    assert probe.peak == 3 and len(probe.finished) == 30


async def test_node_concurrency_holds_across_several_queues(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app(concurrency=4, queues="a,b,c") as app:
        ids = await app.enqueue_many(
            [app.signature("track", i, 0.05).set(queue="abc"[i % 3]) for i in range(30)]
        )
        for job_id in ids:
            await app.result(job_id, timeout=20)
    assert probe.peak == 4 and len(probe.finished) == 30


async def test_queue_limit_caps_its_queue_and_not_the_others(
    node_app: Callable[..., App], probe: Probe
) -> None:
    async with node_app(concurrency=10, queues="slow=1,fast") as app:
        slow = [await app.enqueue("wait_for_gate", f"slow{i}", queue="slow") for i in range(3)]
        fast = [await app.enqueue("track", f"fast{i}", 0.01, queue="fast") for i in range(5)]
        for job_id in fast:
            await app.result(job_id, timeout=10)
        assert [t for t in probe.started if str(t).startswith("slow")] == ["slow0"]
        probe.gate.set()
        for job_id in slow:
            await app.result(job_id, timeout=10)


async def test_higher_priority_runs_first(node_app: Callable[..., App], probe: Probe) -> None:
    app = node_app(concurrency=1)
    await app.start(node=False)
    ids = [await app.enqueue("track", f"p{p}", 0.0, priority=p) for p in (0, 5, -3, 9, 5)]
    await app.stop()
    async with node_app(concurrency=1) as worker:
        for job_id in ids:
            await worker.result(job_id, timeout=10)
    # equal priorities keep enqueue order
    assert probe.started == ["p9", "p5", "p5", "p0", "p-3"]


async def test_delayed_job_does_not_start_early(node_app: Callable[..., App]) -> None:
    async with node_app() as app:
        before = time.time()
        job_id = await app.enqueue("add", 1, 2, delay=0.6)
        assert (await app.get(job_id)).state is JobState.SCHEDULED
        assert await app.result(job_id, timeout=10) == 3
        started = (await app.get(job_id)).started_at
        assert started is not None and started.timestamp() >= before + 0.6


# -- connection faults (issue 3) --------------------------------------------------------------


class LostClaimAnswer:
    """Store mixin: the first claim commits, then its answer is lost with the connection."""

    lost = False

    async def claim(self, node_id: Any, limits: Any, now: float, freeing: Any = ()) -> Any:
        claimed = await super().claim(node_id, limits, now, freeing)  # type: ignore[misc]
        if claimed and not self.lost:
            self.lost = True
            raise StoreUnavailableError("test", "the connection broke after the commit")
        return claimed


async def test_jobs_claimed_by_a_statement_whose_answer_was_lost_run_once(
    any_settings: Settings, probe: Probe
) -> None:
    if any_settings.dsn == "memory://":
        store: Any = type("LostMemory", (LostClaimAnswer, MemoryStore), {})()
    else:
        store = type("LostPostgres", (LostClaimAnswer, PostgresStore), {})(any_settings)
    app = App(settings=any_settings, store=store)
    register(app, probe)
    async with app:
        ids = [await app.enqueue("track", i, 0.0) for i in range(5)]
        for job_id in ids:
            assert await app.result(job_id, timeout=10) in range(5)
        assert store.lost
        assert sorted(probe.started) == list(range(5))  # each ran once
        assert {(await app.get(i)).attempt for i in ids} == {1}


class FlakyWrites:
    """Store mixin: the next ``failures`` writes of jobs lose their connection, some after
    committing."""

    failures = 0
    committed_then_lost = 0
    broken_mid_copy = False

    async def enqueue(self, jobs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            if self.failures % 2:  # every other one did commit before the answer was lost
                await super().enqueue(jobs)  # type: ignore[misc]
                self.committed_then_lost += 1
            raise StoreUnavailableError("test", "the connection broke")
        return await super().enqueue(jobs)  # type: ignore[misc]

    async def enqueue_bulk(self, jobs: Any) -> Any:
        if self.broken_mid_copy:  # read part of the stream, write nothing
            self.broken_mid_copy = False
            for _ in itertools.islice(jobs, 100):
                pass
            raise StoreUnavailableError("test", "the connection broke during the COPY")
        if self.failures:
            self.failures -= 1
            await super().enqueue_bulk(jobs)  # type: ignore[misc]
            self.committed_then_lost += 1
            raise StoreUnavailableError("test", "the connection broke after the COPY")
        return await super().enqueue_bulk(jobs)  # type: ignore[misc]


async def test_enqueue_retries_a_lost_connection_without_doubling_jobs(
    any_settings: Settings, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enqueue_module, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    if any_settings.dsn == "memory://":
        store: Any = type("FlakyMemory", (FlakyWrites, MemoryStore), {})()
    else:
        store = type("FlakyPostgres", (FlakyWrites, PostgresStore), {})(any_settings)
    app = App(settings=any_settings, store=store)
    register(app, probe)
    async with app:
        store.failures = 3
        single = await app.enqueue("track", "single", 0.0)
        store.failures = 1
        bulk = await app.enqueue_many([app.signature("track", i, 0.0) for i in range(300)])
        assert store.committed_then_lost == 2
        assert await app.result(single, timeout=10) == "single"
        for job_id in bulk:
            await app.result(job_id, timeout=20)
        assert sorted(t for t in probe.started if t != "single") == list(range(300))
        assert probe.started.count("single") == 1
        # A COPY that breaks part way: the INSERT that follows writes every job, with the ids
        # returned (those the COPY had made, then the rest), each once.
        monkeypatch.setattr(ids_module, "_READ_CHUNK", 64)  # the COPY stops between chunks
        store.broken_mid_copy = True
        probe.started.clear()
        again = await app.enqueue_many([app.signature("track", i, 0.0) for i in range(300)])
        assert len(set(again)) == 300 and not set(again) & set(bulk)
        assert again == sorted(again)  # made in order, as ever
        for job_id in again:
            await app.result(job_id, timeout=20)
        assert sorted(probe.started) == list(range(300))
        store.failures = 4  # more than the retries: the caller is told
        with pytest.raises(StoreUnavailableError):
            await app.enqueue("track", "given up", 0.0)


async def test_a_node_prunes_finished_jobs_past_the_retention_period(
    node_app: Callable[..., App],
) -> None:
    # Retention well above the time result() may take on a loaded machine, or the job is
    # pruned before its result is read.
    async with node_app(retention_s=3.0, prune_interval_s=0.2) as app:
        done = await app.enqueue("add", 1, 2)
        assert await app.result(done, timeout=10) == 3
        later = await app.enqueue("add", 0, 0, delay=30)  # unfinished: never pruned

        async def pruned() -> bool:
            try:
                await app.get(done)
            except JobNotFoundError:
                return True
            return False

        await wait_until(pruned, timeout=10, what="the finished job to be pruned")
        assert (await app.get(later)).state is JobState.SCHEDULED


# -- shutdown and several nodes -------------------------------------------------------------------


async def test_stop_lets_running_jobs_finish_within_the_grace_period(
    node_app: Callable[..., App], probe: Probe
) -> None:
    app = node_app()
    await app.start()
    ids = await app.enqueue_many([app.signature("track", i, 0.3) for i in range(5)])
    await wait_until(lambda: len(probe.started) == 5, what="five jobs to start")
    await app.stop(grace=10)
    assert sorted(probe.finished) == list(range(5))
    async with node_app(queues="none") as reader:
        states = {(await reader.get(i)).state for i in ids}
    assert states == {JobState.SUCCEEDED}


async def test_jobs_running_past_the_grace_period_are_requeued_or_cancelled(
    node_app: Callable[..., App], probe: Probe
) -> None:
    app = node_app()
    await app.start()
    retryable = await app.enqueue("long_retryable", "r")
    once = await app.enqueue("long_once", "o")
    await wait_until(lambda: len(probe.started) == 2, what="both jobs to start")
    await app.stop(grace=0.2)
    async with node_app(queues="none") as reader:
        r, o = await reader.get(retryable), await reader.get(once)
    assert r.state is JobState.QUEUED and r.reason == "node shutdown"
    assert o.state is JobState.CANCELLED and o.reason == "node shutdown"


async def test_a_claim_whose_answer_is_in_flight_when_the_node_stops_is_never_orphaned(
    node_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that cancelled the claim while its answer was on the wire used to leave the
    jobs it had committed ``running`` on a node that never knew: found by the reaper later,
    and ended ``lost`` (never run) where they could not be retried."""
    app = node_app()
    stopping = asyncio.Event()

    @app.on_event("node_stopping")
    async def answer_arrives(event: Any) -> None:
        stopping.set()  # the stop has cancelled the fetcher by now: let the answer come

    await app.start()
    # One job first, so that no claim (through the method not yet replaced) is in flight.
    assert await app.result(await app.enqueue("add", 0, 0), timeout=10) == 0
    real_claim = app.store.claim
    claims_in_flight: list[int] = []

    async def claim_answered_late(*args: Any) -> Any:
        claimed = await real_claim(*args)  # committed
        if claimed and not claims_in_flight:
            claims_in_flight.append(len(claimed))
            await stopping.wait()  # the answer is still on its way when the stop comes
        return claimed

    monkeypatch.setattr(app.store, "claim", claim_answered_late)
    ids = await app.enqueue_many([app.signature("add", i, 1) for i in range(50)])
    await wait_until(lambda: claims_in_flight, what="a claim in flight")
    await app.stop(grace=10)
    async with node_app(queues="none") as reader:
        states = [(await reader.get(i)).state for i in ids]
    assert JobState.RUNNING not in states, states
    assert states.count(JobState.SUCCEEDED) >= claims_in_flight[0]  # the claimed ones ran
    assert set(states) <= {JobState.SUCCEEDED, JobState.QUEUED}


async def test_two_nodes_share_the_work_and_run_each_job_once(
    node_app: Callable[..., App], probe: Probe
) -> None:
    first, second = node_app(concurrency=20), node_app(concurrency=20)
    await first.start()
    await second.start()
    try:
        ids = await first.enqueue_many([first.signature("track", i, 0.001) for i in range(600)])
        for job_id in ids:
            await second.result(job_id, timeout=30)
        assert sorted(probe.started) == list(range(600))  # each exactly once
        assert first.node.fetcher.claimed_total > 0 and second.node.fetcher.claimed_total > 0
    finally:
        await first.stop()
        await second.stop()


async def test_a_stopped_app_starts_again_as_a_new_node_and_runs_jobs(
    node_app: Callable[..., App],
) -> None:
    app = node_app()
    async with app:
        first_node = app.node.id
        assert await app.result(await app.enqueue("add", 1, b=1), timeout=10) == 2
    async with app:
        assert app.node.id != first_node
        assert await app.result(await app.enqueue("add", 2, b=2), timeout=10) == 4


def test_a_stopped_app_starts_again_in_another_event_loop(any_settings: Settings) -> None:
    """As a notebook or a test suite does: asyncio.run twice, one app."""
    app = App(settings=any_settings)

    @app.job()
    async def double(n: int) -> int:
        return 2 * n

    async def once(n: int) -> int:
        async with app:
            return int(await app.result(await app.enqueue(double, n), timeout=10))

    assert asyncio.run(once(1)) == 2
    assert asyncio.run(once(2)) == 4
