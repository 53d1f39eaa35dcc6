"""Declaring an app's jobs, preload hooks, lifecycle hooks and schedules (``App``'s
mixin for them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from .app_state import AppState
from .errors import ConfigurationError, ScheduleDefinitionError, UnknownJobError
from .ids import new_id
from .jobs import JobDef, Retry, Signature
from .node.hooks import check_hook
from .prepare import prepare
from .registration import register_job
from .schedules import DEFAULT_MAX_CATCHUP, DEFAULT_MISFIRE_GRACE_S, ScheduleDef, make_schedule
from .settings import Settings

P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H", bound=Callable[..., Awaitable[None]])


class Declaring(AppState):
    """``@app.job``, ``@app.preload``, ``@app.on_event``, ``app.schedule``, ``app.signature``."""

    @property
    def settings(self) -> Settings:
        return self._settings

    def configure(self, **changes: Any) -> None:
        """Change settings while the app is not running (the CLI applies its flags this way)."""
        if self._state == "started":
            raise ConfigurationError("settings", changes, "the app is already started")
        self._settings = self._settings.replace(**changes)

    @overload
    def job(self, fn: Callable[P, Awaitable[R]], /) -> JobDef[P, R]: ...

    @overload
    def job(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        soft_timeout: float | None = None,
        retry: Retry | None = None,
        isolated: bool = False,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        rate_limit: str | None = None,
        rate_limit_key: str | None = None,
        durable: bool = False,
    ) -> Callable[[Callable[P, Any]], JobDef[P, R]]: ...

    def job(
        self,
        fn: Callable[P, Awaitable[R]] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        soft_timeout: float | None = None,
        retry: Retry | None = None,
        isolated: bool = False,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        rate_limit: str | None = None,
        rate_limit_key: str | None = None,
        durable: bool = False,
    ) -> JobDef[P, R] | Callable[[Callable[P, Any]], JobDef[P, R]]:
        """Register an ``async def`` as a job, or any function with ``isolated=True``.

        - ``name``: defaults to the function's name; must be unique in the app.
        - ``queue``: defaults to ``"default"``. ``priority``: higher runs first (default 0).
        - ``soft_timeout``: seconds after which the job is cancelled (``CancelledError`` at its
          next ``await``) so it can clean up. ``timeout``: seconds after which the node gives
          up on it (it ends ``failed``, or is retried, and its slot is freed). With only one of
          them set, the other is that limit plus ``cancel_grace_s``.
        - ``retry``: ``Retry(...)`` to retry failures; the default is at most once.
        - ``isolated``: run it in a pool worker process, never on the node's event loop: for
          CPU-heavy or untrusted code, a plain ``def`` (or an ``async def`` that must not share
          the loop). Its soft limit raises ``SoftTimeLimitExceeded`` inside it, its hard limit
          kills the worker. It must be a module-level function (the zygote imports it).
        - ``concurrency_key``: a key built from the arguments (``"vm:{vm_id}"``); at most
          ``concurrency_limit`` (default 1) jobs with the same key run at once, across every
          node. A limit without a key limits this job as a whole.
        - ``rate_limit``: at most this many starts per period, across every node (``"100/m"``,
          ``"20/s"``), for this job, or for every job sharing ``rate_limit_key``.
        - ``durable``: the job resumes after its node dies instead of ending ``lost``: it runs
          again, even with no retries left, and its completed steps (``ctx.step``) return
          their stored results instead of running again. ``ctx.sleep`` and ``ctx.wait_for``
          park it (it gives back its slot). See "Durable jobs" in the README.
        """

        def register(f: Callable[P, Any]) -> JobDef[P, R]:
            return register_job(
                self.registry, f, name=name, queue=queue, priority=priority, timeout=timeout,
                soft_timeout=soft_timeout, retry=retry, isolated=isolated,
                concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
                rate_limit=rate_limit, rate_limit_key=rate_limit_key, durable=durable,
            )  # fmt: skip

        return register(fn) if fn is not None else register

    def preload(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Declare a preload hook: run once in the pool's zygote, before workers are forked.

        Load read-only data the isolated jobs share (a model, a big table) into a module
        global. Every worker shares those pages copy-on-write, so keep the data in a few large
        buffers (bytes, numpy arrays, mmap) rather than millions of small Python objects, whose
        reference counts would dirty, and so copy, their pages in every worker. Hooks run in
        declaration order, before the zygote imports the isolated jobs' modules (a hook may set
        up what they need, as ``django.setup()`` does), never in the node process itself.
        """
        _check_pool_hook("preload", fn)
        self.preloads.append(fn)
        return fn

    def after_isolated_job(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Declare a teardown hook: run in the pool after each isolated job, whatever its outcome.

        It runs in the worker that ran the job, before the job's outcome is sent, to release
        what one job must not leave to the next (``asyncjobs.django`` closes Django's database
        connections this way). It also runs once in the zygote, after the preload hooks and
        before any worker is forked, so that nothing a preload opened is inherited. It never
        runs in the node process. A hook that raises is printed on the worker's stderr and the
        worker is replaced after its job, whose outcome stands.
        """
        _check_pool_hook("after_isolated_job", fn)
        self.teardowns.append(fn)
        return fn

    def on_event(self, *kinds: str) -> Callable[[H], H]:
        """Declare a lifecycle hook: an ``async def`` called with an ``Event`` for each of
        ``kinds`` (``job_started``, ``job_finished``, ``job_failed``, ``job_retrying``,
        ``node_started``, ``node_stopping``) on every node of this app::

            @app.on_event("job_failed")
            async def report(event: Event) -> None:
                await log_service.send(event.name, event.error)

        The node never waits for a hook: each hook has its own queue of events and its own
        task, every call is time-boxed (``hook_timeout_s``), and errors are logged, never
        raised. A hook that falls far behind loses events (counted in the metrics).
        """

        def register(fn: H) -> H:
            check_hook(kinds, fn)
            self.hooks.append((frozenset(kinds), fn))
            return fn

        return register

    def schedule(
        self,
        name: str,
        job: str | JobDef[Any, Any],
        /,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str = "UTC",
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        missed: str = "latest",
        max_catchup: int = DEFAULT_MAX_CATCHUP,
        overlap: str = "allow",
        misfire_grace: timedelta | float = DEFAULT_MISFIRE_GRACE_S,
    ) -> ScheduleDef:
        """Declare a recurring schedule: ``job`` runs with these arguments at each fire time.

        - ``cron``: a five-field expression, evaluated in ``tz`` (an IANA name, default UTC),
          like Debian's cron, daylight-saving transitions included (see README). Or
        - ``every``: an interval (timedelta or seconds); fire times are whole multiples of it
          since the Unix epoch, UTC.
        - ``missed``: fire times missed while no node ran: ``skip``, ``latest`` (default: run
          the latest once) or ``all`` (up to ``max_catchup``). A fire time handled later than
          ``misfire_grace`` (60 s) counts as missed.
        - ``overlap``: when the previous run is unfinished: ``allow`` (default), ``skip``, or
          ``queue`` (it waits for the previous run; at most one waits).

        Every node serving the job's queue fires the schedule; each fire time becomes one job.
        Mistakes (a bad expression, an unknown time zone or job, a non-positive interval,
        arguments that do not encode) raise ``ScheduleDefinitionError`` here.
        """
        try:
            definition = self._definition(job)
        except UnknownJobError as exc:
            raise ScheduleDefinitionError(str(name), str(exc)) from None
        if name in self.schedules:
            raise ScheduleDefinitionError(name, "a schedule with this name is already declared")
        call = Signature(definition.name, tuple(args), dict(kwargs or {}), queue, priority)
        template = prepare(call, definition, new_id(), 0.0, self._settings.max_payload_bytes)
        defn = make_schedule(
            name, definition.name, cron=cron, every=every, tz=tz, args=tuple(args),
            kwargs=dict(kwargs or {}), queue=queue, priority=priority, missed=missed,
            max_catchup=max_catchup, overlap=overlap, misfire_grace=misfire_grace,
            template=template,
        )  # fmt: skip
        self.schedules[name] = defn
        return defn

    def signature(self, job: str | JobDef[Any, Any], *args: Any, **kwargs: Any) -> Signature:
        """A signature for ``enqueue_many`` by job name (or definition)."""
        return Signature(self._definition(job).name, args, kwargs)


def _check_pool_hook(kind: str, fn: Any) -> None:
    if not callable(fn) or "<" in getattr(fn, "__qualname__", "<"):
        what = kind.replace("_", " ")
        raise ConfigurationError(
            kind, fn, f"a {what} hook is a module-level function the zygote imports"
        )
