"""MemoryStore: the Store protocol in process memory, for tests and quick starts.

Same semantics as PostgresStore (the conformance suite checks both): unique keys, fencing,
scheduled jobs, cancel requests, events. Nothing persists and nothing is shared between
processes, so it suits one process only. Events are delivered on the next loop iteration, as a
NOTIFY would be, never from inside the call that caused them.

Each area of the Store protocol is a mixin in asyncjobs.store.mem, over the shared state of
mem/state.py; this module composes them. _claim_args stays here because it reads
MAX_INPUT_BYTES as this module's global at call time, where the tests patch it.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import anyio.lowlevel
import orjson

from ..serialization import decode_args
from .base import MAX_INPUT_BYTES, EventHandler
from .mem.claims import ClaimsMixin
from .mem.counting import CountingMixin
from .mem.jobs import JobsMixin
from .mem.monitoring import MonitoringMixin
from .mem.nodes import NodesMixin
from .mem.schedules import SchedulesMixin
from .mem.state import _Job
from .mem.steps import StepsMixin
from .mem.workflows import WorkflowsMixin


@dataclass
class MemoryStore(
    JobsMixin,
    NodesMixin,
    ClaimsMixin,
    SchedulesMixin,
    WorkflowsMixin,
    StepsMixin,
    CountingMixin,
    MonitoringMixin,
):
    """Jobs in a dict. ``MemoryStore()`` needs no setup; ``migrate`` is a no-op."""

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def migrate(self) -> list[str]:
        await anyio.lowlevel.checkpoint()
        return []

    def _claim_args(self, job: _Job) -> bytes | None:
        """The job's arguments, with its parents' results first if it takes them."""
        if job.pass_results is None:
            return job.args
        results = []
        raw: list[bytes] = []
        for parent_id in self._parents.get(job.id, ()):
            parent = self.jobs.get(parent_id)
            data = parent.result if parent is not None else None
            raw.append(data or b"null")
            results.append(None if data is None else orjson.loads(data))
        if sum(len(parent_json) for parent_json in raw) > MAX_INPUT_BYTES:
            return None  # the node fails the step, as with Postgres
        first = (results[0] if results else None) if job.pass_results == "one" else results
        args, kwargs = decode_args(job.args)
        return orjson.dumps([[first, *args], kwargs])

    # -- events --------------------------------------------------------------------------------

    async def listen(
        self,
        handler: EventHandler,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._handlers.append(handler)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._handlers.remove(handler)
