"""``@app.task``: a Celery task declared as an asyncjobs job, with Celery's options mapped.

A ``Task`` is a ``JobDef`` (so ``asyncjobs node`` runs it like any job) whose function takes
the job's context first and then calls the task's own function: with the task bound
(``bind=True``, ``self``) if asked, and turning ``autoretry_for`` exceptions into retries
with Celery's delays. An ``async def`` task runs on the node's event loop; a plain ``def``
task runs isolated, in the process pool (it is found there again by its module and name,
like any isolated job).

Retries follow Celery: ``max_retries`` (3) retries after the first attempt; ``self.retry()``
and ``autoretry_for`` wait ``default_retry_delay`` (180 s), or, with ``retry_backoff``, an
exponential delay (``retry_backoff`` seconds times 2 ** retries, capped at
``retry_backoff_max``, 600 s, and drawn at random below it with ``retry_jitter``). When the
retries run out, the job fails with the task's own exception.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import AsyncJobsError, RetryRequested
from ..ids import new_id
from ..jobs import JobContext, JobDef, JobId, Retry, Signature
from ..prepare import prepare
from .options import CALL_OPTIONS, refuse
from .results import AsyncResult

if TYPE_CHECKING:
    from .app import Celery
    from .canvas import Sig

# The request of the task running in this asyncio task (or this pool worker): a bound task's
# ``self.request``, kept per task as Celery keeps it per thread.
_request: ContextVar[Request | None] = ContextVar("asyncjobs_celery_request", default=None)
MAX_RETRIES_NONE = 9_999  # Celery's max_retries=None ("forever"), as far as asyncjobs counts
CALL_KNOWN = ("args", "kwargs", "countdown", "eta", "queue", "priority")


class MaxRetriesExceededError(AsyncJobsError):
    """``self.retry()`` was called with no retries left and no exception to raise."""

    def __init__(self, task: str, retries: int) -> None:
        self.task = task
        self.retries = retries
        super().__init__(f"task {task!r} has used its {retries} retries (max_retries)")


class Request:
    """What Celery's ``self.request`` has that asyncjobs knows: ``id``, ``retries``,
    ``args``, ``kwargs``, ``delivery_info`` (its queue)."""

    def __init__(self, ctx: JobContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.id = str(ctx.job_id)  # a string, as Celery's
        self.retries = ctx.attempt - 1
        self.args = args
        self.kwargs = kwargs
        self.delivery_info = {"routing_key": ctx.queue}
        self.ctx = ctx


class Task:
    """A Celery-style task: call it to run its function here, ``.delay()`` /
    ``.apply_async()`` (or ``await .adelay()`` in async code) to enqueue it, ``.s()`` /
    ``.si()`` for a signature. ``task.job`` is the asyncjobs job it is registered as."""

    def __init__(
        self,
        celery: Celery,
        fn: Callable[..., Any],
        *,
        name: str,
        queue: str | None,
        bind: bool,
        max_retries: int | None,
        default_retry_delay: float,
        autoretry_for: tuple[type[BaseException], ...],
        retry_backoff: bool | float,
        retry_backoff_max: float,
        retry_jitter: bool,
        time_limit: float | None,
        soft_time_limit: float | None,
        rate_limit: str | None,
        priority: int,
    ) -> None:
        self.celery = celery
        self.name = name
        self.default_queued = queue is None  # on app.conf.task_default_queue
        self.task_fn = fn
        self.bind = bind
        self.max_retries = MAX_RETRIES_NONE if max_retries is None else max_retries
        self.default_retry_delay = default_retry_delay
        self.autoretry_for = autoretry_for
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.__wrapped__ = fn
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__module__ = fn.__module__
        self.__doc__ = fn.__doc__
        # Every retry is a RetryRequested carrying Celery's delay (see _entry), so the
        # policy itself has no backoff of its own.
        self.job: JobDef[Any, Any] = celery.job(
            name=name, queue=queue or celery.default_queue,
            priority=priority, timeout=time_limit, soft_timeout=soft_time_limit,
            retry=Retry(attempts=self.max_retries + 1, backoff=0.0, jitter=0.0,
                        on=(RetryRequested,)),
            isolated=not inspect.iscoroutinefunction(fn), rate_limit=rate_limit,
        )(_entry(self, fn))  # fmt: skip

    @property
    def queue(self) -> str:
        return self.job.queue

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task's function here and now, as Celery does (bound tasks get ``self``)."""
        return self.task_fn(self, *args, **kwargs) if self.bind else self.task_fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {self.celery.main or 'asyncjobs'}>"

    @property
    def request(self) -> Request:
        """The running task's request (``id``, ``retries``, ``args``, ``kwargs``)."""
        request = _request.get()
        if request is None:
            raise AsyncJobsError(f"{self.name}.request exists only while the task runs")
        return request

    # -- enqueueing --------------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Sig:
        from .canvas import Sig

        return Sig(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Sig:
        from .canvas import Sig

        return Sig(self, args, kwargs, immutable=True)

    signature = s

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Enqueue the task; returns once it is stored. Blocking: from async code, await
        ``adelay``."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Enqueue with ``countdown=`` (seconds), ``eta=`` (an aware datetime), ``queue=``
        and ``priority=`` (higher runs first). Other Celery options raise a sentence."""
        bridge = self.celery.bridge
        if bridge.in_home_loop():  # nothing may block here: check now, write in the background
            return self._apply_in_loop(args, kwargs, options)
        call = self._call(args, kwargs, options)
        job_id = bridge.call(f"{self.name}.apply_async()", call)
        return AsyncResult(job_id, self.celery)

    def _apply_in_loop(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: Any
    ) -> AsyncResult:
        """``apply_async`` in the app's own loop: the arguments and options are checked (and
        raise) at once, the handle comes back with the job's id, and the job is written by a
        task of the loop; the handle's ``get()`` raises what that write raised."""
        refuse(f"{self.name}.apply_async()", options, CALL_OPTIONS, CALL_KNOWN)
        delay, run_at = call_times(options)
        app = self.celery
        definition = self.job
        sig = Signature(
            self.name, tuple(args or ()), dict(kwargs or {}), options.get("queue"),
            options.get("priority"), run_at, delay, None, False, None, None,
        )  # fmt: skip
        job_id = new_id()
        prepare(sig, definition, job_id, app.clock.time(), app.settings.max_payload_bytes)
        write = app.bridge.write_soon(
            f"{self.name}.apply_async() of job {job_id}",
            app._enqueue(definition, sig, None, None, job_id=job_id),
        )
        return AsyncResult(job_id, app, write)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        return AsyncResult(await self._call(args, kwargs, options)(self.celery), self.celery)

    def _call(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: Any
    ) -> Callable[[Any], Any]:
        refuse(f"{self.name}.apply_async()", options, CALL_OPTIONS, CALL_KNOWN)
        delay, run_at = call_times(options)
        queue, priority = options.get("queue"), options.get("priority")
        a, kw = tuple(args or ()), dict(kwargs or {})

        async def enqueue(app: Any) -> JobId:
            job_id: JobId = await app.enqueue(
                self.name, *a, delay=delay, run_at=run_at, queue=queue, priority=priority,
                **kw,
            )  # fmt: skip
            return job_id

        return enqueue

    # -- inside a bound task -----------------------------------------------------------------

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> RetryRequested:
        """Run the task again after ``countdown`` seconds (default ``default_retry_delay``);
        with no retries left, raise ``exc`` (or ``MaxRetriesExceededError``). Raises."""
        for option, value in (("args", args), ("kwargs", kwargs), ("eta", eta),
                              ("max_retries", max_retries)):  # fmt: skip
            if value is not None:
                refuse(f"{self.name}.retry()", [option], {
                    option: "a retry runs the task again with its own arguments, "
                    "countdown= after now, within the task's own max_retries",
                }, ())  # fmt: skip
        refuse(f"{self.name}.retry()", options, CALL_OPTIONS, ())
        request = self.request
        if request.retries >= self.max_retries:
            raise exc if exc is not None else MaxRetriesExceededError(self.name, self.max_retries)
        raise RetryRequested(self.default_retry_delay if countdown is None else countdown, exc)

    def auto_delay(self, retries: int) -> float:
        """How long Celery waits before retry number ``retries + 1`` of an autoretry."""
        if not self.retry_backoff:
            return self.default_retry_delay
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(self.retry_backoff_max, factor * 2**retries)
        return random.uniform(0, countdown) if self.retry_jitter else countdown


