"""The job model: states, retry policy, job definitions, signatures, records, and the context.

See DESIGN §3. A job definition is an ``async def``, which runs on the node's event loop as one
task, or a function declared ``isolated=True``, which runs in a pool worker process (see
``asyncjobs.pool``). Delivery is *at most once* unless the job declares ``retry=Retry(...)``.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, ParamSpec, Protocol, TypeVar

from .errors import ConfigurationError, IsolationError, JobDefinitionError
from .limits import JobLimits, declare_limits
from .storable import text_problem

JobId = uuid.UUID
P = ParamSpec("P")
R = TypeVar("R")

_EMPTY_KWARGS: Mapping[str, Any] = MappingProxyType({})
PRIORITY_MIN = -32768  # priorities are stored as smallint; higher runs first
PRIORITY_MAX = 32767


class JobState(StrEnum):
    """Where a job is in its life. The last four are terminal."""

    SCHEDULED = "scheduled"  # run_at is in the future
    WAITING = "waiting"  # dependencies are not done yet
    QUEUED = "queued"  # ready to run
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # was running on a node that died, and may not be retried

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST})


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry a failed job with exponential backoff.

    - ``attempts``: total attempts, the first included (``Retry(attempts=3)`` runs at most 3
      times). A node death counts as one attempt.
    - ``backoff``: seconds before the second attempt; each later wait doubles.
    - ``max_delay``: cap on any single wait, in seconds.
    - ``jitter``: spread each wait uniformly by this fraction (0.1 means +/-10%), so that many
      jobs failing together do not retry together.
    - ``on``: exception types that are retried; anything else fails the job at once.
    """

    attempts: int = 3
    backoff: float = 1.0
    max_delay: float = 300.0
    jitter: float = 0.1
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError("Retry.attempts", self.attempts, "expected a whole number")
        if not 1 <= self.attempts <= 10_000:
            raise ConfigurationError("Retry.attempts", self.attempts, "must be 1 to 10,000")
        for name in ("backoff", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"Retry.{name}", value, "must be a number of seconds >= 0")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ConfigurationError("Retry.jitter", self.jitter, "must be between 0 and 1")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            raise ConfigurationError("Retry.on", self.on, "expected exception classes")
        object.__setattr__(self, "on", on)

    def delay(self, failed_attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        base = self.backoff * 2.0 ** min(failed_attempt - 1, 60)
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return min(self.max_delay, base * spread)

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, self.on)


class Signature(NamedTuple):
    """A job call not yet enqueued: the job's name, its arguments, and per-call options.

    Build one with ``job.s(*args, **kwargs)`` or ``app.signature(name, *args, **kwargs)``, and
    pass a list of them to ``app.enqueue_many``. Options are set with ``.set(...)``. (A named
    tuple rather than a dataclass: ``enqueue_many`` callers build tens of thousands of them.)
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = _EMPTY_KWARGS
    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: timedelta | float | None = None
    unique_key: str | None = None
    # In a workflow: True (``job.si(...)``) keeps the parent's result out of its arguments.
    immutable: bool = False
    concurrency_key: str | None = None  # overrides the job's own (see asyncjobs.limits)
    concurrency_limit: int | None = None

    def __or__(self, other: Any) -> Any:
        """``a | b`` is ``chain(a, b)``: ``b`` runs after ``a``, with its result."""
        from .workflows import Chain, chain

        if isinstance(other, Chain):
            return Chain((self, *other.steps))
        return chain(self, other)

    def set(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        unique_key: str | None = None,
    ) -> Signature:
        """A copy with the given options replaced (None keeps the current value)."""
        return self._replace(
            queue=queue if queue is not None else self.queue,
            priority=priority if priority is not None else self.priority,
            run_at=run_at if run_at is not None else self.run_at,
            delay=delay if delay is not None else self.delay,
            unique_key=unique_key if unique_key is not None else self.unique_key,
        )

    @property
    def has_options(self) -> bool:
        return not (
            self.queue is None
            and self.priority is None
            and self.run_at is None
            and self.delay is None
            and self.unique_key is None
            and self.concurrency_key is None
            and self.concurrency_limit is None
        )


class JobDef(Generic[P, R]):
    """A registered job: the function plus its declared options.

    Calling it calls the function directly (handy in tests); ``.s(...)`` makes a signature.
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]],
        *,
        name: str,
        queue: str,
        priority: int,
        timeout: float | None,
        soft_timeout: float | None,
        retry: Retry | None,
        isolated: bool = False,
        limits: JobLimits | None = None,
    ) -> None:
        self.fn = fn
        self.isolated = isolated
        self.limits = limits  # concurrency key and rate limit, if declared
        self.name = name
        self.queue = queue
        self.priority = priority
        self.timeout = timeout
        self.soft_timeout = soft_timeout
        self.retry = retry
        self.max_attempts = retry.attempts if retry else 1
        self.wants_context = wants_context(fn)
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__doc__ = fn.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this job with these arguments (a JobContext is added at run time)."""
        return Signature(self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a workflow it does not receive its parent's result."""
        return Signature(self.name, args, kwargs, immutable=True)

    def __repr__(self) -> str:
        return f"<JobDef {self.name!r} queue={self.queue!r}>"


