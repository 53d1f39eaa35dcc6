"""The node: fetch -> dispatch -> complete, with heartbeat, promoter and graceful shutdown.

One event loop runs everything. The long-lived services (fetcher, completer, heartbeat,
promoter) run in one anyio task group, so if one dies the node stops loudly instead of limping
on. Jobs are plain asyncio tasks outside that group: thousands of them, a few KB each.

Capacity is explicit: ``settings.concurrency`` for the node and an optional limit per queue.
The fetcher claims up to the free capacity of each queue in one round trip, and only from
queues that may have work (told by NOTIFY, by a claim that came back full, or by the poll).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ..clock import Clock
from ..ids import new_id
from ..jobs import ContextApp, JobDef, JobId, coerce_job_id
from ..schedules import ScheduleDef
from ..settings import Settings
from ..store.base import ClaimedJob, NodeInfo, Outcome, Store, StoreEvent
from ..tracing import Tracing, end_run
from ..version import __version__
from .completer import Completer
from .execution import (
    execute,
    inputs_too_large_outcome,
    stopped_outcome,
    unknown_job_outcome,
)
from .fetcher import Fetcher
from .heartbeat import beat, run_heartbeat
from .hooks import Hook, Hooks
from .isolated import execute_isolated
from .liveness import Liveness
from .metrics import NodeMetrics
from .promoter import Promoter
from .pruner import run_pruner
from .reaper import run_reaper
from .running import (
    STOP_CANCEL,
    STOP_SHUTDOWN,
    RunningJob,
)
from .scheduler import run_scheduler, served
from .stats import NodeStats
from .steps import StepHook
from .stopping import abandon, arm_deadlines, stop_job

if TYPE_CHECKING:
    from ..pool.pool import ProcessPool

log = logging.getLogger("asyncjobs.node")

HOOK_DRAIN_MAX_S = 10.0  # the longest a stopping node waits for its hooks' last events


class NodeApp(ContextApp, Protocol):
    """What a node needs from its app (``App`` is one): the jobs it may run, the schedules
    and hooks it serves, the clock, and what its jobs' contexts call back."""

    @property
    def registry(self) -> Mapping[str, JobDef[Any, Any]]: ...

    @property
    def schedules(self) -> Mapping[str, ScheduleDef]: ...

    @property
    def hooks(self) -> list[tuple[frozenset[str], Hook]]: ...

    @property
    def clock(self) -> Clock: ...


