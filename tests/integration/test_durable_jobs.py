"""Durable jobs end to end, on both stores: steps that never run twice, parking that holds
no slot, a replay that must match, and bad input that gets a sentence."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from asyncjobs import (
    App,
    InvalidArgumentError,
    JobContext,
    JobDefinitionError,
    JobFailedError,
    JobState,
    PayloadEncodeError,
    Retry,
    StepMismatchError,
)
from asyncjobs.testing import Harness
from tests import pool_jobs
from tests.helpers import wait_until


class Flaky(Exception):
    pass


def build(make_app: Callable[..., App], runs: list[str], **overrides: Any) -> App:
    app = make_app(**overrides)
    gate = asyncio.Event()
    app.gate = gate  # type: ignore[attr-defined]

    async def act(what: str) -> dict[str, str]:
        runs.append(what)
        return {"did": what}

    async def boom(what: str) -> None:
        runs.append(what)
        raise Flaky(f"{what} failed")

    @app.job(durable=True)
    async def provision(ctx: JobContext, vm: str) -> list[Any]:
        out = [await ctx.step("create_vm", act, f"vm {vm}")]
        for disk in ("a", "b"):  # a loop of steps with one name
            out.append(await ctx.step("create_disk", act, f"disk {disk}"))
        out.append(await ctx.step("dns", act, f"dns {vm}", idempotent=True))
        return out

    @app.job(durable=True, retry=Retry(attempts=3, backoff=0, on=(Flaky,)))
    async def retried(ctx: JobContext) -> str:
        await ctx.step("first", act, "first")
        if ctx.attempt == 1:
            await ctx.step("second", boom, "second")
        await ctx.step("second", act, "second")
        return "done"

    @app.job(durable=True)
    async def sleeper(ctx: JobContext, seconds: float) -> str:
        await ctx.step("before", act, "before")
        await ctx.sleep(seconds)
        await ctx.step("after", act, "after")
        return "awake"

    @app.job(durable=True)
    async def waiter(ctx: JobContext, other: str) -> Any:
        await ctx.step("before", act, "before")
        return await ctx.wait_for(other)

    @app.job()
    async def slow(value: str) -> str:
        await gate.wait()
        return value

    @app.job()
    async def fails() -> None:
        await gate.wait()
        raise Flaky("the awaited job failed")

    @app.job()
    async def plain_with_a_step(ctx: JobContext) -> str:
        await ctx.step("one", act, "one")
        await ctx.step("two", act, "two")
        return "plain"

    return app


async def test_steps_run_once_and_their_results_are_returned_and_recorded(
    make_app: Callable[..., App],
) -> None:
    runs: list[str] = []
    app = build(make_app, runs)
    async with app:
        job_id = await app.enqueue("provision", "vm-1")
        result = await app.result(job_id, timeout=10)
        steps = await app.steps(job_id)
    assert result == [{"did": "vm vm-1"}, {"did": "disk a"}, {"did": "disk b"}, {"did": "dns vm-1"}]
    assert runs == ["vm vm-1", "disk a", "disk b", "dns vm-1"]
    assert [(s.seq, s.name, s.kind, s.state, s.idempotent) for s in steps] == [
        (1, "create_vm", "call", "succeeded", False),
        (2, "create_disk", "call", "succeeded", False),
        (3, "create_disk", "call", "succeeded", False),
        (4, "dns", "call", "succeeded", True),
    ]
    assert all(s.started_at is not None and s.finished_at is not None for s in steps)


@pytest.mark.parametrize(
    ("when", "step", "state", "disk_runs"),
    [
        ("after", "create_disk", JobState.SUCCEEDED, 1),  # its result stands
        ("before", "create_disk", JobState.SUCCEEDED, 1),  # between two steps
        ("during", "dns", JobState.SUCCEEDED, 1),  # idempotent: runs again on the resume
        ("during", "create_disk", JobState.LOST, 0),  # in doubt: never again
    ],
)
async def test_a_node_killed_around_a_step_resumes_the_job_or_loses_it_if_in_doubt(
    make_app: Callable[..., App], when: str, step: str, state: JobState, disk_runs: int
) -> None:
    runs: list[str] = []
    app = build(make_app, runs)
    async with Harness(app) as h:
        h.crash_at(step, when=when)
        job_id = await h.app.enqueue("provision", "vm-1")
        await h.run_until_idle()
        record = await h.app.get(job_id)
    assert record.state is state, record.reason
    assert runs.count("vm vm-1") == 1  # a completed step never runs again
    assert runs.count("disk a") == disk_runs and runs.count("disk b") == disk_runs
    if state is JobState.LOST:
        assert record.reason is not None and "step 'create_disk' (#2) was running" in record.reason
    else:
        assert record.attempt == 2 and record.result[-1] == {"did": "dns vm-1"}


async def test_a_job_that_is_not_declared_durable_resumes_once_it_completed_a_step(
    make_app: Callable[..., App],
) -> None:
    runs: list[str] = []
    async with Harness(build(make_app, runs)) as h:
        h.crash_at("two", when="before")
        job_id = await h.app.enqueue("plain_with_a_step")
        await h.run_until_idle()
        assert await h.assert_succeeded(job_id) == "plain"
    assert runs == ["one", "two"]


async def test_a_failed_step_runs_again_on_the_retry_and_completed_ones_do_not(
    make_app: Callable[..., App],
) -> None:
    runs: list[str] = []
    async with Harness(build(make_app, runs)) as h:
        job_id = await h.app.enqueue("retried")
        await h.run_until_idle()
        assert await h.assert_succeeded(job_id) == "done"
        steps = await h.app.steps(job_id)
    assert runs == ["first", "second", "second"]
    assert [(s.name, s.state, s.attempt) for s in steps] == [
        ("first", "succeeded", 1),
        ("second", "succeeded", 2),
    ]


async def test_a_replay_that_calls_a_step_with_other_arguments_is_refused_naming_both(
    make_app: Callable[..., App],
) -> None:
    runs: list[str] = []
    app = make_app()

    async def act(what: str) -> str:
        runs.append(what)
        return what

    @app.job(durable=True)
    async def drifting(ctx: JobContext) -> str:
        # Not deterministic: the resume (attempt 2) calls the step with other arguments.
        await ctx.step("create", act, f"vm-{ctx.attempt}")
        return str(await ctx.step("tag", act, "tag"))

    async with Harness(app) as h:
        h.crash_at("tag", when="before")
        job_id = await h.app.enqueue(drifting)
        await h.run_until_idle()
        record = await h.app.get(job_id)
    assert record.state is JobState.FAILED
    assert record.error is not None and record.error["type"].endswith("StepMismatchError")
    message = record.error["message"]
    assert "step 'create' called with [[\"vm-2\"],{}]" in message
    assert "recorded step 'create' called with [[\"vm-1\"],{}]" in message
    assert runs == ["vm-1"]  # the step did not run again with the new arguments


async def test_a_sleeping_job_gives_back_its_slot_and_wakes_at_the_due_time(
    make_app: Callable[..., App],
) -> None:
    runs: list[str] = []
    app = build(make_app, runs, concurrency=1)
    app.gate.set()  # type: ignore[attr-defined]
    async with app:
        sleeping = await app.enqueue("sleeper", 1.0)

        async def parked() -> bool:
            return (await app.get(sleeping)).state is JobState.SCHEDULED

        await wait_until(parked, what="the sleeper to park")
        assert app.node.running == {}  # no slot, no task, no memory for it
        # With its only slot free, the node runs another job meanwhile.
        assert await app.result(await app.enqueue("slow", "meanwhile"), timeout=10) == "meanwhile"
        assert await app.result(sleeping, timeout=10) == "awake"
        record = await app.get(sleeping)
    assert runs == ["before", "after"]  # the step before the sleep did not run again
    assert record.attempt == 2 and record.max_attempts == 2  # the wake-up is not a retry
    assert "meanwhile" not in runs


async def test_a_sleep_resumes_after_the_clock_passes_its_due_time_in_the_harness(
    make_app: Callable[..., App],
) -> None:
    runs: list[str] = []
    async with Harness(build(make_app, runs)) as h:
        job_id = await h.app.enqueue("sleeper", 7200)
        await h.run_until_idle()
        assert (await h.app.get(job_id)).state is JobState.SCHEDULED
        await h.clock.advance(timedelta(hours=1))
        assert (await h.app.get(job_id)).state is JobState.SCHEDULED
        await h.clock.advance(timedelta(hours=1))
        assert await h.assert_succeeded(job_id) == "awake"
    assert runs == ["before", "after"]


@pytest.mark.parametrize("end", ["succeeds", "fails", "is cancelled"])
async def test_a_wait_for_parks_until_the_other_job_ends_and_then_sees_how(
    make_app: Callable[..., App], end: str
) -> None:
    runs: list[str] = []
    app = build(make_app, runs)
    async with app:
        other = await app.enqueue("fails" if end == "fails" else "slow", *(
            () if end == "fails" else ("its result",)))  # fmt: skip
        waiting = await app.enqueue("waiter", str(other))

        async def parked() -> bool:
            return (await app.get(waiting)).state is JobState.WAITING

        await wait_until(parked, what="the waiter to park")
        assert waiting not in app.node.running
        if end == "is cancelled":
            await app.cancel(other)
        else:
            app.gate.set()  # type: ignore[attr-defined]
        if end == "succeeds":
            assert await app.result(waiting, timeout=10) == "its result"
        else:
            with pytest.raises(JobFailedError) as failed:
                await app.result(waiting, timeout=10)
            expected = "JobFailedError" if end == "fails" else "JobCancelledError"
            assert failed.value.error_type.endswith(expected), failed.value
    assert runs == ["before"]


async def test_an_isolated_job_runs_as_a_step_in_the_pool(any_settings: Any) -> None:
    app = pool_jobs.build_app(any_settings.replace(workers_min=1, workers_max=1))
    echo = app.registry["echo"]

    @app.job(durable=True)
    async def computes(ctx: JobContext, n: int) -> Any:
        first = await ctx.step("echo", echo, n)
        return await ctx.step("again", echo, [first, first + 1])

    async with app:
        assert await app.result(await app.enqueue(computes, 41), timeout=30) == [41, 42]


async def test_bad_steps_get_a_sentence_naming_the_value(make_app: Callable[..., App]) -> None:
    app = make_app()
    kept: list[JobContext] = []

    async def gives(value: Any) -> Any:
        return value

    def not_async() -> None: ...

    @app.job(durable=True)
    async def bad(ctx: JobContext, case: str) -> Any:
        kept.append(ctx)
        if case == "unencodable result":
            return await ctx.step("set", _returns_a_set)
        if case == "bad argument":
            return await ctx.step("send", gives, {"to": {1, 2}})
        if case == "not async":
            return await ctx.step("sync", not_async)
        if case == "two at once":
            return await asyncio.gather(
                ctx.step("a", asyncio.sleep, 0.1), ctx.step("b", asyncio.sleep, 0.1)
            )
        if case == "bad name":
            return await ctx.step("", gives, 1)
        return await ctx.sleep(-5)

    messages = {
        "unencodable result": "cannot encode result of step 'set' of job 'bad': a value of type",
        "bad argument": "cannot encode argument args[0]['to'] of step 'send' of job 'bad'",
        "not async": "step() cannot take fn=",
        "two at once": "the steps of a job run one at a time",
        "bad name": "step() cannot take name=''",
        "bad sleep": "sleep() cannot take delay=-5",
    }
    async with app:
        for case, words in messages.items():
            with pytest.raises(JobFailedError) as failed:
                await app.result(await app.enqueue(bad, case), timeout=10)
            assert words in failed.value.error_message, (case, failed.value.error_message)
        ended = kept[0]
        with pytest.raises(InvalidArgumentError, match="has ended; a step can only run"):
            await ended.step("late", gives, 1)
    with pytest.raises(JobDefinitionError, match="cannot be isolated"):
        app.job(durable=True, isolated=True)(pool_jobs.echo)
    # The argument's path is given with the exception type a caller can catch, too.
    assert issubclass(PayloadEncodeError, TypeError)
    assert issubclass(StepMismatchError, Exception)


async def _returns_a_set() -> set[int]:
    return {1}


async def test_a_stopping_node_parks_its_durable_jobs_to_run_again_on_the_next(
    make_app: Callable[..., App],
) -> None:
    runs: list[str] = []
    app = make_app(shutdown_grace_s=0.2, cancel_grace_s=2.0)
    gate = asyncio.Event()

    async def act(what: str) -> str:
        runs.append(what)
        return what

    @app.job(durable=True)
    async def long(ctx: JobContext) -> str:
        await ctx.step("one", act, "one")
        await gate.wait()  # between two steps when the node stops
        await ctx.step("two", act, "two")
        return "resumed"

    async with app:
        job_id = await app.enqueue(long)
        await wait_until(lambda: runs == ["one"], what="the first step")
    gate.set()
    async with app:  # started again: another node
        assert await app.result(job_id, timeout=10) == "resumed"
        record = await app.get(job_id)
    assert runs == ["one", "two"]
    assert (record.attempt, record.max_attempts) == (2, 2)


async def test_a_stopping_node_loses_a_durable_job_whose_step_is_in_doubt(
    make_app: Callable[..., App],
) -> None:
    app = make_app(shutdown_grace_s=0.2, cancel_grace_s=2.0)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    @app.job(durable=True)
    async def stuck(ctx: JobContext) -> None:
        await ctx.step("hangs", forever)

    async with app:
        job_id = await app.enqueue(stuck)
        await asyncio.wait_for(started.wait(), 10)
    async with app:
        record = await app.get(job_id)
    assert record.state is JobState.LOST
    assert record.reason is not None and "step 'hangs' (#1) was running when node" in record.reason
