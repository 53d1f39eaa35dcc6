"""Running an app's jobs in a test: the real node code, driven step by step, on a manual clock.

``Harness(app)`` makes a twin of the app (same jobs, schedules and preloads; a store and a
clock of the test's own) and a real ``Node`` for it, whose service loops do not run. Instead,
``run_until_idle()`` does their work in turn until nothing is left to do: it fires the due
schedules, promotes the due scheduled jobs (delays, retry backoffs), claims every ready job and
starts it through ``Node.start_job`` (coroutines as tasks, isolated jobs in the real pool),
and writes the outcomes through the node's completer, whose statement also releases workflow
steps. ``advance(delta)`` moves the manual clock forward, stopping at every due time on the
way, so an hourly schedule fires once an hour and a retry runs when its backoff ends.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from ..app import App, start_pool
from ..clock import to_datetime, to_timestamp
from ..errors import AsyncJobsError
from ..jobs import JobDef, JobId, JobRecord, JobState, coerce_job_id
from ..store.base import ClaimedJob, Outcome, Store

if TYPE_CHECKING:
    from ..node.node import Node

PROMOTE_BATCH = 1000
IDLE_POLL_S = 0.02  # how often run_until_idle looks again while jobs still run


class HarnessError(AsyncJobsError):
    """The harness cannot go on: jobs still running past the timeout, or a misuse."""


class ManualClock:
    """A clock that moves only when told: what the app, its node, retries, ``run_at`` and
    schedules read under a ``Harness``.

    It starts at ``start`` (an aware datetime or epoch seconds), by default the start of the
    current hour, UTC: close to the database's own clock, and on an hour boundary, so hourly
    schedules fire on the hour. ``await clock.advance(timedelta(hours=1))`` moves it and runs
    what falls due (through the harness it is attached to).

    One decision reads the store's own clock instead: whether a workflow step released with
    a ``run_at`` ahead waits ``scheduled``. Keep the manual clock near real time (the
    default) when a test depends on that.
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        if start is None:
            now = datetime.now(UTC)
            start = now.replace(minute=0, second=0, microsecond=0)
        self._now = to_timestamp(start) if isinstance(start, datetime) else float(start)
        self._harness: Harness | None = None

    def time(self) -> float:
        return self._now

    def now(self) -> datetime:
        return to_datetime(self._now)

    def set(self, when: datetime | float) -> None:
        """Move to ``when``, forward only. Runs nothing; ``advance`` does."""
        ts = to_timestamp(when) if isinstance(when, datetime) else float(when)
        if ts < self._now:
            raise HarnessError(
                f"the clock only moves forward: it is {self.now().isoformat()}, and "
                f"{to_datetime(ts).isoformat()} is earlier"
            )
        self._now = ts

    async def advance(self, delta: timedelta | float) -> list[Ran]:
        """Move forward by ``delta``, running everything that falls due on the way, at its
        due time. Returns the attempts that ran."""
        if self._harness is None:
            self.set(self._now + _seconds(delta))
            return []
        return await self._harness.advance(delta)


@dataclass(frozen=True, slots=True)
class Ran:
    """One attempt the harness ran, and how it ended.

    ``outcome`` is the state the attempt left the job in: ``succeeded``, ``failed``,
    ``cancelled``, or ``scheduled`` / ``queued`` for a retry.
    """

    job_id: JobId
    name: str
    attempt: int
    outcome: str
    result: Any
    error: dict[str, Any] | None
    at: datetime  # the manual clock's time when it ended

    def __repr__(self) -> str:
        detail = f" -> {self.result!r}" if self.outcome == "succeeded" else ""
        if self.error:
            detail = f": {self.error.get('type')}: {self.error.get('message')}"
        return f"<Ran {self.name} #{self.attempt} {self.outcome}{detail}>"