def register_job(
    registry: dict[str, JobDef[Any, Any]],
    fn: Callable[P, Awaitable[R]],
    *,
    name: str | None,
    queue: str | None,
    priority: int,
    timeout: float | None,
    soft_timeout: float | None,
    retry: Retry | None,
    isolated: bool = False,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    rate_limit: str | None = None,
    rate_limit_key: str | None = None,
) -> JobDef[P, R]:
    """Validate a declaration and add it to ``registry`` (what ``App.job`` does)."""
    job_name = name if name is not None else getattr(fn, "__name__", repr(fn))
    job_queue = queue if queue is not None else "default"
    validate_job_options(
        job_name, fn, queue=job_queue, priority=priority, timeout=timeout,
        soft_timeout=soft_timeout, retry=retry, isolated=isolated,
    )  # fmt: skip
    existing = registry.get(job_name)
    if existing is not None and existing.fn is not fn:
        raise JobDefinitionError(
            job_name,
            f"{_where(fn)} and {_where(existing.fn)} both use this name; pass name=... to one "
            "of them",
        )
    limits = declare_limits(
        job_name, fn, concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
        rate_limit=rate_limit, rate_limit_key=rate_limit_key,
    )  # fmt: skip
    definition = JobDef(
        fn, name=job_name, queue=job_queue, priority=priority, timeout=timeout,
        soft_timeout=soft_timeout, retry=retry, isolated=isolated, limits=limits,
    )  # fmt: skip
    registry[job_name] = definition
    return definition


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def validate_job_options(
    name: str,
    fn: Callable[..., Any],
    *,
    queue: str,
    priority: int,
    timeout: float | None,
    soft_timeout: float | None,
    retry: Retry | None,
    isolated: bool = False,
) -> None:
    """Raise ``JobDefinitionError`` for a declaration that cannot run."""
    from .settings import check_queue_name, check_seconds

    if isolated is not True and isolated is not False:
        raise JobDefinitionError(str(name), f"isolated={isolated!r} is not True or False")
    if isolated:
        _check_importable(str(name), fn)
    elif not inspect.iscoroutinefunction(fn):
        raise JobDefinitionError(
            name,
            "it is a plain function, and a plain function would block the event loop that runs "
            "every other job. Make it `async def`, or declare it `@app.job(isolated=True)` to "
            "run it in a pool worker process (for CPU-heavy or untrusted code).",
        )
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise JobDefinitionError(str(name), "a job name is a string of 1 to 200 characters")
    if why := text_problem(name):
        raise JobDefinitionError(name, f"its name cannot be stored: {why}")
    try:
        check_queue_name(queue)
        for opt, value in (("timeout", timeout), ("soft_timeout", soft_timeout)):
            if value is not None:
                check_seconds(opt, value)
    except ConfigurationError as exc:
        raise JobDefinitionError(name, str(exc)) from None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise JobDefinitionError(name, f"priority={priority!r} is not a whole number")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise JobDefinitionError(
            name, f"priority={priority} is outside {PRIORITY_MIN}..{PRIORITY_MAX}"
        )
    if timeout is not None and soft_timeout is not None and soft_timeout >= timeout:
        raise JobDefinitionError(
            name,
            f"soft_timeout ({soft_timeout:g} s) must be shorter than timeout ({timeout:g} s): "
            "the soft limit asks the job to stop, the hard limit gives up on it",
        )
    if retry is not None and not isinstance(retry, Retry):
        raise JobDefinitionError(name, f"retry={retry!r} is not a Retry(...) policy")


def _check_importable(name: str, fn: Callable[..., Any]) -> None:
    """An isolated job is found again in the zygote by module and name: it must be reachable."""
    if not callable(fn):
        raise JobDefinitionError(name, f"{fn!r} is not a function")
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<" in qualname:
        raise JobDefinitionError(
            name,
            f"an isolated job must be a module-level function, and {qualname or fn!r} is "
            "defined inside another function: the pool's zygote imports it by module and name",
        )


def wants_context(fn: Callable[..., Any]) -> bool:
    """True when the first parameter is annotated ``JobContext``."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return False
    annotation = params[0].annotation
    if isinstance(annotation, str):
        # With `from __future__ import annotations`, ctx: "JobContext" arrives as "'JobContext'".
        return annotation.strip("'\" ").rsplit(".", 1)[-1] == "JobContext"
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotation
        return annotation is JobContext
    return hints.get(params[0].name) is JobContext


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored: what ``app.get()`` returns. Payloads are already decoded."""

    id: JobId
    name: str
    queue: str
    priority: int
    state: JobState
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    node_id: uuid.UUID | None = None
    unique_key: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    cancel_requested: bool = False
    schedule: str | None = None  # the schedule that fired it, if any
    fire_at: datetime | None = None  # and the fire time it ran for
    workflow_id: uuid.UUID | None = None  # the workflow it is a step of, if any
    step: str | None = None  # and its key there
    wall_s: float | None = None  # the last attempt's run time, as its node measured it
    cpu_s: float | None = None  # and its CPU time (the task's own, or its pool worker's)

    @property
    def is_finished(self) -> bool:
        return self.state.is_terminal

    @property
    def queue_wait_s(self) -> float | None:
        """How long the last attempt waited to start after it was due, in seconds."""
        if self.started_at is None:
            return None
        return max(0.0, (self.started_at - self.run_at).total_seconds())


