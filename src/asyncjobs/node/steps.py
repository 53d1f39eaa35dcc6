"""A running job's steps (``ctx.step``) and durable waits (``ctx.sleep``, ``ctx.wait_for``).

Each step is a row of job_steps, keyed by the job and the order of the call. Its result is
committed before the job goes on; on a later run of the job (a resume after its node died,
or after parking), a step that completed returns its recorded result instead of running. A
step that is not idempotent is recorded as running before it starts, in a commit of its own,
so that a node dying in the middle of it leaves it in doubt: the reaper then ends the job
``lost`` (reap_jobs). An idempotent step writes only its result, and a death mid-step runs it
again. A step that raises is recorded as failed and runs again on the job's next run.

Parking: a durable job in ``ctx.sleep`` or ``ctx.wait_for`` records the wait as a step, parks
its row (scheduled, or waiting for the other job's end) and ends its task by raising
``JobParked``, which the node turns into a freed slot and no outcome. Its next run replays.

Every write is fenced by the attempt and its node, like an outcome; a write the database
cannot take for now (an outage) is retried with backoff until it can, because the job must
not go on before it is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import weakref
from collections.abc import Awaitable, Callable
from contextlib import nullcontext, suppress
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import orjson

from ..clock import Clock, to_datetime
from ..errors import (
    InvalidArgumentError,
    JobNotFoundError,
    StaleAttemptError,
    StepError,
    StepInDoubtError,
    StepMismatchError,
    StoreUnavailableError,
    WorkerCrashedError,
    error_fields,
    qualified_name,
)
from ..jobs import JobDef, JobId, coerce_job_id
from ..results import result_of
from ..serialization import encode_args, encode_result
from ..settings import Settings
from ..storable import text_problem
from ..store.base import ParkResult, StepRecord, StepWrite, Store
from .running import STOP_SHUTDOWN, RunningJob

if TYPE_CHECKING:
    from ..pool.pool import ProcessPool

log = logging.getLogger("asyncjobs.node")

T = TypeVar("T")
MAX_STEP_NAME_CHARS = 200
CALL_SHOWN_CHARS = 200  # of a step's arguments, kept to name them in a mismatch
WRITE_RETRY_MIN_S = 0.05
WRITE_RETRY_MAX_S = 5.0
MAX_SLEEP_S = 10 * 365 * 86400.0


class JobParked(BaseException):  # not an error: how a parked job's task ends
    """Raised in a durable job that parked: its task ends, and the node frees its slot.

    A BaseException, so that a job's ``except Exception`` does not swallow it."""


class StepHost(Protocol):
    """What a job's steps need from the node (``Node`` is one)."""

    @property
    def id(self) -> JobId: ...

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def pool(self) -> ProcessPool | None: ...

    def step_ended(self, job: RunningJob, outcome: str) -> None:
        """Count a step by outcome: succeeded, failed or replayed (metrics)."""

    @property
    def step_hook(self) -> StepHook | None:
        """Called at each point of a step (``asyncjobs.testing`` simulates crashes there)."""


# (job, seq, step name, point): point is "before" (nothing recorded yet), "during" (the step
# recorded as running, its function not called) or "after" (its result recorded).
StepHook = Callable[[RunningJob, int, str, str], Awaitable[None]]


