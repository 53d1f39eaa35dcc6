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
from ..store.base import ClaimedJob, Outcome

if TYPE_CHECKING:
    from ..pool.handle import WorkerHandle
    from ..pool.pool import ProcessPool


# Reasons a node stops a job itself. The values are stored as the job's `reason`.
STOP_CANCEL = "cancel requested"
STOP_SOFT_TIMEOUT = "soft time limit"
STOP_TIMEOUT = "time limit"
STOP_SHUTDOWN = "node shutdown"


class RunningJob:
    """What the node keeps for one running attempt."""

    __slots__ = (
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
        "started",
        "stop_reason",
        "task",
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

    def finish(self, job: RunningJob, outcome: Outcome) -> None:
        """Record how an attempt ended and free its slot."""