class _Parents(Protocol):
    async def parent_results(self, job_id: JobId) -> Sequence[Any]: ...


class ContextApp(Protocol):
    """What a running job's context calls on its app (``App`` is one). Narrow on purpose:
    this module, which the stores and the pool import, needs nothing else of the app."""

    @property
    def store(self) -> _Parents: ...

    def _definition(self, job: str | JobDef[Any, Any]) -> JobDef[Any, Any]: ...

    async def _enqueue(
        self,
        definition: JobDef[Any, Any],
        sig: Signature,
        after: Sequence[JobId | str] | None,
        workflow_id: JobId | None,
    ) -> JobId: ...

    async def result(self, job_id: JobId | str, *, timeout: float | None = None) -> Any: ...


class JobContext:
    """What a running job may know and do. Ask for it by annotating the first parameter::

    @app.job()
    async def provision(ctx: JobContext, vm_id: str) -> None:
        ctx.logger.info("attempt %d", ctx.attempt)
    """

    __slots__ = (
        "_app",
        "_cancel_requested",
        "_logger",
        "attempt",
        "job_id",
        "job_name",
        "max_attempts",
        "queue",
        "workflow_id",
    )

    def __init__(
        self,
        app: ContextApp | None,
        job_id: JobId,
        name: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        workflow_id: uuid.UUID | None = None,
    ) -> None:
        self._app = app  # None in a pool worker, which has no database access
        self.workflow_id = workflow_id  # the workflow this job is a step of, if any
        self.job_id = job_id
        self.job_name = name
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._cancel_requested = False
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job (the job is also cancelled at its next
        ``await``; check this to stop CPU-bound loops that rarely await)."""
        return self._cancel_requested

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that tags every line with the job's name, id and attempt."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                logging.getLogger(f"asyncjobs.job.{self.job_name}"),
                {"job_id": str(self.job_id), "attempt": self.attempt},
            )
        return self._logger

    async def enqueue(
        self,
        job: str | JobDef[Any, Any],
        /,
        *args: Any,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        after: Sequence[JobId | str] | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        **kwargs: Any,
    ) -> JobId:
        """Enqueue a follow-up job (same options as ``App.enqueue``).

        With ``after`` (job ids, this job's own included), the new job waits for those jobs
        to succeed; enqueued by a workflow step, it joins that workflow, so the workflow is
        not finished until it is. Not available to isolated jobs (``IsolationError``): a pool
        worker has no database.
        """
        app = self._require_app("enqueue")
        definition = app._definition(job)
        sig = Signature(definition.name, args, kwargs, queue, priority, run_at, delay,
                        unique_key, False, concurrency_key, concurrency_limit)  # fmt: skip
        return await app._enqueue(definition, sig, after, self.workflow_id if after else None)

    async def parent_results(self) -> dict[str, Any]:
        """The results of the jobs this one ran after, in order, keyed by step key (a
        workflow step) or by job id (a job enqueued with ``after=``).

        Not available to isolated jobs (``IsolationError``): a pool worker has no database.
        """
        app = self._require_app("parent_results")
        parents = await app.store.parent_results(self.job_id)
        return {p.step or str(p.id): p.result for p in parents if p.id is not None}

    async def wait_for(self, job_id: JobId, timeout: float | None = None) -> Any:
        """Wait for another job to finish and return its result (as ``App.result``).

        Not available to isolated jobs (``IsolationError``): a pool worker has no database.
        """
        return await self._require_app("wait_for").result(job_id, timeout=timeout)

    def _require_app(self, what: str) -> ContextApp:
        if self._app is None:
            raise IsolationError(
                f"job {self.job_name!r} runs isolated in a pool worker, which has no database "
                f"access, so ctx.{what}() is not available. Return a value instead, and let a "
                "coroutine job (or a workflow) act on it."
            )
        return self._app

    def __repr__(self) -> str:
        return f"<JobContext {self.job_name!r} {self.job_id} attempt={self.attempt}>"


def coerce_job_id(value: JobId | str) -> JobId:
    """Accept a UUID or its text form."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a job id (expected a UUID)") from None


def iter_signatures(items: Sequence[Signature]) -> Sequence[Signature]:
    for item in items:
        if not isinstance(item, Signature):
            raise TypeError(
                f"enqueue_many expects signatures (job.s(...) or app.signature(...)), "
                f"got {type(item).__name__}"
            )
    return items
