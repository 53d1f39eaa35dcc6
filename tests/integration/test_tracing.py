"""OpenTelemetry spans (asyncjobs.tracing) on real nodes, on both stores.

The promise: a job enqueued inside a request's span runs in that request's trace. Its enqueue
is a PRODUCER span, each attempt a CONSUMER span that is a child of it, found through the
context stored in the job's row, whatever path wrote the row. With tracing off, rows carry
nothing, no span is made and OpenTelemetry is never imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from asyncjobs import App, JobContext, JobFailedError, MemoryStore, Retry, Settings, chain, group
from asyncjobs.jobs import JobId
from asyncjobs.producing import BULK_THRESHOLD
from tests import pool_jobs
from tests.helpers import wait_until

TIMEOUT = 30


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The test's own global TracerProvider, exporting finished spans to memory. The global
    provider can be set only once per process, so its guard is swapped for the test and put
    back after (monkeypatch), with the previous provider."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    trace.set_tracer_provider(provider)
    yield spans
    provider.shutdown()


def make(settings: Settings, *, store: Any = None, tracing: bool = True) -> App:
    app = App(settings=settings.replace(tracing=tracing, queues="default,reports"), store=store)

    @app.job()
    async def noop(i: int) -> int:
        return i

    @app.job(queue="reports")
    async def fail(message: str) -> None:
        raise ValueError(message)

    @app.job(retry=Retry(attempts=3, backoff=0.0, jitter=0.0, on=(KeyError,)))
    async def flaky(ctx: JobContext) -> int:
        if ctx.attempt < 3:
            raise KeyError(f"attempt {ctx.attempt}")
        return ctx.attempt

    @app.job()
    async def follow_up(ctx: JobContext) -> str:
        return str(await ctx.enqueue("noop", 7))

    return app


def tracer() -> trace.Tracer:
    return trace.get_tracer("tests")


def finished(spans: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.kind == kind]


def runs_of(spans: InMemorySpanExporter, job_id: JobId) -> list[ReadableSpan]:
    """The run spans of a job, in the order they ended."""
    return [
        s
        for s in finished(spans, SpanKind.CONSUMER)
        if s.attributes is not None and s.attributes.get("messaging.message.id") == str(job_id)
    ]


async def wait_for_runs(
    spans: InMemorySpanExporter, job_id: JobId, count: int = 1
) -> list[ReadableSpan]:
    await wait_until(
        lambda: len(runs_of(spans, job_id)) >= count, timeout=TIMEOUT, what=f"{count} run spans"
    )
    return runs_of(spans, job_id)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ids(span: ReadableSpan | trace.Span) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


async def stored_trace(app: App, job_id: JobId) -> str | None:
    """The trace context in the job's row."""
    store: Any = app.store
    if isinstance(store, MemoryStore):
        return store.jobs[job_id].trace
    value = await store.pool.fetchval(
        f"SELECT trace FROM {store.schema}.{store.table} WHERE id = $1", job_id
    )
    return None if value is None else str(value)


# -- a job's run joins the trace of its enqueue --------------------------------------------------


async def test_a_job_enqueued_inside_a_request_span_runs_in_that_trace(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings)
    async with app:
        with tracer().start_as_current_span("POST /vms") as request:
            job_id = await app.enqueue("noop", 1)
        assert await app.result(job_id, timeout=TIMEOUT) == 1
        (run,) = await wait_for_runs(exporter, job_id)
        row = await stored_trace(app, job_id)
    trace_id, request_span = ids(request)
    (enqueue,) = finished(exporter, SpanKind.PRODUCER)
    assert enqueue.name == "enqueue noop" and parent_of(enqueue) == request_span
    assert ids(enqueue)[0] == trace_id
    assert dict(enqueue.attributes or {}) == {
        "messaging.system": "asyncjobs",
        "messaging.operation.name": "enqueue",
        "messaging.operation.type": "send",
        "messaging.destination.name": "default",
        "messaging.message.id": str(job_id),
        "asyncjobs.job.name": "noop",
    }
    assert row is not None and f"{trace_id:032x}-{ids(enqueue)[1]:016x}" in row
    assert run.name == "run noop" and run.kind == SpanKind.CONSUMER
    assert ids(run)[0] == trace_id and parent_of(run) == ids(enqueue)[1]
    attributes = dict(run.attributes or {})
    assert attributes.pop("asyncjobs.node.id") == str(app.node.id)
    assert attributes == {
        "messaging.system": "asyncjobs",
        "messaging.operation.name": "run",
        "messaging.operation.type": "process",
        "messaging.destination.name": "default",
        "messaging.message.id": str(job_id),
        "asyncjobs.job.name": "noop",
        "asyncjobs.job.attempt": 1,
        "asyncjobs.job.outcome": "succeeded",
    }
    assert run.status.status_code == StatusCode.UNSET and not run.events