def call_times(options: Mapping[str, Any]) -> tuple[float | None, datetime | None]:
    countdown, eta = options.get("countdown"), options.get("eta")
    delay = countdown.total_seconds() if isinstance(countdown, timedelta) else countdown
    return delay, eta


def _entry(task: Task, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The job's function: the context first, then the task's own arguments."""

    def retry_or_raise(ctx: JobContext, exc: Exception) -> Exception:
        retries = ctx.attempt - 1
        if isinstance(exc, RetryRequested | MaxRetriesExceededError):
            return exc  # self.retry() decided already
        if isinstance(exc, task.autoretry_for) and retries < task.max_retries:
            return RetryRequested(task.auto_delay(retries), exc)
        return exc

    if inspect.iscoroutinefunction(fn):

        async def run_async(ctx: JobContext, *args: Any, **kwargs: Any) -> Any:
            token = _request.set(Request(ctx, args, kwargs))
            try:
                return await (fn(task, *args, **kwargs) if task.bind else fn(*args, **kwargs))
            except Exception as exc:
                again = retry_or_raise(ctx, exc)
                if again is exc:
                    raise
                raise again from exc
            finally:
                _request.reset(token)

        entry: Callable[..., Any] = run_async
    else:

        def run_sync(ctx: JobContext, *args: Any, **kwargs: Any) -> Any:
            token = _request.set(Request(ctx, args, kwargs))
            try:
                return fn(task, *args, **kwargs) if task.bind else fn(*args, **kwargs)
            except Exception as exc:
                again = retry_or_raise(ctx, exc)
                if again is exc:
                    raise
                raise again from exc
            finally:
                _request.reset(token)

        entry = run_sync
    # Found again in the pool's zygote by module and qualified name: the decorator leaves the
    # Task under the function's own name, and the zygote runs its job's function.
    entry.__module__ = fn.__module__
    entry.__qualname__ = f"{fn.__qualname__}.job"
    entry.__name__ = fn.__name__
    entry.__doc__ = fn.__doc__
    return entry
