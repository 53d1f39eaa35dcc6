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
from collections.abc import Callable
from typing import Any

import anyio

from .awaiting import RESULT_RECHECK_S, Awaiting
from .clock import Clock, SystemClock
from .controlling import MAX_REASON_CHARS, Controlling, check_reason
from .declaring import Declaring
from .enqueue import EnqueueBatcher
from .jobs import JobDef, coerce_job_id
from .node.hooks import Hook
from .producing import BULK_THRESHOLD, Producing
from .results import ResultWaiters
from .schedules import ScheduleDef
from .settings import Settings
from .startup import import_plugins, make_store, start_pool
from .store.base import Store, StoreEvent
from .tracing import Tracing

log = logging.getLogger("asyncjobs")


class App(Declaring, Producing, Controlling, Awaiting):
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
        self.teardowns: list[Callable[[], Any]] = []
        self.hooks: list[tuple[frozenset[str], Hook]] = []
        self._tracing = None
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
        # First: without opentelemetry-api installed, the start fails with a sentence.
        self._tracing = Tracing() if self._settings.tracing else None
        import_plugins(self._settings.plugins)
        store = self._store_override or make_store(self._settings)
        if node:
            # Before any database connection exists: nothing the zygote could inherit.
            self._pool = await start_pool(
                self._settings, self.registry, self.preloads, self.teardowns
            )
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


__all__ = [  # what other modules import from here
    "BULK_THRESHOLD",
    "MAX_REASON_CHARS",
    "RESULT_RECHECK_S",
    "App",
    "check_reason",
    "import_plugins",
    "make_store",
    "start_pool",
]