async def test_a_failing_job_has_an_error_run_span_with_the_exception_event(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings)
    async with app:
        job_id = await app.enqueue("fail", "disk full")
        with pytest.raises(JobFailedError):
            await app.result(job_id, timeout=TIMEOUT)
        (run,) = await wait_for_runs(exporter, job_id)
    assert run.attributes is not None
    assert run.attributes["asyncjobs.job.outcome"] == "failed"
    assert run.attributes["messaging.destination.name"] == "reports"
    assert run.attributes["error.type"] == "ValueError"
    assert run.status.status_code == StatusCode.ERROR
    assert run.status.description == "ValueError: disk full"
    (event,) = run.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "disk full"
    assert "raise ValueError(message)" in str(event.attributes["exception.stacktrace"])


async def test_a_retried_job_has_one_run_span_per_attempt_under_its_enqueue(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings)
    async with app:
        job_id = await app.enqueue("flaky")
        assert await app.result(job_id, timeout=TIMEOUT) == 3
        runs = await wait_for_runs(exporter, job_id, 3)
    (enqueue,) = finished(exporter, SpanKind.PRODUCER)
    assert [(r.attributes or {}).get("asyncjobs.job.attempt") for r in runs] == [1, 2, 3]
    outcomes = [(r.attributes or {}).get("asyncjobs.job.outcome") for r in runs]
    assert outcomes == ["retried", "retried", "succeeded"]
    assert {parent_of(r) for r in runs} == {ids(enqueue)[1]}
    assert {ids(r)[0] for r in runs} == {ids(enqueue)[0]}
    assert [r.status.status_code for r in runs] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]
    assert (runs[0].attributes or {}).get(
        "asyncjobs.job.reason"
    ) == "attempt 1 of 3 raised KeyError"
    assert [e.name for e in runs[1].events] == ["exception"]


async def test_a_follow_up_job_a_running_job_enqueues_continues_its_trace(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings)
    async with app:
        job_id = await app.enqueue("follow_up")
        child_id = uuid.UUID(await app.result(job_id, timeout=TIMEOUT))
        assert await app.result(child_id, timeout=TIMEOUT) == 7
        (run,) = await wait_for_runs(exporter, job_id)
        (child_run,) = await wait_for_runs(exporter, child_id)
    child_enqueue = next(s for s in finished(exporter, SpanKind.PRODUCER) if parent_of(s))
    assert parent_of(child_enqueue) == ids(run)[1]  # ctx.enqueue, inside the run's span
    assert parent_of(child_run) == ids(child_enqueue)[1]
    assert ids(child_run)[0] == ids(run)[0]


# -- every path that writes rows carries the context ---------------------------------------------


@pytest.mark.parametrize("count", [3, BULK_THRESHOLD], ids=["insert", "copy"])
async def test_enqueue_many_carries_its_span_to_every_job(
    any_settings: Settings,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    count: int,
) -> None:
    app = make(any_settings)
    async with app:
        copies: list[int] = []
        bulk = app.store.enqueue_bulk

        async def counting_bulk(jobs: Any) -> None:
            copies.append(1)
            await bulk(jobs)

        monkeypatch.setattr(app.store, "enqueue_bulk", counting_bulk)
        with tracer().start_as_current_span("import"):
            job_ids = await app.enqueue_many([app.signature("noop", i) for i in range(count)])
        assert len(copies) == (1 if count >= BULK_THRESHOLD else 0)  # the path under test
        for job_id in job_ids:
            await app.result(job_id, timeout=TIMEOUT)
        await wait_until(
            lambda: len(finished(exporter, SpanKind.CONSUMER)) == count,
            timeout=TIMEOUT, what="a run span per job",
        )  # fmt: skip
        rows = {await stored_trace(app, job_id) for job_id in job_ids}
    (batch,) = finished(exporter, SpanKind.PRODUCER)
    assert batch.name == "enqueue_many"
    assert (batch.attributes or {}).get("messaging.batch.message_count") == count
    runs = finished(exporter, SpanKind.CONSUMER)
    assert {parent_of(r) for r in runs} == {ids(batch)[1]}
    assert {(r.attributes or {}).get("messaging.message.id") for r in runs} == {
        str(i) for i in job_ids
    }
    assert len(rows) == 1 and None not in rows  # one context, in every row


async def test_a_workflows_steps_join_the_trace_of_its_submit(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings)
    async with app:
        noop = app.registry["noop"]
        flow = chain(noop.si(1), group(noop.si(2), noop.si(3)))
        with tracer().start_as_current_span("nightly") as parent:
            workflow_id = await app.submit(flow, name="nightly")
        await app.workflow_result(workflow_id, timeout=TIMEOUT)
        await wait_until(
            lambda: len(finished(exporter, SpanKind.CONSUMER)) == 3,
            timeout=TIMEOUT, what="a run span per step",
        )  # fmt: skip
    (submit,) = finished(exporter, SpanKind.PRODUCER)
    assert submit.name == "submit" and parent_of(submit) == ids(parent)[1]
    assert dict(submit.attributes or {}) == {
        "messaging.system": "asyncjobs",
        "messaging.operation.name": "submit",
        "messaging.operation.type": "send",
        "messaging.batch.message_count": 3,
        "asyncjobs.workflow.id": str(workflow_id),
    }
    runs = finished(exporter, SpanKind.CONSUMER)
    assert {parent_of(r) for r in runs} == {ids(submit)[1]}
    assert {ids(r)[0] for r in runs} == {ids(parent)[0]}
    assert {(r.attributes or {}).get("asyncjobs.workflow.id") for r in runs} == {str(workflow_id)}


