"""Calling the app from synchronous code (``task.delay()`` from a Django view, a script, or a
thread pool): asyncjobs is async, and this is its one thin synchronous facade.

When the app runs in an event loop of another thread (``async with app:`` in a service, or
the node), a blocking call runs there and waits for it. When the app is not running, the
bridge starts a producer twin of it (same settings and store, no node) in an event loop of
its own thread, on first use, and stops it at exit or ``app.close()``.

In the thread of the loop the app runs in (an ``async def`` task, an async view of a service
that embeds the app), nothing may block: ``delay()`` and ``apply_async()`` check their
arguments at once, return the handle with the job's id, and write the job in the background
(``write_soon``); ``get()`` returns an awaitable (``await result.get(timeout=)``). A blocking
call from a thread that runs another event loop would block that loop, so it is refused with
a sentence naming the awaitable form (``await task.adelay(...)``). A call inside a pool
worker is refused too: a worker has no database access.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import IsolationError
from ..pool import worker as pool_worker
from ..setting_values import MEMORY_DSN

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("asyncjobs")
T = TypeVar("T")
STOP_TIMEOUT_S = 30.0


class SyncBridge:
    def __init__(self, app: App) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.home: asyncio.AbstractEventLoop | None = None  # the loop the app runs in, if any
        self._loop: asyncio.AbstractEventLoop | None = None  # the twin's
        self._twin: App | None = None
        self._writes: set[asyncio.Task[Any]] = set()  # write_soon's, until done

    def in_home_loop(self) -> bool:
        """True when called in the thread of the running loop the app itself runs in."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return loop is self.home

    def write_soon(self, what: str, write: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``write`` (a job's or a workflow's write) as a task of the app's loop, kept
        until it is done; ``flush`` (at the app's stop) waits for the ones still going."""
        task = asyncio.get_running_loop().create_task(write, name=f"asyncjobs {what}")
        self._writes.add(task)
        task.add_done_callback(self._written)
        return task

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Also raised by the handle's get(); logged here for a caller that never asks.
            log.error("%s failed: %s", task.get_name(), task.exception())

    async def flush(self) -> None:
        """Wait for the background writes still going (before the app stops)."""
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def call(self, what: str, use: Callable[[App], Coroutine[Any, Any, T]]) -> T:
        """Run ``use(app)`` on the app's loop (or the twin's) and wait for it. ``what``
        names the call for the errors."""
        if pool_worker.IN_WORKER:
            raise IsolationError(
                f"{what} was called in a pool worker (a plain def task runs there), which has "
                "no database access. Chain the follow-up instead (a.s() | b.s()), or make the "
                "task async def"
            )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"{what} blocks, and it was called from async code (a running event loop), "
                "which it would stall; await its awaitable form instead "
                "(await task.adelay(...), await task.aapply_async(...), await result.aget())"
            )
        home = self.home
        if home is not None and home.is_running():
            return asyncio.run_coroutine_threadsafe(use(self._app), home).result()
        loop, twin = self._started(what)
        return asyncio.run_coroutine_threadsafe(use(twin), loop).result()

    def _started(self, what: str) -> tuple[asyncio.AbstractEventLoop, App]:
        with self._lock:
            if self._loop is None or self._twin is None:
                from ..app import App

                source = self._app
                if source._store_override is not None or source.settings.dsn == MEMORY_DSN:
                    # A twin would have a store of its own: what it enqueued, nothing would run.
                    raise RuntimeError(
                        f"{what} was called while the app is not running, and its store is "
                        "in-memory, which only the app itself can reach; start the app "
                        "(async with app:) and call from another thread, await the awaitable "
                        "form (await task.adelay(...)), or set a postgresql:// DSN"
                    )
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="asyncjobs-sync-bridge", daemon=True
                ).start()
                twin = App(settings=source.settings)
                twin.registry.update(source.registry)
                try:
                    asyncio.run_coroutine_threadsafe(twin.start(node=False), loop).result()
                except BaseException:
                    loop.call_soon_threadsafe(loop.stop)
                    raise
                self._loop, self._twin = loop, twin
                atexit.register(self.close)
            return self._loop, self._twin

    def close(self) -> None:
        """Stop the twin (writing what it has buffered) and its loop."""
        with self._lock:
            loop, twin, self._loop, self._twin = self._loop, self._twin, None, None
        if loop is None or twin is None:
            return
        atexit.unregister(self.close)
        try:
            asyncio.run_coroutine_threadsafe(twin.stop(), loop).result(STOP_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
