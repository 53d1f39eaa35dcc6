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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, overload

import anyio
import orjson

from .clock import Clock, SystemClock, to_timestamp
from .enqueue import EnqueueBatcher
from .errors import (
    ClosedError,
    ConfigurationError,
    InvalidJobOptionError,
    JobCancelledError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    NotStartedError,
    ResultTimeoutError,
    UnknownJobError,
)
from .ids import new_id, new_ids
from .jobs import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    JobDef,
    JobId,
    JobRecord,
    JobState,
    Retry,
    Signature,
    coerce_job_id,
    iter_signatures,
    validate_job_options,
)
from .serialization import STRICT_JSON, encode_args
from .settings import MEMORY_DSN, Settings, check_queue_name
from .store.base import NewJob, Store, StoreEvent

log = logging.getLogger("asyncjobs")

P = ParamSpec("P")
R = TypeVar("R")

RESULT_RECHECK_S = 2.0  # result() re-reads the job this often, in case a NOTIFY was missed
MAX_UNIQUE_KEY_CHARS = 512
BULK_THRESHOLD = 200  # from this many jobs (without unique keys) enqueue_many uses COPY
_NO_OPTIONS = (None, None, None, None, None)  # Signature fields queue..unique_key, all unset
_NO_KWARGS: dict[str, Any] = {}  # only ever encoded, never handed to a job


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
        self._store: Store | None = None
        self._batcher: EnqueueBatcher | None = None
        self._node: Any = None  # Node, imported lazily (the node is optional for producers)
        self._services: asyncio.Task[None] | None = None
        self._waiters: dict[JobId, set[asyncio.Future[None]]] = {}
        self._state = "new"  # new -> started -> stopped
        self._failure: BaseException | None = None
        self._listening = False
        self._listen_wanted = asyncio.Event()
        self._listen_ready: asyncio.Future[None] | None = None

    # -- declaration ---------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    def configure(self, **changes: Any) -> None:
        """Change settings before the app starts (the CLI applies its flags this way)."""
        if self._state != "new":
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
    ) -> Callable[[Callable[P, Awaitable[R]]], JobDef[P, R]]: ...

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
    ) -> JobDef[P, R] | Callable[[Callable[P, Awaitable[R]]], JobDef[P, R]]:
        """Register an ``async def`` as a job.

        - ``name``: defaults to the function's name; must be unique in the app.
        - ``queue``: defaults to ``"default"``. ``priority``: higher runs first (default 0).
        - ``soft_timeout``: seconds after which the job is cancelled (``CancelledError`` at its
          next ``await``) so it can clean up. ``timeout``: seconds after which the node gives
          up on it (it ends ``failed``, or is retried, and its slot is freed). With only one of
          them set, the other is that limit plus ``cancel_grace_s``.
        - ``retry``: ``Retry(...)`` to retry failures; the default is at most once.
        """

        def register(f: Callable[P, Awaitable[R]]) -> JobDef[P, R]:
            job_name = name if name is not None else getattr(f, "__name__", repr(f))
            job_queue = queue if queue is not None else "default"
            validate_job_options(
                job_name,
                f,
                queue=job_queue,
                priority=priority,
                timeout=timeout,
                soft_timeout=soft_timeout,
                retry=retry,
            )
            existing = self.registry.get(job_name)
            if existing is not None and existing.fn is not f:
                from .errors import JobDefinitionError

                raise JobDefinitionError(
                    job_name,
                    f"{_where(f)} and {_where(existing.fn)} both use this name; pass "
                    "name=... to one of them",
                )
            definition = JobDef(
                f,
                name=job_name,
                queue=job_queue,
                priority=priority,
                timeout=timeout,
                soft_timeout=soft_timeout,
                retry=retry,
            )
            self.registry[job_name] = definition
            return definition

        return register(fn) if fn is not None else register

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
            raise ClosedError()
        store = self._store_override or make_store(self._settings)
        await store.open()
        try:
            if self._settings.migrate_on_start:
                await store.migrate()
            self._store = store
            self._batcher = EnqueueBatcher(store, self._settings.enqueue_batch_size)
            if node:
                from .node.node import Node

                self._node = Node(self, store, self._settings)
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._services = asyncio.get_running_loop().create_task(self._run_services(ready))
            await ready
        except BaseException:
            self._store = None
            self._node = None
            await store.close()
            raise
        self._state = "started"

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
                self._wake_all_waiters()
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
        if self._state != "started":
            self._state = "stopped"
            return
        self._state = "stopped"
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
            self._wake_all_waiters()
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
        **kwargs: Any,
    ) -> JobId:
        """Enqueue one job and return its id once it is durably stored.

        ``run_at`` (an aware datetime) or ``delay`` (seconds or a timedelta) schedule it for
        later. ``queue`` and ``priority`` override the job's own. With ``unique_key``, if an
        unfinished job already holds that key, nothing is inserted and its id is returned.
        Bad arguments raise before anything is written. Concurrent calls are coalesced into
        one INSERT per round trip.
        """
        self._check_started()
        assert self._batcher is not None
        sig = Signature(
            self._definition(job).name, args, kwargs, queue, priority, run_at, delay, unique_key
        )
        new = self._prepare(sig, new_id(), self.clock.time())
        return await self._batcher.submit(new)

    async def enqueue_many(self, signatures: Sequence[Signature]) -> list[JobId]:
        """Enqueue many jobs in one transaction (all or none) and return their ids in order.

        Every signature is validated and encoded before anything is written. Large batches use
        COPY; batches with unique keys use one INSERT.
        """
        store = self._check_started()
        items = iter_signatures(signatures)
        now = self.clock.time()
        ids = new_ids(len(items))
        if len(items) >= BULK_THRESHOLD and all(s.unique_key is None for s in items):
            # COPY, preparing each job while the previous ones stream (see Store.enqueue_bulk).
            await store.enqueue_bulk(self._prepare_bulk(items, ids, now))
            return ids
        return await store.enqueue(
            [self._prepare(sig, job_id, now) for sig, job_id in zip(items, ids, strict=True)]
        )

    def _prepare_bulk(
        self, items: Sequence[Signature], ids: list[JobId], now: float
    ) -> Iterator[NewJob]:
        """``_prepare`` for large batches, with the common case inlined.

        A signature without per-call options whose arguments encode cleanly is built here
        directly; anything else (options, a bad value, a null that may hide a NaN, an
        oversized payload) goes through ``_prepare`` and its full checks. At 20,000 jobs the
        function-call layers alone cost as much as the COPY.
        """
        limit = self._settings.max_payload_bytes
        definitions: dict[str, JobDef[Any, Any]] = {}
        make = tuple.__new__
        dumps = orjson.dumps
        for sig, job_id in zip(items, ids, strict=True):
            definition = definitions.get(sig.name)
            if definition is None:
                definition = definitions[sig.name] = self._definition(sig.name)
            kwargs = sig.kwargs
            if sig[3:] == _NO_OPTIONS and (not kwargs or type(kwargs) is dict):
                try:
                    payload = dumps((sig.args, kwargs or _NO_KWARGS), option=STRICT_JSON)
                except TypeError:
                    payload = b""
                if payload and len(payload) <= limit and b"null" not in payload:
                    yield make(
                        NewJob,
                        (
                            job_id,
                            definition.name,
                            definition.queue,
                            definition.priority,
                            "queued",
                            payload,
                            now,
                            definition.max_attempts,
                            None,
                        ),
                    )
                    continue
            yield self._prepare(sig, job_id, now, definition)

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

    def _prepare(
        self,
        sig: Signature,
        job_id: JobId,
        now: float,
        definition: JobDef[Any, Any] | None = None,
    ) -> NewJob:
        """Validate and encode one job; raises before anything is written."""
        if definition is None:
            definition = self._definition(sig.name)
        name = definition.name
        kwargs = sig.kwargs if type(sig.kwargs) is dict else dict(sig.kwargs)
        payload = encode_args(name, sig.args, kwargs, self._settings.max_payload_bytes)
        if not sig.has_options:  # the common case: the job's own queue and priority, now
            return NewJob(
                job_id,
                name,
                definition.queue,
                definition.priority,
                "queued",
                payload,
                now,
                definition.max_attempts,
                None,
            )
        queue = sig.queue if sig.queue is not None else definition.queue
        priority = sig.priority if sig.priority is not None else definition.priority
        if sig.queue is not None:
            try:
                check_queue_name(queue)
            except ConfigurationError as exc:
                raise InvalidJobOptionError(name, "queue", queue, exc.why) from None
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not (PRIORITY_MIN <= priority <= PRIORITY_MAX)
        ):
            raise InvalidJobOptionError(
                name, "priority", priority, f"use a whole number in {PRIORITY_MIN}..{PRIORITY_MAX}"
            )
        run_at = self._run_at(name, sig.run_at, sig.delay, now)
        if sig.unique_key is not None and (
            not isinstance(sig.unique_key, str)
            or not 0 < len(sig.unique_key) <= MAX_UNIQUE_KEY_CHARS
        ):
            raise InvalidJobOptionError(
                name,
                "unique_key",
                sig.unique_key,
                f"use a non-empty string of at most {MAX_UNIQUE_KEY_CHARS} characters",
            )
        return NewJob(
            job_id,
            name,
            queue,
            priority,
            "scheduled" if run_at > now else "queued",
            payload,
            run_at,
            definition.max_attempts,
            sig.unique_key,
        )

    @staticmethod
    def _run_at(
        name: str, run_at: datetime | None, delay: timedelta | float | None, now: float
    ) -> float:
        if run_at is not None and delay is not None:
            raise InvalidJobOptionError(name, "run_at", run_at, "give run_at or delay, not both")
        if run_at is not None:
            if not isinstance(run_at, datetime):
                raise InvalidJobOptionError(name, "run_at", run_at, "expected a datetime")
            try:
                return to_timestamp(run_at)
            except ValueError as exc:
                raise InvalidJobOptionError(name, "run_at", run_at, str(exc)) from None
        if delay is None:
            return now
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (0 <= seconds <= 10 * 365 * 86400)
        ):
            raise InvalidJobOptionError(
                name, "delay", delay, "use zero or more seconds (at most ten years)"
            )
        return now + seconds

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
        job_id = coerce_job_id(job_id)
        state = await store.cancel(job_id, reason, self.clock.time())
        if state is None:
            raise JobNotFoundError(job_id)
        return state

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
            # Registered before reading the job, so a "finished" event that arrives while the
            # read is in flight is not missed.
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(job_id, set()).add(future)
            try:
                record = await store.watch(job_id)
                if record is None:
                    raise JobNotFoundError(job_id)
                if record.state.is_terminal:
                    return _result_of(record)
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
                waiters = self._waiters.get(job_id)
                if waiters is not None:
                    waiters.discard(future)
                    if not waiters:
                        del self._waiters[job_id]

    # -- events ------------------------------------------------------------------------------------

    def _on_event(self, event: StoreEvent) -> None:
        if event.kind == "finished":
            try:
                job_id = coerce_job_id(event.value)
            except ValueError:
                return
            for future in self._waiters.get(job_id, ()):
                if not future.done():
                    future.set_result(None)
        elif event.kind == "reconnected":
            self._wake_all_waiters()
        if self._node is not None:
            self._node.on_event(event)

    def _wake_all_waiters(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _result_of(record: JobRecord) -> Any:
    if record.state is JobState.SUCCEEDED:
        return record.result
    if record.state is JobState.FAILED:
        raise JobFailedError(record.id, record.name, record.error)
    if record.state is JobState.CANCELLED:
        raise JobCancelledError(record.id, record.name, record.reason)
    raise JobLostError(record.id, record.name, record.reason)


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