class Harness:
    """Run ``app``'s jobs in a test, without a node process and without waiting::

        async with Harness(app) as h:             # MemoryStore and a ManualClock by default
            job_id = await h.app.enqueue(send_invoice, 42)
            await h.run_until_idle()
            await h.assert_succeeded(job_id)
            await h.clock.advance(timedelta(days=1))  # a day of schedules and retries

    - ``store``: a ``MemoryStore`` by default; the plugin's Postgres fixture passes settings
      with a DSN and a fresh schema (``settings=``) instead.
    - ``inline=True`` runs isolated jobs in the test's own process and thread instead of the
      pool: faster, but nothing of the pool is exercised (no process, no sandbox, no limits,
      no signals; ``ctx.enqueue`` works where a worker would raise ``IsolationError``).
    - ``queues``: the queues served; by default every queue the app's jobs and schedules use.
    """

    def __init__(
        self,
        app: App,
        *,
        store: Store | None = None,
        clock: ManualClock | None = None,
        inline: bool = False,
        queues: Sequence[str] | None = None,
        **settings: Any,
    ) -> None:
        self.source = app
        self.clock = clock or ManualClock()
        self.inline = inline
        names = queues or sorted(
            {d.queue for d in app.registry.values()}
            | {s.template.queue for s in app.schedules.values()}
            | set(app.settings.queue_names)
        )
        overrides: dict[str, Any] = {"queues": ",".join(names), "migrate_on_start": True}
        if store is not None or "dsn" not in settings:
            overrides["dsn"] = "memory://"
        overrides.update(settings)
        self.app = App(settings=app.settings.replace(**overrides), store=store, clock=self.clock)
        self.app.registry.update(_inline(app.registry) if inline else app.registry)
        self.app.schedules.update(app.schedules)
        self.app.preloads.extend(app.preloads)
        self._node: Node | None = None
        self._pool: Any = None
        self._names: dict[tuple[JobId, int], str] = {}
        self._ran: list[Ran] = []
        self._outcomes: list[Outcome] = []
        self._crash_points: list[tuple[str, str, JobId | None]] = []
        self._crashing = False

    @property
    def store(self) -> Store:
        return self.app.store

    @property
    def ran(self) -> list[Ran]:
        """Every attempt run so far, in the order they ended."""
        return list(self._ran)

    async def __aenter__(self) -> Harness:
        app = self.app
        if not self.inline:  # before any connection exists, as App.start does
            self._pool = await start_pool(app.settings, app.registry, app.preloads)
        try:
            await app.start(node=False)
            node = await self._new_node()
            for defn in node.schedules():
                await app.store.sync_schedule(defn, self.clock.time())
        except BaseException:
            await self._close()
            raise
        self.clock._harness = self
        return self

    async def _new_node(self) -> Node:
        from ..node.node import Node

        app = self.app
        node = Node(app, app.store, app.settings, self._pool)
        await app.store.register_node(node.info)
        add = node.completer.add

        def record(outcome: Outcome, key: str | None = None) -> None:
            self._outcomes.append(outcome)
            add(outcome, key)

        node.completer.add = record  # type: ignore[method-assign]
        node.step_hook = self._at_step
        self._node = node
        return node

    async def __aexit__(self, *exc_info: object) -> None:
        node = self._node
        if node is not None:
            for job in list(node.running.values()):
                if job.task is not None and not job.task.done():
                    job.task.cancel()
            with anyio.move_on_after(5):
                await node.wait_idle()
            await node.completer.flush()
        self.clock._harness = None
        await self._close()

    async def _close(self) -> None:
        try:
            await self.app.stop()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    # -- crashes -------------------------------------------------------------------------------

    def crash_at(self, step: str, *, when: str = "during", job: JobId | str | None = None) -> None:
        """Make the node die the next time a running job (``job``, or any) reaches a point of
        the step named ``step`` (``ctx.step``):

        - ``"before"``: between the step before and this one; nothing of it is recorded;
        - ``"during"``: recorded as running (in doubt, unless it is idempotent), its function
          not called yet;
        - ``"after"``: its result recorded, before the job goes on.

        There, the node dies as a killed process would: nothing more of it is written.
        ``run_until_idle`` (or ``advance``) then does what another node would: reaps it (a
        durable job is queued again, a job with a step in doubt ends ``lost``, the others as
        the delivery table says) and goes on with a new node, which runs what was re-queued.
        """
        if when not in ("before", "during", "after"):
            raise HarnessError(f"crash_at(when={when!r}): use 'before', 'during' or 'after'")
        self._crash_points.append((step, when, None if job is None else coerce_job_id(job)))

    async def crash(self) -> None:
        """Make the node die now, with every running job where it is (see ``crash_at``), and
        let another node take over, as ``run_until_idle`` does after a crash point."""
        self._require_node()
        await self._take_over()

    async def _at_step(self, job: Any, seq: int, name: str, point: str) -> None:
        for spec in self._crash_points:
            step, when, job_id = spec
            if step == name and when == point and job_id in (None, job.id):
                self._crash_points.remove(spec)
                self._crashing = True
                await asyncio.Event().wait()  # the process is gone: this job never goes on

    async def _take_over(self) -> None:
        """Reap the current node as a dead one, and replace it."""
        self._crashing = False
        dead = self._require_node()
        dead.completer.add = lambda outcome, key=None: None  # type: ignore[method-assign]
        store = self.app.store
        await store.deregister_node(dead.id)  # stopped: any other node may reap it now
        node = await self._new_node()
        await store.reap(node.id, self.app.settings.node_timeout_s, 100)
        tasks = [j.task for j in dead.running.values() if j.task is not None]
        for task in tasks:  # their writes are fenced now: the jobs are no longer theirs
            task.cancel()
        with anyio.move_on_after(5):
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- running -------------------------------------------------------------------------------

    async def run_until_idle(self, *, timeout: float = 30.0) -> list[Ran]:
        """Run everything that is due now, and what that releases, until nothing is left.

        Jobs that wait for other jobs (``ctx.wait_for``, workflows) are fine: the harness keeps
        claiming while they wait. Raises ``HarnessError`` if jobs still run after ``timeout``
        real seconds (a job that awaits something that never comes).
        """
        node = self._require_node()
        store = self.app.store
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        first = len(self._ran)
        while True:
            if self._crashing:
                await self._take_over()
                node = self._require_node()
            now = self.clock.time()
            progressed = await self._fire_schedules(node, now)
            while True:
                promoted = await store.promote_due(now, PROMOTE_BATCH)
                progressed = progressed or promoted.moved > 0
                if promoted.moved < PROMOTE_BATCH:
                    break
            limits = {q: free for q, free in node.queue_free.items() if free > 0}
            if limits and node.free > 0:
                claimed = await store.claim(node.id, _cap(limits, node.free), now)
                for job in claimed:
                    self._start(node, job)
                progressed = progressed or bool(claimed)
            if node.running:
                with anyio.move_on_after(0 if progressed else IDLE_POLL_S):
                    await node.wait_idle()
                await asyncio.sleep(0)  # let tasks that just ended hand in their outcome
                if self._crashing:
                    continue
            if node.completer.buffered:
                await node.completer.flush()
                self._collect()
                continue
            if not progressed and not node.running:
                return self._ran[first:]
            if loop.time() > deadline:
                running = ", ".join(f"{j.name} ({j.id})" for j in node.running.values())
                raise HarnessError(
                    f"jobs still running after {timeout:g} s: {running or 'none'}; a job may "
                    "be waiting for something that never comes (pass timeout= to wait longer)"
                )

    async def advance(self, delta: timedelta | float) -> list[Ran]:
        """Move the clock forward by ``delta``, stopping at each due time on the way (the
        next scheduled job, the next fire time of a schedule) to run what is due then."""
        node = self._require_node()
        target = self.clock.time() + _seconds(delta)
        ran = await self.run_until_idle()
        while True:
            due = await self._next_due(node)
            if due is None or due > target:
                break
            self.clock.set(max(due, self.clock.time()))
            ran += await self.run_until_idle()
        self.clock.set(target)
        ran += await self.run_until_idle()
        return ran

    def _start(self, node: Node, job: ClaimedJob) -> None:
        self._names[(job.id, job.attempt)] = job.name
        node.start_job(job)

    def _collect(self) -> None:
        for o in self._outcomes:
            result = orjson.loads(o.result) if o.result is not None else None
            error = orjson.loads(o.error) if o.error is not None else None
            name = self._names.pop((o.id, o.attempt), "?")
            self._ran.append(
                Ran(o.id, name, o.attempt, o.state, result, error, to_datetime(o.finished_at))
            )
        self._outcomes.clear()

    async def _fire_schedules(self, node: Node, now: float) -> bool:
        fired = False
        schedules = node.schedules()
        for defn in schedules:
            done = await self.app.store.fire_schedule(defn, now)
            fired = fired or bool(done is not None and done.runs)
        queued = [s.name for s in schedules if s.overlap == "queue"]
        if queued:
            fired = await self.app.store.release_waiting(queued) > 0 or fired
        return fired

    async def _next_due(self, node: Node) -> float | None:
        now = self.clock.time()
        due = (await self.app.store.promote_due(now, 0)).next_run_at
        for defn in node.schedules():
            nxt = defn.next_fire_after(now)
            if nxt is not None and (due is None or nxt < due):
                due = nxt
        return due

    def _require_node(self) -> Node:
        if self._node is None:
            raise HarnessError("use the harness inside `async with Harness(app) as h:`")
        return self._node

    # -- assertions ----------------------------------------------------------------------------

    async def assert_enqueued(
        self,
        job: str | JobDef[Any, Any],
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        state: str | None = None,
    ) -> JobRecord:
        """The job named ``job`` was enqueued (with these ``args``/``kwargs``, in this
        ``state``, where given); returns the first match. Fails with what was enqueued."""
        name = job.name if isinstance(job, JobDef) else job
        found = await self.app.store.find_jobs(name, 1000)
        for record in found:
            if args is not None and list(args) != record.args:
                continue
            if kwargs is not None and kwargs != record.kwargs:
                continue
            if state is not None and record.state != state:
                continue
            return record
        wanted = _call(name, args, kwargs) + (f" in state {state}" if state else "")
        if not found:
            names = sorted(self.app.registry)
            raise AssertionError(
                f"no job {name!r} was enqueued (wanted {wanted}); registered jobs: "
                f"{', '.join(names)}"
            )
        shown = "\n".join(
            f"  {_call(r.name, r.args, r.kwargs)}  [{r.state.value}]" for r in found[:20]
        )
        raise AssertionError(
            f"no enqueued {name!r} job matches {wanted}; the {len(found)} enqueued are:\n{shown}"
        )

    async def assert_succeeded(self, job_id: JobId | str) -> Any:
        """The job succeeded; returns its result. Fails with its state, error and traceback."""
        record = await self.app.store.get(coerce_job_id(job_id))
        if record is None:
            raise AssertionError(f"no job {job_id} exists")
        if record.state is JobState.SUCCEEDED:
            return record.result
        detail = f"job {record.name!r} ({record.id}) is {record.state.value}, not succeeded"
        if record.reason:
            detail += f" (reason: {record.reason})"
        if record.error:
            detail += (
                f"\n  {record.error.get('type')}: {record.error.get('message')}\n"
                f"{record.error.get('traceback', '')}"
            )
        elif not record.state.is_terminal:
            detail += "; run `await harness.run_until_idle()` (or advance the clock) first"
        raise AssertionError(detail)