async def test_a_job_enqueued_after_others_carries_the_context_too(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings)
    async with app:
        first = await app.enqueue("noop", 1)
        with tracer().start_as_current_span("then"):
            second = await app.enqueue("noop", 2, after=[first])
        assert await app.result(second, timeout=TIMEOUT) == 2
        (run,) = await wait_for_runs(exporter, second)
    enqueue = next(
        s for s in finished(exporter, SpanKind.PRODUCER)
        if (s.attributes or {}).get("messaging.message.id") == str(second)
    )  # fmt: skip
    assert parent_of(run) == ids(enqueue)[1]


async def test_an_isolated_jobs_run_span_is_made_on_the_node(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = pool_jobs.build_app(any_settings.replace(tracing=True))
    async with app:
        with tracer().start_as_current_span("request"):
            ok = await app.enqueue("echo", {"a": 1})
            bad = await app.enqueue("fail", "no disk")
        assert await app.result(ok, timeout=TIMEOUT) == {"a": 1}
        with pytest.raises(JobFailedError):
            await app.result(bad, timeout=TIMEOUT)
        (ok_run,) = await wait_for_runs(exporter, ok)
        (bad_run,) = await wait_for_runs(exporter, bad)
    enqueues = {
        (s.attributes or {}).get("messaging.message.id"): s
        for s in finished(exporter, SpanKind.PRODUCER)
    }
    assert parent_of(ok_run) == ids(enqueues[str(ok)])[1]
    assert (ok_run.attributes or {}).get("asyncjobs.job.outcome") == "succeeded"
    assert parent_of(bad_run) == ids(enqueues[str(bad)])[1]
    assert bad_run.status.status_code == StatusCode.ERROR
    (event,) = bad_run.events
    assert (event.attributes or {}).get("exception.type") == "tests.pool_jobs.Boom"
    assert "raise Boom(message)" in str((event.attributes or {}).get("exception.stacktrace"))


async def test_a_run_whose_row_carries_no_context_starts_a_new_trace(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    shared = MemoryStore() if any_settings.dsn == "memory://" else None  # Postgres: one schema
    producer = make(any_settings, store=shared, tracing=False)
    node = make(any_settings, store=shared)
    async with node:
        await producer.start(node=False)
        try:
            with tracer().start_as_current_span("untraced producer"):
                job_id = await producer.enqueue("noop", 5)
            assert await node.result(job_id, timeout=TIMEOUT) == 5
        finally:
            await producer.stop()
        (run,) = await wait_for_runs(exporter, job_id)
    assert run.parent is None  # a root: the producer stored no context to join
    assert not finished(exporter, SpanKind.PRODUCER)


async def test_a_schedules_runs_start_new_traces(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings)
    app.schedule("tick", "noop", every=1, args=[9])
    async with app:
        await wait_until(
            lambda: finished(exporter, SpanKind.CONSUMER), timeout=TIMEOUT, what="a run"
        )
    run = finished(exporter, SpanKind.CONSUMER)[0]
    assert run.name == "run noop" and run.parent is None


# -- tracing off ---------------------------------------------------------------------------------


async def test_with_tracing_off_rows_carry_nothing_and_no_span_is_made(
    any_settings: Settings, exporter: InMemorySpanExporter
) -> None:
    app = make(any_settings, tracing=False)
    async with app:
        assert app._tracing is None and app.node.tracing is None
        with tracer().start_as_current_span("request"):
            one = await app.enqueue("noop", 1)
            many = await app.enqueue_many([app.signature("noop", i) for i in range(BULK_THRESHOLD)])
            workflow_id = await app.submit(chain(app.signature("noop", 1)))
        for job_id in (one, *many):
            await app.result(job_id, timeout=TIMEOUT)
        await app.workflow_result(workflow_id, timeout=TIMEOUT)
        rows = {await stored_trace(app, job_id) for job_id in (one, *many)}
    assert rows == {None}
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


def test_with_tracing_off_opentelemetry_is_never_imported() -> None:
    """In a fresh interpreter: an app runs jobs of every path and imports no opentelemetry."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from asyncjobs import App, chain

        app = App(dsn="memory://")

        @app.job()
        async def noop(i: int) -> int:
            return i

        async def main() -> None:
            async with app:
                ids = [await app.enqueue(noop, 1)]
                ids += await app.enqueue_many([noop.s(i) for i in range(300)])
                for job_id in ids:
                    await app.result(job_id, timeout=30)
                await app.workflow_result(await app.submit(chain(noop.s(1))), timeout=30)

        asyncio.run(main())
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
