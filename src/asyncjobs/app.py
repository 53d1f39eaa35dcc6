"""App: the job registry, settings, the enqueue/result/cancel API, and embedded start/stop.

An app is declared once (usually at module level, so a node can import it), its jobs are
registered with ``@app.job(...)``, and it is started where it is used:

- ``async with app:`` runs the node inside the caller's event loop (embedded use);
- ``await app.start(node=False)`` only connects, for a service that enqueues and waits;
- ``asyncjobs node --app module:app`` runs it as a standalone process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, ParamSpec, TypeVar, overload

import anyio

from .admin import DEFAULT_PURGE_STATES, check_queue, purge, purge_states
from .clock import Clock, SystemClock
from .enqueue import EnqueueBatcher, with_retries
from .errors import (
    ClosedError,
    ConfigurationError,
    InvalidArgumentError,
    InvalidJobOptionError,
    JobCancelledError,
    JobNotFoundError,
    NotStartedError,
    ResultTimeoutError,
    ScheduleDefinitionError,
    StoreUnavailableError,
    UnknownJobError,
    WorkflowError,
    WorkflowNotFoundError,
)
from .ids import new_id, new_ids
from .jobs import (
    JobDef,
    JobId,
    JobRecord,
    JobState,
    Retry,
    Signature,
    coerce_job_id,
    iter_signatures,
    register_job,
)
from .node.hooks import Hook, check_hook
from .prepare import prepare, prepare_bulk
from .results import ResultWaiters, result_of
from .schedules import DEFAULT_MAX_CATCHUP, DEFAULT_MISFIRE_GRACE_S, ScheduleDef, make_schedule
from .settings import MEMORY_DSN, Settings
from .storable import text_problem
from .store.base import Store, StoreEvent
from .workflows import (
    MAX_FAILURES_SHOWN,
    Item,
    Workflow,
    WorkflowId,
    WorkflowStatus,
    build,
    prepare_workflow,
    status_from,
)

log = logging.getLogger("asyncjobs")

P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H", bound=Callable[..., Awaitable[None]])

RESULT_RECHECK_S = 2.0  # result() re-reads the job this often, in case a NOTIFY was missed
BULK_THRESHOLD = 200  # from this many jobs (without unique keys) enqueue_many uses COPY
MAX_REASON_CHARS = 1000  # a cancel reason


class App:
    """A set of jobs and the settings to run them.

    ``App()`` reads ``ASYNCJOBS_*`` environment variables; keyword arguments override them
    (``App(dsn=..., concurrency=50)``); ``App(settings=Settings(...))`` uses exactly those
    settings. ``store=`` injects a store (for example ``MemoryStore()`` in tests).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        self._settings = settings
        self._store_override = store
        self.clock: Clock = clock or SystemClock()
        self.registry: dict[str, JobDef[Any, Any]] = {}
        self.schedules: dict[str, ScheduleDef] = {}
        self.preloads: list[Callable[[], Any]] = []
        self.hooks: list[tuple[frozenset[str], Hook]] = []
        self._state = "new"  # new -> started -> stopped (-> started again ...)
        self._new_run()

    def _new_run(self) -> None:
        """Fresh state for one run (start to stop): a stopped app may be started again, in
        another event loop too, so nothing of a previous run's loop is kept."""
        self._pool: Any = None  # ProcessPool, only when isolated jobs are declared
        self._store: Store | None = None
        self._batcher: EnqueueBatcher | None = None
        self._node: Any = None  # Node, imported lazily (the node is optional for producers)
        self._services: asyncio.Task[None] | None = None
        self._waiters = ResultWaiters()
        self._failure: BaseException | None = None
        self._listening = False
        self._listen_wanted = asyncio.Event()
        self._listen_ready: asyncio.Future[None] | None = None

    # -- declaration ---------------------------------------------------------------------------

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
        """

        def register(f: Callable[P, Any]) -> JobDef[P, R]:
            return register_job(
                self.registry, f, name=name, queue=queue, priority=priority, timeout=timeout,
                soft_timeout=soft_timeout, retry=retry, isolated=isolated,
                concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
                rate_limit=rate_limit, rate_limit_key=rate_limit_key,
            )  # fmt: skip

        return register(fn) if fn is not None else register

    def preload(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Declare a preload hook: run once in the pool's zygote, before workers are forked.

        Load read-only data the isolated jobs share (a model, a big table) into a module
        global. Every worker shares those pages copy-on-write, so keep the data in a few large
        buffers (bytes, numpy arrays, mmap) rather than millions of small Python objects, whose
        reference counts would dirty, and so copy, their pages in every worker. Hooks run in
        declaration order, never in the node process itself.
        """
        if not callable(fn) or "<" in getattr(fn, "__qualname__", "<"):
            raise ConfigurationError(
                "preload", fn, "a preload hook is a module-level function the zygote imports"
            )
        self.preloads.append(fn)
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

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise NotStartedError()
        return self._store

    @property
    def node(self) -> Any:
        """The embedded node, if this app runs one."""
        return self._node

    async def start(self, *, node: bool = True) -> None:
        """Connect, and (unless ``node=False``) start a node in this event loop.

        Raises ``StoreUnavailableError`` with a sentence when the database cannot be reached.
        """
        if self._state == "started":
            return
        if self._state == "stopped":
            self._new_run()
        import_plugins(self._settings.plugins)
        store = self._store_override or make_store(self._settings)
        if node:
            # Before any database connection exists: nothing the zygote could inherit.
            self._pool = await start_pool(self._settings, self.registry, self.preloads)
        try:
            await store.open()
            if self._settings.migrate_on_start:
                await store.migrate()
            self._store = store
            self._batcher = EnqueueBatcher(store, self._settings.enqueue_batch_size)
            if node:
                from .node.node import Node

                self._node = Node(self, store, self._settings, self._pool)
                if self._node.metrics is not None:
                    self._node.metrics.start()  # now: a port in use fails start()
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            self._services = loop.create_task(self._run_services(ready))
            await ready
        except BaseException:
            if self._node is not None and self._node.metrics is not None:
                self._node.metrics.stop()
            self._store = None
            self._node = None
            await store.close()
            await self._close_pool()
            raise
        self._state = "started"

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _run_services(self, ready: asyncio.Future[None]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                if self._node is not None:
                    await tg.start(self.store.listen, self._on_event)
                    self._listening = True
                    await tg.start(self._node.run)
                    ready.set_result(None)
                    await self._node.wait_stopped()
                    tg.cancel_scope.cancel()
                else:
                    ready.set_result(None)
                    await self._serve_listen_requests(tg)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                self._failure = exc
                log.critical("asyncjobs services failed; the app stops", exc_info=exc)
                self._waiters.wake_all()
            raise

    async def _serve_listen_requests(self, tg: anyio.abc.TaskGroup) -> None:
        """A producer listens only once something waits for a result: otherwise it would
        receive (and discard) a notification for every job anyone enqueues."""
        while True:
            await self._listen_wanted.wait()
            self._listen_wanted.clear()
            request = self._listen_ready
            try:
                await tg.start(self.store.listen, self._on_event)
            except Exception as exc:  # reported to the waiting caller; the next one retries
                if request is not None and not request.done():
                    request.set_exception(exc)
                continue
            self._listening = True
            if request is not None and not request.done():
                request.set_result(None)
            await anyio.sleep_forever()

    async def _ensure_listening(self) -> None:
        if self._listening:
            return
        request = self._listen_ready
        if request is None or (request.done() and request.exception() is not None):
            request = self._listen_ready = asyncio.get_running_loop().create_future()
            self._listen_wanted.set()
        await asyncio.shield(request)

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop the node (draining running jobs for up to ``grace`` seconds, default
        ``shutdown_grace_s``), write what is buffered, and disconnect."""
        state, self._state = self._state, "stopped"
        if state != "started":
            return
        try:
            if self._batcher is not None:
                await self._batcher.drain()
            services = self._services
            if self._node is not None:
                self._node.stop(grace)
                if services is not None:
                    await asyncio.wait([services])
            if services is not None and not services.done():
                services.cancel()
                await asyncio.wait([services])
        finally:
            self._waiters.wake_all()
            await self._close_pool()
            store, self._store = self._store, None
            if store is not None:
                await store.close()
        if self._failure is not None:
            raise self._failure

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _check_started(self) -> Store:
        if self._state != "started" or self._store is None:
            raise ClosedError() if self._state == "stopped" else NotStartedError()
        if self._failure is not None:
            raise ClosedError(f"the app stopped after a failure: {self._failure}")
        return self._store

    # -- producing -------------------------------------------------------------------------------

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
        """Enqueue one job and return its id once it is durably stored.

        ``run_at`` (an aware datetime) or ``delay`` (seconds or a timedelta) schedule it for
        later. ``queue`` and ``priority`` override the job's own. With ``unique_key``, if an
        unfinished job already holds that key, nothing is inserted and its id is returned.
        With ``after`` (job ids), it waits until every one of those jobs has succeeded, and
        is cancelled (``upstream_failed``) if one fails. ``concurrency_key`` and
        ``concurrency_limit`` override the job's own. Bad arguments raise before anything is
        written. Concurrent calls are coalesced into one INSERT per round trip.
        """
        definition = self._definition(job)
        sig = Signature(definition.name, args, kwargs, queue, priority, run_at, delay,
                        unique_key, False, concurrency_key, concurrency_limit)  # fmt: skip
        return await self._enqueue(definition, sig, after, None)

    async def _enqueue(
        self,
        definition: JobDef[Any, Any],
        sig: Signature,
        after: Sequence[JobId | str] | None,
        workflow_id: JobId | None,
    ) -> JobId:
        """Prepare and write one job (``enqueue`` and ``JobContext.enqueue``)."""
        store = self._check_started()
        assert self._batcher is not None
        new = prepare(
            sig, definition, new_id(), self.clock.time(), self._settings.max_payload_bytes
        )
        if after is None:
            return await self._batcher.submit(new)
        if isinstance(after, str | bytes) or not isinstance(after, Sequence):
            raise InvalidJobOptionError(sig.name, "after", after, "use a list of job ids")
        try:
            deps = [coerce_job_id(d) for d in after]
        except ValueError as exc:
            raise InvalidJobOptionError(sig.name, "after", after, str(exc)) from None
        if not deps:
            return await self._batcher.submit(new)
        if sig.unique_key is not None:
            raise InvalidJobOptionError(
                sig.name, "unique_key", sig.unique_key, "a job with after= cannot have one"
            )
        return await with_retries(partial(store.enqueue_after, new, deps, workflow_id=workflow_id))

    async def enqueue_many(self, signatures: Sequence[Signature]) -> list[JobId]:
        """Enqueue many jobs in one transaction (all or none) and return their ids in order.

        Every signature is validated and encoded before anything is written. Large batches use
        COPY; batches with unique keys use one INSERT.
        """
        store = self._check_started()
        items = iter_signatures(signatures)
        now = self.clock.time()
        ids = new_ids(len(items))
        limit = self._settings.max_payload_bytes
        if len(items) >= BULK_THRESHOLD and all(
            s.unique_key is None
            and s.concurrency_key is None
            and s.concurrency_limit is None
            and self._definition(s.name).limits is None
            for s in items
        ):
            # COPY, preparing each job while the previous ones stream (see Store.enqueue_bulk).
            try:
                await store.enqueue_bulk(prepare_bulk(items, ids, now, limit, self._definition))
                return ids
            except StoreUnavailableError as exc:
                # The COPY may have committed before its answer was lost. Write the same jobs
                # (same ids) the other way, which skips those that exist.
                log.warning("enqueue_many's COPY failed (%s); writing again by INSERT", exc.why)
        jobs = [
            prepare(sig, self._definition(sig.name), job_id, now, limit)
            for sig, job_id in zip(items, ids, strict=True)
        ]
        return await with_retries(partial(store.enqueue, jobs))

    # -- workflows ---------------------------------------------------------------------------

    async def submit(self, workflow: Workflow | Item, *, name: str | None = None) -> WorkflowId:
        """Submit a workflow (a ``Workflow``, chain, group, chord or signature) and return its
        id once every step and edge is stored, in one transaction.

        The whole workflow is validated first: an unknown job, an argument that does not
        encode, a dependency on a missing key or a cycle raises ``WorkflowError`` naming the
        step, and nothing is written. Steps with dependencies wait; the rest start at once.
        """
        store = self._check_started()
        wf = build(workflow, name)
        if wf.submitted:
            raise WorkflowError(
                None, f"this Workflow is already submitted (as {wf.id}); build a new one to "
                "run it again",
            )  # fmt: skip
        new = prepare_workflow(
            wf, self._definition, self.clock.time(), self._settings.max_payload_bytes
        )
        # A retry after a lost connection writes nothing twice: the workflow's id is fixed.
        await with_retries(partial(store.submit_workflow, new))
        wf.submitted = True
        return new.id

    async def workflow_status(self, workflow_id: WorkflowId | str) -> WorkflowStatus:
        """Counts of the workflow's jobs per state, its state, and the steps that failed."""
        store = self._check_started()
        wid = coerce_job_id(workflow_id)
        info = await store.workflow_info(wid)
        if info is None:
            raise WorkflowNotFoundError(wid)
        failures = await store.workflow_failures(wid, MAX_FAILURES_SHOWN)
        return status_from(info, failures)

    async def cancel_workflow(
        self, workflow_id: WorkflowId | str, *, reason: str = "workflow cancelled"
    ) -> WorkflowStatus:
        """Cancel every step not finished: waiting and queued ones at once, running ones as
        ``cancel`` does. Returns the status after the request."""
        store = self._check_started()
        check_reason("cancel_workflow", reason)
        wid = coerce_job_id(workflow_id)
        if await store.workflow_info(wid) is None:
            raise WorkflowNotFoundError(wid)
        await store.cancel_workflow(wid, reason, self.clock.time())
        return await self.workflow_status(wid)

    async def workflow_result(
        self, workflow_id: WorkflowId | str, *, timeout: float | None = None
    ) -> Any:
        """Wait for the workflow's last steps and return their result: the last step's of a
        chain or chord, a list (in order) if several steps end it, as a group does. Raises as
        ``result`` does for the first of those steps that did not succeed."""
        store = self._check_started()
        wid = coerce_job_id(workflow_id)
        info = await store.workflow_info(wid)
        if info is None:
            raise WorkflowNotFoundError(wid)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        results = []
        for sink in info.sinks:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                results.append(await self.result(sink, timeout=left))
            except JobCancelledError as exc:
                if exc.reason not in ("upstream_failed", "upstream_cancelled"):
                    raise
                # Report the cause, not its echo: the first step that failed upstream.
                for failure in await store.workflow_failures(wid, 1):
                    record = await store.get(failure.id)
                    if record is not None:
                        result_of(record)
                raise
        return results[0] if len(results) == 1 else results

    def _definition(self, job: str | JobDef[Any, Any]) -> JobDef[Any, Any]:
        if isinstance(job, JobDef):
            name = job.name
        elif isinstance(job, str):
            name = job
        else:
            raise TypeError(
                f"expected a job name or a registered job, got {type(job).__name__}; register "
                "the function with @app.job first"
            )
        definition = self.registry.get(name)
        if definition is None:
            raise UnknownJobError(name, list(self.registry))
        return definition

    # -- inspecting and controlling ----------------------------------------------------------

    async def get(self, job_id: JobId | str) -> JobRecord:
        """The job as stored now. Raises ``JobNotFoundError`` if there is none."""
        store = self._check_started()
        job_id = coerce_job_id(job_id)
        record = await store.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record

    async def cancel(
        self, job_id: JobId | str, *, reason: str = "cancelled by request"
    ) -> JobState:
        """Cancel a job and return its state after the request.

        ``cancelled``: it will not run. ``running``: its node was told and cancels it within
        about a second (the job sees ``CancelledError`` at its next ``await``); it then ends
        ``cancelled``. A finished job is left alone and its final state is returned.
        """
        store = self._check_started()
        check_reason("cancel", reason)
        job_id = coerce_job_id(job_id)
        state = await store.cancel(job_id, reason, self.clock.time())
        if state is None:
            raise JobNotFoundError(job_id)
        return state

    async def retry(self, *job_ids: JobId | str) -> list[JobId]:
        """Queue failed or lost jobs again, for one more attempt; returns those re-queued.

        Jobs in other states are left alone, and so is a job whose unique key another
        unfinished job holds. In a workflow, the dependents its failure cancelled stay
        cancelled.
        """
        store = self._check_started()
        return await store.retry_jobs([coerce_job_id(j) for j in job_ids], self.clock.time())

    async def counts(self, queue: str | None = None, *, finished: bool = False) -> dict[str, int]:
        """How many jobs of ``queue`` (of every queue if None) are in each state.

        By default the unfinished states: ``scheduled``, ``waiting``, ``queued`` (parked jobs
        included) and ``running``, each counted through its own index, so the call stays
        cheap however much history is kept. With ``finished=True``, also ``succeeded``,
        ``failed``, ``cancelled`` and ``lost``: a count over the history, which costs as much
        as the history is long.
        """
        store = self._check_started()
        if queue is not None:
            check_queue("counts", queue)
        return await store.count_jobs(queue, bool(finished))

    async def purge(
        self, queue: str, *, states: str | Iterable[str] = DEFAULT_PURGE_STATES
    ) -> dict[str, int]:
        """Delete the jobs of ``queue`` in ``states`` (default: ``queued``), and return how
        many were deleted per state.

        Any state but ``running`` may be purged: ``scheduled``, ``waiting``, ``queued``, or
        finished ones. Running jobs are never touched (cancel them first), nor is a job a
        node is claiming at that instant. The dependents of a purged job that had not run
        are cancelled (``upstream_cancelled``); a caller waiting on a purged job's result
        gets ``JobNotFoundError``. Deletes in batches of 5,000, each its own transaction.
        """
        store = self._check_started()
        return await purge(store, check_queue("purge", queue), purge_states(states))

    async def result(self, job_id: JobId | str, *, timeout: float | None = None) -> Any:
        """Wait for a job to finish and return its result.

        Raises ``JobFailedError`` (with the error type, message and traceback),
        ``JobCancelledError``, ``JobLostError``, ``JobNotFoundError``, or
        ``ResultTimeoutError`` if it has not finished within ``timeout`` seconds (the job is
        not affected).
        """
        store = self._check_started()
        job_id = coerce_job_id(job_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await self._ensure_listening()
        while True:
            # Registered before reading the job (see results.py).
            future = self._waiters.register(job_id)
            try:
                record = await store.watch(job_id)
                if record is None:
                    raise JobNotFoundError(job_id)
                if record.state.is_terminal:
                    return result_of(record)
                if self._failure is not None or self._state != "started":
                    raise ClosedError("the app stopped while waiting for a result")
                wait = RESULT_RECHECK_S
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise ResultTimeoutError(job_id, timeout or 0.0)
                    wait = min(wait, remaining)
                with anyio.move_on_after(wait):
                    await future
            finally:
                self._waiters.discard(job_id, future)

    # -- events ------------------------------------------------------------------------------------

    def _on_event(self, event: StoreEvent) -> None:
        if event.kind == "finished":
            try:
                self._waiters.finished(coerce_job_id(event.value))
            except ValueError:
                return
        elif event.kind == "reconnected":
            self._waiters.wake_all()
        if self._node is not None:
            self._node.on_event(event)


def check_reason(call: str, reason: Any) -> None:
    """Raise ``InvalidArgumentError`` for a cancel reason that cannot be stored."""
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_CHARS:
        raise InvalidArgumentError(
            call, "reason", reason, f"use a string of 1 to {MAX_REASON_CHARS:,} characters"
        )
    if why := text_problem(reason):
        raise InvalidArgumentError(call, "reason", reason, why)


def import_plugins(modules: Sequence[str]) -> None:
    """Import the plug-in modules named in the settings, so that their jobs register."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                "plugins",
                name,
                f"the module cannot be imported ({exc}); check its name and "
                "that its package is installed or in the current directory",
            ) from None


async def start_pool(
    settings: Settings, registry: Mapping[str, JobDef[Any, Any]], preloads: list[Any]
) -> Any:
    """Start the process pool if the app declares isolated jobs; None otherwise."""
    from .pool.config import pool_config

    config = pool_config(settings, registry, preloads)
    if config is None:
        return None
    from .pool.pool import ProcessPool

    pool = ProcessPool(config)
    await pool.start()
    return pool


def make_store(settings: Settings) -> Store:
    """The store a settings object describes: ``memory://`` or a Postgres DSN."""
    if settings.dsn is None:
        raise ConfigurationError(
            "dsn",
            None,
            "no database is configured. Set ASYNCJOBS_DSN (or --dsn) to a URL like "
            "postgresql://user@host:5432/dbname, or to memory:// to try things out",
        )
    if settings.dsn == MEMORY_DSN:
        from .store.memory import MemoryStore

        return MemoryStore()
    from .store.postgres import PostgresStore

    return PostgresStore(settings)
