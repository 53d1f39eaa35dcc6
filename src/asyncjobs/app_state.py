"""What every part of ``App`` shares: its declarations, its settings and a run's state.

``App`` is put together from one mixin per kind of call (declaring.py, producing.py,
controlling.py, awaiting.py) over this base, and app.py adds starting and stopping. The
mixins read the state declared here, and of each other only ``_definition``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .clock import Clock
from .enqueue import EnqueueBatcher
from .errors import ClosedError, NotStartedError, UnknownJobError
from .jobs import JobDef
from .node.hooks import Hook
from .results import ResultWaiters
from .schedules import ScheduleDef
from .settings import Settings
from .store.base import Store
from .tracing import Tracing


class AppState:
    """The attributes of an ``App``, set by ``App.__init__`` (declarations) and
    ``App._new_run`` (one run's state)."""

    clock: Clock
    registry: dict[str, JobDef[Any, Any]]
    schedules: dict[str, ScheduleDef]
    preloads: list[Callable[[], Any]]
    teardowns: list[Callable[[], Any]]  # after_isolated_job hooks
    hooks: list[tuple[frozenset[str], Hook]]
    _settings: Settings
    _tracing: Tracing | None  # made by start() when Settings.tracing is on
    _state: str  # new -> started -> stopped (-> started again ...)
    _store: Store | None
    _batcher: EnqueueBatcher | None
    _waiters: ResultWaiters
    _failure: BaseException | None
    _listening: bool
    _listen_wanted: asyncio.Event
    _listen_ready: asyncio.Future[None] | None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise NotStartedError()
        return self._store

    def _check_started(self) -> Store:
        if self._state != "started" or self._store is None:
            raise ClosedError() if self._state == "stopped" else NotStartedError()
        if self._failure is not None:
            raise ClosedError(f"the app stopped after a failure: {self._failure}")
        return self._store

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
