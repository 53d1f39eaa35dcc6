"""What a node keeps for each attempt it runs, and why it may stop one.

Shared by the parts that run jobs (execution, isolated), stop them (node) and observe them
(cputime, metrics, hooks), so none of them needs the others to name it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import Clock
from ..jobs import ContextApp, JobContext, JobDef, JobId
from ..settings import Settings
from ..store.base import ClaimedJob, Outcome, Store

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ..pool.handle import WorkerHandle
    from ..pool.pool import ProcessPool
    from ..tracing import Tracing
    from .steps import JobSteps, StepHook


# Reasons a node stops a job itself. The values are stored as the job's `reason`.
STOP_CANCEL = "cancel requested"
STOP_SOFT_TIMEOUT = "soft time limit"
STOP_TIMEOUT = "time limit"
STOP_SHUTDOWN = "node shutdown"


class RunningJob:
    """What the node keeps for one running attempt."""

    __slots__ = (
        "__weakref__",  # JobSteps refers back to its job weakly
        "attempt",
        "concurrency_key",
        "cpu",
        "ctx",
        "definition",
        "finished",
        "handles",
        "id",
        "max_attempts",
        "name",
        "queue",
        "span",
        "started",
        "steps",
        "stop_reason",
        "task",
        "trace",
        "wait",
        "worker",
        "workflow_id",
    )

    def __init__(self, claimed: ClaimedJob, definition: JobDef[Any, Any] | None) -> None:
        self.id: JobId = claimed.id
        self.name = claimed.name
        self.queue = claimed.queue
        self.attempt = claimed.attempt
        self.max_attempts = claimed.max_attempts
        self.workflow_id = claimed.workflow_id
        self.concurrency_key = claimed.concurrency_key
        self.definition = definition
        self.task: asyncio.Task[None] | None = None
        self.ctx: JobContext | None = None
        self.stop_reason: str | None = None
        self.handles: list[asyncio.TimerHandle] | None = None
        self.finished = False
        self.worker: WorkerHandle | None = None  # isolated jobs: the pool worker running it
        self.started: float | None = None  # time.monotonic() when it began to run
        self.cpu: float | None = None  # its CPU time so far, where measured
        self.wait = claimed.wait  # how long it waited to be claimed after it was due
        self.steps: JobSteps | None = None  # its ctx.step records (jobs that take a context)
        self.trace = claimed.trace  # its enqueue span's context, if it was traced
        self.span: Span | None = None  # its run span, while tracing is on (asyncjobs.tracing)

    @property
    def durable(self) -> bool:
        """Whether it resumes rather than ends when it is interrupted: declared so, or it has
        completed a step."""
        if self.definition is not None and self.definition.durable:
            return True
        return self.steps is not None and self.steps.completed > 0


class JobRunner(Protocol):
    """What running a job, and turning how it ended into an outcome, needs from the node
    (``Node`` is one)."""

    @property
    def app(self) -> ContextApp: ...  # for the jobs' JobContext

    @property
    def settings(self) -> Settings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def id(self) -> JobId: ...

    @property
    def pool(self) -> ProcessPool | None: ...

    @property
    def tracing(self) -> Tracing | None: ...  # None unless Settings.tracing is on

    @property
    def store(self) -> Store: ...

    def finish(self, job: RunningJob, outcome: Outcome) -> None:
        """Record how an attempt ended and free its slot."""

    def parked(self, job: RunningJob) -> None:
        """The job parked (ctx.sleep, ctx.wait_for, or a shutdown): free its slot."""

    def step_ended(self, job: RunningJob, outcome: str) -> None:
        """Count a step by outcome: succeeded, failed or replayed (metrics)."""

    @property
    def step_hook(self) -> StepHook | None: ...
