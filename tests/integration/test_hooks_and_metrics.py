"""Lifecycle hooks and the Prometheus endpoint, on real nodes (both stores).

The promise: a hook never holds up the scheduler. A hook that hangs, sleeps past its time
box or raises on every event must leave every job running and finishing as if it were not
there, and the node must go on calling it for the next events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.request
from typing import Any

import anyio
import pytest

from asyncjobs import App, ConfigurationError, Event, JobContext, JobFailedError, Retry, Settings
from tests.helpers import wait_until

TIMEOUT = 30


def make(settings: Settings, **overrides: Any) -> App:
    app = App(settings=settings.replace(**overrides) if overrides else settings)

    @app.job()
    async def noop(i: int) -> int:
        return i

    @app.job()
    async def fail(message: str) -> None:
        raise ValueError(message)

    @app.job(retry=Retry(attempts=2, backoff=0.0, jitter=0.0, on=(KeyError,)))
    async def flaky() -> None:
        raise KeyError("first")

    return app


async def test_hooks_see_jobs_start_finish_fail_and_retry(any_settings: Settings) -> None:
    app = make(any_settings)
    seen: list[Event] = []

    @app.on_event("job_started", "job_finished", "job_failed", "job_retrying")
    async def record(event: Event) -> None:
        seen.append(event)

    node_events: list[str] = []

    @app.on_event("node_started", "node_stopping")
    async def node_record(event: Event) -> None:
        node_events.append(event.kind)

    async with app:
        ok = await app.enqueue("noop", 1)
        bad = await app.enqueue("fail", "disk full")
        retried = await app.enqueue("flaky")
        assert await app.result(ok, timeout=TIMEOUT) == 1
        for job_id in (bad, retried):
            with pytest.raises(JobFailedError):
                await app.result(job_id, timeout=TIMEOUT)
        await wait_until(lambda: len(seen) >= 11, timeout=TIMEOUT, what="every event")
    assert node_events == ["node_started", "node_stopping"]
    by = {(e.kind, e.job_id, e.attempt) for e in seen}
    assert {("job_started", ok, 1), ("job_finished", ok, 1)} <= by
    assert {("job_finished", bad, 1), ("job_failed", bad, 1)} <= by
    assert {("job_retrying", retried, 1), ("job_failed", retried, 2)} <= by
    (failure,) = [e for e in seen if e.kind == "job_failed" and e.job_id == bad]
    assert failure.name == "fail" and failure.state == "failed"
    assert failure.error is not None and failure.error["type"] == "ValueError"
    assert "disk full" in failure.error["message"] and failure.wall_s is not None
    kinds = [e.kind for e in seen]
    # 4 attempts (the retry's second included): 4 starts, 4 ends, 2 failures, 1 retry
    assert len(seen) == 11 and kinds.count("job_started") == kinds.count("job_finished") == 4


async def test_a_hung_hook_does_not_hold_up_any_job(any_settings: Settings) -> None:
    app = make(any_settings, hook_timeout_s=600.0)
    release = anyio.Event()
    entered = anyio.Event()

    @app.on_event("job_finished")
    async def stuck(event: Event) -> None:
        entered.set()
        await release.wait()  # hangs until the test lets it go

    async with app:
        ids = await app.enqueue_many([app.signature("noop", i) for i in range(500)])
        await entered.wait()
        # Every job finishes while the hook is still inside its first call.
        for i, job_id in enumerate(ids):
            assert await app.result(job_id, timeout=TIMEOUT) == i
        assert not release.is_set()
        lane = app.node.hooks.lanes[0]
        assert lane.calls == 1 and len(lane.pending) == 499
        release.set()
        await wait_until(lambda: lane.calls == 500, timeout=TIMEOUT, what="the backlog")


async def test_a_slow_hook_is_cut_at_its_time_box_and_called_again(
    any_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = make(any_settings, hook_timeout_s=0.05)
    calls: list[int] = []

    @app.on_event("job_finished")
    async def sleepy(event: Event) -> None:
        calls.append(1)
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR, logger="asyncjobs.hooks"):
        async with app:
            for i in range(3):
                assert await app.result(await app.enqueue("noop", i), timeout=TIMEOUT) == i
            await wait_until(lambda: len(calls) == 3, timeout=TIMEOUT, what="a call per event")
            lane = app.node.hooks.lanes[0]
            await wait_until(lambda: lane.failed == 3, timeout=TIMEOUT, what="3 time-outs")
    assert "took longer than 0.05 s (hook_timeout_s); abandoned" in caplog.text


async def test_a_failing_hook_is_logged_and_the_jobs_succeed(
    any_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = make(any_settings)

    @app.on_event("job_started", "job_finished")
    async def broken(event: Event) -> None:
        raise RuntimeError("the log service is down")

    with caplog.at_level(logging.ERROR, logger="asyncjobs.hooks"):
        async with app:
            ids = await app.enqueue_many([app.signature("noop", i) for i in range(50)])
            for i, job_id in enumerate(ids):
                assert await app.result(job_id, timeout=TIMEOUT) == i
            lane = app.node.hooks.lanes[0]
            await wait_until(lambda: lane.failed == 100, timeout=TIMEOUT, what="every call")
    # Logged once, not a hundred times (the rest are counted into the next report).
    (logged,) = [r for r in caplog.records if r.name == "asyncjobs.hooks"]
    assert "raised RuntimeError: the log service is down" in logged.getMessage()


async def test_a_hook_that_raises_system_exit_does_not_stop_the_node(
    any_settings: Settings,
) -> None:
    app = make(any_settings)

    @app.on_event("job_finished")
    async def exits(event: Event) -> None:
        raise SystemExit(3)

    async with app:
        for i in range(5):
            assert await app.result(await app.enqueue("noop", i), timeout=TIMEOUT) == i
        lane = app.node.hooks.lanes[0]
        await wait_until(lambda: lane.failed == 5, timeout=TIMEOUT, what="every call")
        assert await app.result(await app.enqueue("noop", 9), timeout=TIMEOUT) == 9


def test_what_cannot_be_a_hook_is_refused_with_a_sentence() -> None:
    app = App(dsn="memory://")

    async def fine(event: Event) -> None: ...

    def blocking(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match="no such event; use one of job_started"):
        app.on_event("job_exploded")(fine)
    with pytest.raises(ConfigurationError, match="a hook must be an async def"):
        app.on_event("job_failed")(blocking)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="name one event or more"):
        app.on_event()(fine)
    assert app.hooks == []


# -- metrics ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def test_the_node_serves_prometheus_metrics(any_settings: Settings) -> None:
    port = free_port()
    app = make(any_settings, metrics_port=port)
    async with app:
        for i in range(3):
            assert await app.result(await app.enqueue("noop", i), timeout=TIMEOUT) == i
        with contextlib.suppress(JobFailedError):
            await app.result(await app.enqueue("fail", "x"), timeout=TIMEOUT)
        text = await anyio.to_thread.run_sync(scrape, port)
    assert 'asyncjobs_jobs_finished_total{name="noop",outcome="succeeded"} 3.0' in text
    assert 'asyncjobs_jobs_finished_total{name="fail",outcome="failed"} 1.0' in text
    assert 'asyncjobs_jobs_started_total{name="noop"} 3.0' in text
    assert 'asyncjobs_job_queue_wait_seconds_count{name="noop"} 3.0' in text
    assert 'asyncjobs_job_run_seconds_count{name="noop"} 3.0' in text
    assert 'asyncjobs_job_cpu_seconds_total{name="noop"}' in text
    for gauge in ("asyncjobs_running_jobs", "asyncjobs_pool_workers",
                  "asyncjobs_buffered_completions", "asyncjobs_event_loop_lag_seconds",
                  "asyncjobs_hook_events_dropped"):  # fmt: skip
        assert f"\n{gauge} " in text, gauge
    with pytest.raises(OSError):  # the endpoint went away with the node
        await anyio.to_thread.run_sync(scrape, port)


async def test_a_metrics_port_in_use_is_a_clear_error(any_settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = make(any_settings, metrics_port=port)
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with app:
                await wait_until(lambda: False, timeout=TIMEOUT, what="the node to fail")


async def test_the_metrics_count_steps_by_outcome(any_settings: Settings) -> None:
    port = free_port()
    app = make(any_settings, metrics_port=port)

    async def act() -> int:
        return 1

    async def broken() -> None:
        raise RuntimeError("no")

    @app.job(durable=True)
    async def stepped(ctx: JobContext) -> None:
        await ctx.step("one", act)
        await ctx.step("two", act, idempotent=True)
        await ctx.step("three", broken)

    async with app:
        with contextlib.suppress(JobFailedError):
            await app.result(await app.enqueue(stepped), timeout=TIMEOUT)
        text = await anyio.to_thread.run_sync(scrape, port)
    assert 'asyncjobs_steps_total{name="stepped",outcome="succeeded"} 2.0' in text
    assert 'asyncjobs_steps_total{name="stepped",outcome="failed"} 1.0' in text