class JobSteps:
    """The steps of one running attempt (what ``ctx.step`` and friends call)."""

    def __init__(self, host: StepHost, job: RunningJob, durable: bool) -> None:
        self._host = host
        # Weak: the job holds its context, which holds this; a strong reference back would
        # make every finished (or parked) job wait for the cycle collector to be freed.
        self._job_ref = weakref.ref(job)
        self._job_name, self._job_id = job.name, job.id
        self._durable = durable
        self._recorded: dict[int, StepRecord] | None = None
        self._seq = 0
        self._active: tuple[int, str] | None = None  # the step running now: seq, name
        self.in_doubt: tuple[int, str] | None = None  # a step that is not idempotent, running
        self.completed = 0  # steps this attempt completed or replayed
        self.ended = False  # set by the node when the attempt is over

    @property
    def durable(self) -> bool:
        return self._durable

    @property
    def _job(self) -> RunningJob:
        job = self._job_ref()
        if job is None:  # pragma: no cover - only a kept ctx outlives its job, and is ended
            raise InvalidArgumentError(
                "step", "job", self._job_name, f"job {self._job_name!r} ({self._job_id}) has ended"
            )
        return job

    # -- ctx.step ----------------------------------------------------------------------------

    async def call(
        self, name: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], idempotent: bool
    ) -> Any:
        self._check_callable(name, fn, idempotent)
        limit = self._host.settings.max_payload_bytes
        payload = encode_args(self._job_name, args, kwargs, limit, step=name)
        call = payload[:CALL_SHOWN_CHARS].decode(errors="replace")
        seq = self._next_seq()
        self._active = (seq, name)  # before any await: a second step meanwhile is refused
        try:
            return await self._call(seq, name, fn, args, kwargs, idempotent, payload, call)
        finally:
            self._active = None

    async def _call(
        self,
        seq: int,
        name: str,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        idempotent: bool,
        payload: bytes,
        call: str,
    ) -> Any:
        job, limit = self._job, self._host.settings.max_payload_bytes
        digest = hashlib.blake2b(payload, digest_size=16).digest()
        recorded = (await self._replay()).get(seq)
        if recorded is not None:
            if recorded.kind != "call" or recorded.name != name:
                raise StepMismatchError(
                    job.name, seq, _describe(recorded), f"step {name!r} called with {call}"
                )
            if recorded.state == "succeeded":
                if recorded.digest != digest:
                    raise StepMismatchError(
                        job.name, seq, _describe(recorded), f"step {name!r} called with {call}"
                    )
                self.completed += 1
                self._host.step_ended(job, "replayed")
                return recorded.result
            if recorded.state == "running" and not idempotent:
                raise StepInDoubtError(job.name, name, seq)  # an earlier attempt left it so
        hook = self._host.step_hook
        if hook is not None:
            await hook(job, seq, name, "before")
        started = self._host.clock.time()
        write = StepWrite(seq, "call", name, "running", idempotent, digest, call, started, None)
        if not idempotent:
            await self._record(write, f"step {name!r} (#{seq})")
            self.in_doubt = (seq, name)
        try:
            if hook is not None:
                await hook(job, seq, name, "during")
            value = await self._run(name, fn, args, kwargs, payload)
            data = encode_result(job.name, value, limit, step=name)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and job.stop_reason == STOP_SHUTDOWN:
                raise  # interrupted by a shutdown: left as it is (in doubt unless idempotent)
            self.in_doubt = None
            # The traceback is the job's: its own error carries it, if the job fails.
            error = orjson.dumps(error_fields(qualified_name(type(exc)), str(exc), ""))
            ended = write._replace(state="failed", finished_at=self._host.clock.time())
            await self._record_shielded(ended._replace(error=error), f"step {name!r} (#{seq})")
            self._host.step_ended(job, "failed")
            raise
        done = write._replace(state="succeeded", finished_at=self._host.clock.time(), result=data)
        await self._record(done, f"the result of step {name!r} (#{seq})")
        self.in_doubt = None
        self.completed += 1
        self._host.step_ended(job, "succeeded")
        if hook is not None:
            await hook(job, seq, name, "after")
        # The job sees what a replay will give it: the value as JSON gave it back.
        return orjson.loads(data)

    def _check_callable(self, name: Any, fn: Any, idempotent: Any) -> None:
        if self.ended:
            raise InvalidArgumentError(
                "step", "name", name,
                f"job {self._job_name!r} ({self._job_id}) has ended; a step can only run while "
                "its job does",
            )  # fmt: skip
        job = self._job
        if not isinstance(name, str) or not 0 < len(name) <= MAX_STEP_NAME_CHARS:
            raise InvalidArgumentError(
                "step", "name", name, f"use a string of 1 to {MAX_STEP_NAME_CHARS} characters"
            )
        if why := text_problem(name):
            raise InvalidArgumentError("step", "name", name, why)
        if idempotent is not True and idempotent is not False:
            raise InvalidArgumentError("step", "idempotent", idempotent, "use True or False")
        if self._active is not None:
            seq, running = self._active
            raise InvalidArgumentError(
                "step", "name", name,
                f"step {running!r} (#{seq}) of job {job.name!r} is still running: the steps of "
                "a job run one at a time, in order (await each before the next)",
            )  # fmt: skip
        if isinstance(fn, JobDef):
            if not fn.isolated:
                raise InvalidArgumentError(
                    "step", "fn", fn,
                    "a step runs a coroutine function, or an isolated job (in the pool); pass "
                    f"the function of job {fn.name!r} itself, {fn.name}.fn",
                )  # fmt: skip
            if self._host.pool is None:  # pragma: no cover - a node with isolated jobs has one
                raise InvalidArgumentError("step", "fn", fn, "this node has no process pool")
        elif not inspect.iscoroutinefunction(fn):
            raise InvalidArgumentError(
                "step", "fn", fn,
                "a step runs a coroutine function (async def), or an isolated job "
                "(@app.job(isolated=True)), which runs in the process pool",
            )  # fmt: skip

    async def _run(
        self, name: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], payload: bytes
    ) -> Any:
        if isinstance(fn, JobDef):
            return await self._run_isolated(name, fn, payload)
        return await fn(*args, **kwargs)

    async def _run_isolated(self, name: str, definition: JobDef[Any, Any], payload: bytes) -> Any:
        """Run an isolated job's function as this step, in a pool worker."""
        pool = self._host.pool
        assert pool is not None
        from ..pool.handle import WorkerDied

        job = self._job
        worker = await pool.acquire()
        header = {
            "op": "run", "id": str(job.id), "name": definition.name, "queue": job.queue,
            "attempt": job.attempt, "max_attempts": job.max_attempts, "workflow_id": None,
        }  # fmt: skip
        try:
            limit = anyio.fail_after(definition.timeout) if definition.timeout else nullcontext()
            with limit:
                reply, body = await pool.call(worker, header, payload)
        except WorkerDied as died:
            pool.discard(worker)
            raise WorkerCrashedError(definition.name, died.how) from None
        except BaseException:
            worker.kill()  # cancelled, or past its time limit: the worker must not go on
            pool.discard(worker)
            raise
        pool.release(worker, retire=bool(reply.get("retire")))
        if reply.get("op") == "ok":
            return orjson.loads(body)
        raise StepError(
            name, str(reply.get("type", "Exception")), str(reply.get("message", "")),
            str(reply.get("traceback", "")),
        )  # fmt: skip

    # -- ctx.sleep and ctx.wait_for ------------------------------------------------------------

    async def sleep(self, delay: timedelta | float) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds <= MAX_SLEEP_S
            or math.isnan(seconds)
        ):
            raise InvalidArgumentError(
                "sleep", "delay", delay, "use zero or more seconds (at most ten years)"
            )
        if not self._durable:
            await asyncio.sleep(seconds)
            return
        self._check_not_ended("sleep")
        now = self._host.clock.time()
        seq = self._next_seq()
        recorded = (await self._replay()).get(seq)
        if recorded is not None:
            if recorded.kind != "sleep":
                raise StepMismatchError(self._job.name, seq, _describe(recorded), "a sleep")
            until = float(recorded.result["until"])
            if now >= until:
                self.completed += 1
                return
            await self._park(f"sleeping until {_iso(until)}", until=until)
            return  # pragma: no cover - a sleep always parks (or raises)
        until = now + seconds
        if seconds == 0:
            return
        write = StepWrite(
            seq, "sleep", "sleep", "succeeded", True, None, None, now, now,
            orjson.dumps({"until": until}),
        )  # fmt: skip
        await self._park(f"sleeping until {_iso(until)}", until=until, step=write)

    async def wait_for(self, job_id: JobId) -> Any:
        self._check_not_ended("wait_for")
        try:
            awaited = coerce_job_id(job_id)
        except ValueError as exc:
            raise InvalidArgumentError("wait_for", "job_id", job_id, str(exc)) from None
        seq = self._next_seq()
        recorded = (await self._replay()).get(seq)
        write: StepWrite | None = None
        if recorded is not None:
            if recorded.kind != "wait" or recorded.result != str(awaited):
                raise StepMismatchError(
                    self._job.name, seq, _describe(recorded), f"a wait for job {awaited}"
                )
        else:
            now = self._host.clock.time()
            write = StepWrite(
                seq, "wait", "wait_for", "succeeded", True, None, None, now, now,
                orjson.dumps(str(awaited)),
            )  # fmt: skip
        store = self._host.store
        record = await self._retrying(lambda: store.get(awaited))
        if record is None:
            raise JobNotFoundError(awaited)
        if not record.state.is_terminal:
            await self._park(f"waiting for job {awaited}", wait_on=awaited, step=write)
            record = await self._retrying(lambda: store.get(awaited))  # it ended meanwhile
            if record is None:
                raise JobNotFoundError(awaited)
        self.completed += 1
        return result_of(record)

    async def _park(
        self,
        reason: str,
        *,
        until: float | None = None,
        wait_on: JobId | None = None,
        step: StepWrite | None = None,
    ) -> None:
        """Park the job and end its task (JobParked), unless the awaited job has ended."""
        job, host = self._job, self._host
        parked: ParkResult = await self._retrying(
            lambda: host.store.park(
                host.id, job.id, job.attempt, reason, until=until, wait_on=wait_on, step=step
            )
        )
        if not parked.owned:
            raise StaleAttemptError(job.name, job.id, job.attempt, reason)
        if parked.parked:
            raise JobParked(reason)

    # -- records -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _check_not_ended(self, what: str) -> None:
        if self.ended:
            raise InvalidArgumentError(
                what, "job", self._job_name,
                f"job {self._job_name!r} ({self._job_id}) has ended; ctx.{what} only works "
                "while it runs",
            )  # fmt: skip
        if self._active is not None:
            seq, running = self._active
            raise InvalidArgumentError(
                what, "job", self._job.name,
                f"step {running!r} (#{seq}) is still running: await it first",
            )  # fmt: skip

    async def _replay(self) -> dict[int, StepRecord]:
        """The steps earlier runs of this job recorded (read once, at its first step)."""
        if self._recorded is None:
            job = self._job
            if job.attempt <= 1:  # a first run: nothing can be recorded yet
                self._recorded = {}
            else:
                store = self._host.store
                steps = await self._retrying(lambda: store.job_steps(job.id))
                self._recorded = {s.seq: s for s in steps}
        return self._recorded

    async def _record(self, step: StepWrite, what: str) -> None:
        job, host = self._job, self._host
        ok = await self._retrying(
            lambda: host.store.record_step(host.id, job.id, job.attempt, step)
        )
        if not ok:
            raise StaleAttemptError(job.name, job.id, job.attempt, what)

    async def _record_shielded(self, step: StepWrite, what: str) -> None:
        """Record a step's failure even while the job is being cancelled (a cancel request,
        a time limit): the record must exist before the job's next run replays it."""
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(WRITE_RETRY_MAX_S * 2),
            suppress(StaleAttemptError),  # the attempt is over anyway
        ):
            await self._record(step, what)

    async def _retrying(self, write: Callable[[], Awaitable[T]]) -> T:
        """``write()``, again after an outage, with backoff, until the database answers."""
        delay = WRITE_RETRY_MIN_S
        while True:
            try:
                return await write()
            except StoreUnavailableError as exc:
                log.warning(
                    "job %s (%s) cannot record its step yet (%s); retrying in %.2f s",
                    self._job.name, self._job.id, exc.why, delay,
                )  # fmt: skip
                await anyio.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_S)


def _describe(step: StepRecord) -> str:
    if step.kind == "call":
        return f"step {step.name!r} called with {step.call}"
    if step.kind == "sleep":
        return "a sleep"
    return f"a wait for job {step.result}"


def _iso(epoch: float) -> str:
    return to_datetime(epoch).isoformat(timespec="seconds")