class Node:
    """Runs an app's coroutine jobs. Created and driven by ``App.start()`` / ``asyncjobs node``."""

    def __init__(
        self, app: NodeApp, store: Store, settings: Settings, pool: ProcessPool | None = None
    ) -> None:
        self.app = app
        self.pool = pool  # runs the isolated jobs, if the app declares any
        self.store = store
        self.settings = settings
        self.clock = app.clock
        self.id: JobId = new_id()
        self.info = NodeInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            queues=settings.queue_names,
            concurrency=settings.concurrency,
            durable=tuple(sorted(name for name, d in app.registry.items() if d.durable)),
        )
        self.running: dict[JobId, RunningJob] = {}
        self.step_hook: StepHook | None = None  # asyncjobs.testing's crashes, else nothing
        self.queue_limit = {q: (limit or settings.concurrency) for q, limit in settings.queues}
        self.queue_free = dict(self.queue_limit)
        self.completer = Completer(store, self.id)
        self.stats = NodeStats()  # written by the heartbeat
        self.promoter = Promoter(store, self.clock, settings.poll_interval_s)
        self.fetcher = Fetcher(
            self, store, self.clock, self.completer, list(self.queue_limit),
            settings.claim_batch_size, settings.poll_interval_s,
        )  # fmt: skip
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self._shutdown_grace = settings.shutdown_grace_s
        self._drain_scope: anyio.CancelScope | None = None
        self._abandoned: set[asyncio.Task[None]] = set()
        self.liveness = Liveness(settings.node_timeout_s, self._current_id)
        self.hooks = Hooks(app.hooks, settings.hook_timeout_s, self.id) if app.hooks else None
        self.metrics = (
            NodeMetrics(
                settings,
                running=lambda: len(self.running),
                workers=lambda: self.load()[1],
                buffered=lambda: self.completer.buffered,
                hook_events_dropped=lambda: self.hooks.dropped if self.hooks else 0,
            )
            if settings.metrics_port
            else None
        )
        self.tracing = Tracing() if settings.tracing else None

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until ``stop()``; then drain, flush and deregister."""
        await self.store.register_node(self.info)
        self.liveness.registered()
        log.info(
            "node %s started: queues %s, concurrency %d, store %s",
            self.id,
            ",".join(self.info.queues),
            self.settings.concurrency,
            self.store.description,
        )
        try:
            async with anyio.create_task_group() as services:
                if self.metrics is not None:
                    services.start_soon(self.metrics.watch_loop)
                if self.hooks is not None:
                    services.start_soon(self.hooks.run)
                    self.hooks.node_event("node_started")
                settings, store, current_id = self.settings, self.store, self._current_id
                services.start_soon(self.completer.run)
                services.start_soon(run_heartbeat, self, settings.heartbeat_interval_s)
                services.start_soon(self.promoter.run)
                services.start_soon(
                    run_reaper, store, current_id, settings.heartbeat_interval_s,
                    settings.node_timeout_s, self.liveness.may_reap,
                )  # fmt: skip
                services.start_soon(
                    run_pruner, store, current_id, settings.prune_interval_s,
                    settings.retention_s,
                )  # fmt: skip
                services.start_soon(
                    run_scheduler, store, self.clock, self.schedules(),
                    settings.poll_interval_s,
                )  # fmt: skip
                async with anyio.create_task_group() as fetching:
                    fetching.start_soon(self.fetcher.run)
                    task_status.started()
                    await self._stop.wait()
                    fetching.cancel_scope.cancel()  # stop claiming first
                    if self.hooks is not None:
                        self.hooks.node_event("node_stopping")
                await self._drain()
                with anyio.move_on_after(max(self.settings.connect_timeout_s, 5.0)):
                    await self.completer.wait_flushed()
                if self.completer.buffered:
                    log.error(
                        "node %s stops with %d job outcomes it could not write; the reaper "
                        "will treat those jobs as interrupted",
                        self.id,
                        self.completer.buffered,
                    )
                if self.hooks is not None:  # the last events, within one time box (10 s at most)
                    await self.hooks.drain(min(self.settings.hook_timeout_s, HOOK_DRAIN_MAX_S))
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                # One last beat, now that no other can be in flight: its last statistics.
                try:
                    await beat(self)
                except Exception as exc:  # the database may be the reason we are stopping
                    log.warning("node %s could not write its last statistics: %s", self.id, exc)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                try:
                    await self.store.deregister_node(self.id)
                except Exception as exc:  # the database may be the reason we are stopping
                    log.warning("could not mark node %s stopped: %s", self.id, exc)
            if self.metrics is not None:
                self.metrics.stop()
            self._stopped.set()
            log.info("node %s stopped", self.id)

    def stop(self, grace: float | None = None) -> None:
        """Ask the node to stop: no more claims, running jobs get ``grace`` seconds to end.

        Called again with a shorter grace (a second SIGTERM), it shortens a drain that has
        already begun.
        """
        if grace is not None:
            self._shutdown_grace = min(self._shutdown_grace, grace)
            scope = self._drain_scope
            if scope is not None:
                scope.deadline = min(scope.deadline, anyio.current_time() + grace)
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _drain(self) -> None:
        self._draining = True
        if self.running:
            log.info(
                "node %s draining %d running jobs (up to %g s)",
                self.id,
                len(self.running),
                self._shutdown_grace,
            )
            with anyio.move_on_after(self._shutdown_grace) as scope:
                self._drain_scope = scope
                await self._idle.wait()
            self._drain_scope = None
        if self.running:
            log.warning(
                "node %s cancelling %d jobs still running after the shutdown grace period",
                self.id,
                len(self.running),
            )
            for job in list(self.running.values()):
                stop_job(self, job, STOP_SHUTDOWN)
            with anyio.move_on_after(self.settings.cancel_grace_s):
                await self._idle.wait()
            for job in list(self.running.values()):
                abandon(self, job)

    def _current_id(self) -> JobId:
        return self.id  # a new one after a rejoin

    def schedules(self) -> list[ScheduleDef]:
        """The app's schedules this node fires: those whose runs go to one of its queues."""
        return served(self.app.schedules.values(), self.queue_limit)

    def load(self) -> tuple[int, int]:
        """How many jobs this node runs, and how many pool workers it has."""
        return len(self.running), len(self.pool.workers) if self.pool is not None else 0

    # -- liveness: self-fencing and rejoining ----------------------------------------------------

    def may_claim(self) -> bool:
        """False once the node has gone ``node_timeout_s`` without a heartbeat: other nodes
        may have reaped it, so it takes no new work until a heartbeat says it is alive."""
        return self.liveness.may_claim()

    def heartbeat_succeeded(self) -> None:
        self.liveness.heartbeat_succeeded()

    def heartbeat_failed(self) -> None:
        self.liveness.heartbeat_failed()

    async def wait_until_heartbeat_succeeds(self) -> None:
        await self.liveness.wait_until_heartbeat_succeeds()

    async def rejoin(self) -> None:
        """This node was reaped while cut off: its running jobs now belong to the reaper's
        decision (re-queued, lost or cancelled), so they are stopped here, their outcomes
        dropped (they would be fenced anyway), and the node registers again under a new id."""
        orphans = list(self.running.values())
        log.error(
            "node %s was reaped by another node while it could not heartbeat; stopping its %d "
            "running jobs here (they were re-queued or marked lost) and rejoining as a new node",
            self.id, len(orphans),
        )  # fmt: skip
        for job in orphans:
            self._orphan(job)
        old_id = self.id
        self.id = new_id()
        self.info = dataclasses.replace(self.info, id=self.id)
        self.completer.node_id = self.id
        if self.hooks is not None:
            self.hooks.node_id = self.id
        await self.store.register_node(self.info)
        log.warning("node %s rejoined as node %s", old_id, self.id)
        self.heartbeat_succeeded()

    def _orphan(self, job: RunningJob) -> None:
        """Forget a job this node no longer owns: free its slot, write no outcome."""
        if not self._release(job):
            return
        if job.span is not None:
            end_run(job.span, "reaped")
        if job.task is not None and not job.task.done():
            self.let_go(job.task, "node reaped")

    # -- running jobs ----------------------------------------------------------------------------

    def start_job(self, claimed: ClaimedJob) -> None:
        """Start a claimed job in its own task (or fail it at once if its name is unknown)."""
        definition = self.app.registry.get(claimed.name)
        job = RunningJob(claimed, definition)
        self.running[job.id] = job
        self.queue_free[job.queue] -= 1
        self._idle.clear()
        if definition is None:
            self.finish(job, unknown_job_outcome(self, claimed))
            return
        if claimed.args is None:  # its parents' results are over MAX_INPUT_BYTES
            self.finish(job, inputs_too_large_outcome(self, job))
            return
        if self.hooks is not None:
            self.hooks.job_started(job)
        if self.metrics is not None:
            self.metrics.job_started(claimed)
        loop = asyncio.get_running_loop()
        run = execute_isolated if definition.isolated else execute
        if claimed.delay > 0:  # a rate-limited job, whose booked start is ahead
            job.task = loop.create_task(self._start_later(job, claimed.delay, run, claimed.args))
            return
        job.task = loop.create_task(run(self, job, claimed.args))
        if definition.soft_timeout is not None or definition.timeout is not None:
            arm_deadlines(self, job, loop)

    async def _start_later(
        self, job: RunningJob, delay: float, run: Any, args: bytes | None
    ) -> None:
        """Wait for a rate-limited job's booked start, then run it (its time limits count
        from there). Stopped while it waits, it ends as a stopped job that never started."""
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.finish(job, stopped_outcome(self, job))
            return
        definition = job.definition
        assert definition is not None
        if definition.soft_timeout is not None or definition.timeout is not None:
            arm_deadlines(self, job, asyncio.get_running_loop())
        await run(self, job, args)

    def finish(self, job: RunningJob, outcome: Outcome) -> None:
        """Record how an attempt ended and free its slot (once; later calls are ignored)."""
        if self._release(job):
            if job.started is not None and outcome.wall_s is None:
                o = outcome
                outcome = Outcome(
                    o.id, o.attempt, o.state, o.result, o.error, o.finished_at, o.run_at,
                    o.reason, time.monotonic() - job.started, job.cpu,
                )  # fmt: skip
            self.completer.add(outcome, job.concurrency_key)
            self.stats.add(
                job.name, outcome.state, outcome.finished_at, job.wait, outcome.wall_s,
                outcome.cpu_s,
            )  # fmt: skip
            if self.hooks is not None:
                self.hooks.job_finished(job, outcome)
            if self.metrics is not None:
                self.metrics.job_finished(job, outcome)
            if job.span is not None:
                end_run(job.span, outcome)
            self.fetcher.slot_freed()

    def parked(self, job: RunningJob) -> None:
        """A durable job parked (its row already says when it runs again): free its slot."""
        if self._release(job):
            if job.span is not None:
                end_run(job.span, "parked")
            self.fetcher.slot_freed()

    def step_ended(self, job: RunningJob, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.step_ended(job.name, outcome)

    async def wait_idle(self) -> None:
        """Until no job runs on this node."""
        await self._idle.wait()

    @property
    def free(self) -> int:
        """How many more jobs this node can run now."""
        return self.settings.concurrency - len(self.running)

    def _release(self, job: RunningJob) -> bool:
        """Mark an attempt over and give back its slots; False if it already was."""
        if job.finished:
            return False
        job.finished = True
        if job.steps is not None:
            job.steps.ended = True
        if job.handles:
            for handle in job.handles:
                handle.cancel()
        del self.running[job.id]
        self.queue_free[job.queue] += 1
        if not self.running:
            self._idle.set()
        return True

    def let_go(self, task: asyncio.Task[None], msg: str | None = None) -> None:
        """Cancel a task the node no longer waits for, keeping a reference until it ends."""
        task.cancel(msg)
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    # -- stopping jobs: cancel requests (the rest is in stopping.py) --------------------------

    def cancel_running(self, job_ids: list[JobId]) -> None:
        for job_id in job_ids:
            job = self.running.get(job_id)
            if job is not None and job.stop_reason != STOP_CANCEL:
                log.info("cancelling job %s (%s) on request", job.name, job.id)
                stop_job(self, job, STOP_CANCEL)

    # -- events from the store -------------------------------------------------------------------

    def on_event(self, event: StoreEvent) -> None:
        kind = event.kind
        if kind == "queue":
            self.fetcher.jobs_ready(event.value)
        elif kind == "cancel":
            try:
                job_id = coerce_job_id(event.value)
            except ValueError:
                return
            self.cancel_running([job_id])
        elif kind == "scheduled":
            try:
                when = float(event.value)
            except ValueError:
                return
            if math.isfinite(when):
                self.promoter.due_at(when)
        elif kind == "reconnected":
            # Notifications may have been missed while the connection was down.
            self.fetcher.look_everywhere()
            self.promoter.due_at(0.0)