def _seconds(delta: timedelta | float) -> float:
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    if not math.isfinite(seconds) or seconds < 0:
        raise HarnessError(f"advance by {delta!r}: the clock only moves forward")
    return seconds


def _cap(limits: dict[str, int], budget: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for queue, n in limits.items():
        if budget <= 0:
            break
        out[queue] = min(n, budget)
        budget -= out[queue]
    return out


def _call(name: str, args: Any, kwargs: Any) -> str:
    parts = [repr(a) for a in args or ()] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
    shown = ", ".join(parts) if (args is not None or kwargs is not None) else "..."
    return f"{name}({shown})"


def _inline(registry: dict[str, JobDef[Any, Any]]) -> dict[str, JobDef[Any, Any]]:
    """The registry with each isolated job turned into a coroutine job that calls it."""
    out: dict[str, JobDef[Any, Any]] = {}
    for name, d in registry.items():
        if not d.isolated:
            out[name] = d
            continue
        inline = JobDef(
            _in_process(d.fn), name=d.name, queue=d.queue, priority=d.priority,
            timeout=d.timeout, soft_timeout=d.soft_timeout, retry=d.retry,
        )  # fmt: skip
        inline.wants_context = d.wants_context
        out[name] = inline
    return out


def _in_process(fn: Callable[..., Any]) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value

    return run
