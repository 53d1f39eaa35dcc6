"""OpenTelemetry spans for enqueues and runs (``Settings.tracing``, ``asyncjobs[otel]``).

With tracing on, asyncjobs makes these spans through the global tracer provider and the
global propagator, so exporters, samplers and propagators are configured the standard way:

- **A PRODUCER span per write:** ``enqueue <job name>`` for each ``enqueue`` (``ctx.enqueue``
  and ``after=`` included), ``enqueue_many`` for a batch, ``submit`` for a workflow. It is
  current while the rows are written. Its context, as the global propagator injects it (W3C
  ``traceparent`` and ``tracestate`` by default), goes into every row it writes
  (``jobs.trace``: the carrier, JSON-encoded).
- **A CONSUMER span per attempt a node runs:** ``run <job name>``, a child of the context the
  row carries, so the run joins the trace of the request that enqueued it, on any node and
  however much later. A row without a context (a schedule's run, or a job enqueued with
  tracing off) starts a new trace. The span is current in the job's task, so the job's own
  spans, and the follow-up jobs it enqueues, belong to it. It ends with the attempt and
  records the outcome in ``asyncjobs.job.outcome``. A failed attempt gets status ERROR and an
  ``exception`` event. The event is built from the error as stored, with the attributes
  ``span.record_exception`` writes. That way an isolated job (whose exception lives in its
  worker process) and a time limit get one too.

Attribute names follow OpenTelemetry's messaging semantic conventions: ``messaging.system``
is ``asyncjobs``, ``messaging.destination.name`` is the queue, ``messaging.message.id`` is the
job's id, and ``messaging.operation.name``/``type`` are enqueue/send, enqueue_many/send,
submit/send, run/process. A batch has ``messaging.batch.message_count``. On top of those come
``asyncjobs.job.name``, ``asyncjobs.job.attempt``, ``asyncjobs.job.outcome`` (succeeded,
failed, cancelled, retried, lost, parked, or reaped: its node was reaped while it ran),
``asyncjobs.job.reason``, ``asyncjobs.node.id`` and ``asyncjobs.workflow.id``. A span's name
holds the job's name rather than the queue (which the conventions suggest), because one
queue holds many kinds of job.

With tracing off, no module imports OpenTelemetry, and the only cost to a job is checking
that its span is None.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from .errors import ConfigurationError
from .version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from .jobs import JobId
    from .node.running import RunningJob
    from .store.base import Outcome

SYSTEM = "asyncjobs"
OUTCOME = "asyncjobs.job.outcome"


class Tracing:
    """Makes asyncjobs' spans. Built by ``App.start()`` and by each node when
    ``Settings.tracing`` is on; raises ``ConfigurationError`` if opentelemetry-api is missing."""

    def __init__(self) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            raise ConfigurationError(
                "tracing",
                True,
                "tracing needs opentelemetry-api: pip install 'asyncjobs[otel]', or leave "
                "tracing off",
            ) from None
        self._attach = context.attach
        self._root = context.Context()  # the parent of a run whose row carries no context
        self._inject = propagate.inject
        self._extract = propagate.extract
        self._in_context = trace.set_span_in_context
        self._producer = trace.SpanKind.PRODUCER
        self._consumer = trace.SpanKind.CONSUMER
        # A ProxyTracer until a provider is set, which it then follows: the global one.
        self._tracer = trace.get_tracer("asyncjobs", __version__)

    # -- producers ---------------------------------------------------------------------------

    @contextmanager
    def enqueuing(self, name: str, queue: str, job_id: JobId) -> Iterator[str | None]:
        """The span of one ``enqueue``, current while the job is written. Yields the context
        to store in the job's row."""
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "enqueue",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "messaging.message.id": str(job_id),
            "asyncjobs.job.name": name,
        }
        with self._tracer.start_as_current_span(
            f"enqueue {name}", kind=self._producer, attributes=attributes
        ):
            yield self._carrier()

    @contextmanager
    def enqueuing_batch(
        self, operation: str, count: int, workflow_id: JobId | None = None
    ) -> Iterator[str | None]:
        """The span of an ``enqueue_many`` or a workflow's ``submit`` (``operation``) of
        ``count`` jobs, current while they are written. Yields the context every one of its
        rows stores."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": operation,
            "messaging.operation.type": "send",
            "messaging.batch.message_count": count,
        }
        if workflow_id is not None:
            attributes["asyncjobs.workflow.id"] = str(workflow_id)
        with self._tracer.start_as_current_span(
            operation, kind=self._producer, attributes=attributes
        ):
            yield self._carrier()

    def _carrier(self) -> str | None:
        carrier: dict[str, str] = {}
        self._inject(carrier)  # the current context: the span just started
        return orjson.dumps(carrier).decode() if carrier else None

    # -- runs --------------------------------------------------------------------------------

    def start_run(self, job: RunningJob, node_id: JobId) -> None:
        """Start ``job``'s run span (``job.span``) as a child of the context its row
        carries, and make it current in the calling task: the job's own task, which ends
        with the attempt (so nothing needs detaching)."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "run",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "asyncjobs.job.name": job.name,
            "asyncjobs.job.attempt": job.attempt,
            "asyncjobs.node.id": str(node_id),
        }
        if job.workflow_id is not None:
            attributes["asyncjobs.workflow.id"] = str(job.workflow_id)
        span = self._tracer.start_span(
            f"run {job.name}", context=self._parent(job.trace), kind=self._consumer,
            attributes=attributes,
        )  # fmt: skip
        job.span = span
        self._attach(self._in_context(span))

    def _parent(self, trace: str | None) -> Any:
        if trace is not None:
            try:
                carrier = orjson.loads(trace)
            except orjson.JSONDecodeError:
                carrier = None
            if isinstance(carrier, dict):
                return self._extract(carrier, self._root)
        return self._root


def end_run(span: Span, outcome: Outcome | str) -> None:
    """End a run span with how its attempt ended: the node's ``Outcome``, or ``parked`` (a
    durable job that will run again) or ``reaped`` (its node was reaped meanwhile)."""
    if isinstance(outcome, str):
        span.set_attribute(OUTCOME, outcome)
        span.end()
        return
    state = outcome.state
    span.set_attribute(OUTCOME, "retried" if state in ("queued", "scheduled") else state)
    if outcome.reason is not None:
        span.set_attribute("asyncjobs.job.reason", outcome.reason)
    if outcome.error is not None or state == "lost":
        _failed(span, outcome)
    span.end()


def _failed(span: Span, outcome: Outcome) -> None:
    """Status ERROR, and the error as an ``exception`` event (what ``record_exception``
    writes, from the error as stored)."""
    from opentelemetry.trace import StatusCode  # imported already: a span exists

    if outcome.error is None:  # lost: no exception, a reason
        span.set_attribute("error.type", "_OTHER")
        span.set_status(StatusCode.ERROR, outcome.reason or "lost")
        return
    error = orjson.loads(outcome.error)
    kind, message = str(error.get("type", "")), str(error.get("message", ""))
    span.add_event(
        "exception",
        {
            "exception.type": kind,
            "exception.message": message,
            "exception.stacktrace": str(error.get("traceback", "")),
        },
    )
    span.set_attribute("error.type", kind or "_OTHER")
    span.set_status(StatusCode.ERROR, f"{kind}: {message}" if message else kind)
