"""The app the acceptance tests run in node subprocesses (``tests.acceptance.jobs_app:app``).

Its jobs record what they do into ``<schema>.acceptance_runs`` (created by the tests), so a test
can see from outside which attempt of which job ran, where, and whether it got to its end; the
steps of the durable job ``provision`` record each execution in ``<schema>.acceptance_step_runs``
(created by the tests that use it), so that "never ran twice" is counted, not assumed. The
node process finds the database and schema in ``ASYNCJOBS_DSN`` and ``ASYNCJOBS_SCHEMA``, the
same variables its settings come from.

``build_app`` registers the jobs on a new App: the node imports ``app``; a test builds its own
producer app with the same jobs (``build_app(settings)``), so it can enqueue them by reference.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg

from asyncjobs import App, JobContext, Retry, Settings

RUNS_TABLE = "acceptance_runs"
RUNS_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.acceptance_runs (
    seq     bigserial PRIMARY KEY,
    job_id  uuid NOT NULL,
    attempt integer NOT NULL,
    event   text NOT NULL,           -- start, end, run
    pid     integer NOT NULL,        -- the node process that ran it
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


STEP_RUNS_TABLE = "acceptance_step_runs"
STEP_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.acceptance_step_runs (
    token   uuid PRIMARY KEY,        -- one per execution: an insert retried is not doubled
    job_id  uuid NOT NULL,
    attempt integer NOT NULL,
    event   text NOT NULL,           -- step:<name>, between, cancel-ignored:<name>, raised:...
    pid     integer NOT NULL,        -- the node process that ran it
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
# The five steps of the durable job `provision`, in order; the third is the one tests kill.
PROVISION_STEPS = ("reserve_quota", "allocate_ip", "create_disk", "boot_vm", "notify_owner")
HOLD_S = 600.0  # how long a first attempt holds: until the test has killed or cut its node
RECORD_RETRY_S = 60.0  # how long a step's record of its run is retried while Postgres is away
_RECORD_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


class _RunsPool:
    """One small pool per node process, opened by the first job that records something."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._lock: asyncio.Lock | None = None

    async def get(self) -> asyncpg.Pool:
        if self._pool is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        os.environ["ASYNCJOBS_DSN"], min_size=1, max_size=10
                    )
        return self._pool


_runs_pool = _RunsPool()


async def record_event(ctx: JobContext, event: str) -> None:
    pool = await _runs_pool.get()
    schema = os.environ["ASYNCJOBS_SCHEMA"]
    await pool.execute(
        f"INSERT INTO {schema}.{RUNS_TABLE} (job_id, attempt, event, pid) VALUES ($1, $2, $3, $4)",
        ctx.job_id,
        ctx.attempt,
        event,
        os.getpid(),
    )


async def record_step_event(ctx: JobContext, event: str) -> None:
    """Record one execution in acceptance_step_runs, outside the job tables: retried while
    Postgres is unreachable (a restart, a cut proxy), never doubled (one token per call)."""
    schema = os.environ["ASYNCJOBS_SCHEMA"]
    token = uuid.uuid4()
    deadline = time.monotonic() + RECORD_RETRY_S
    while True:
        try:
            pool = await _runs_pool.get()
            await pool.execute(
                f"INSERT INTO {schema}.{STEP_RUNS_TABLE} (token, job_id, attempt, event, pid) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token) DO NOTHING",
                token, ctx.job_id, ctx.attempt, event, os.getpid(),
            )  # fmt: skip
            return
        except _RECORD_ERRORS:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


_background: set[asyncio.Task[None]] = set()  # shielded records, referenced until done


async def _shielded(record: Coroutine[Any, Any, None]) -> None:
    """Await ``record``, which a cancel of the caller does not stop (it completes anyway)."""
    task = asyncio.ensure_future(record)
    _background.add(task)
    task.add_done_callback(_background.discard)
    await asyncio.shield(task)


def _provision_step(
    ctx: JobContext, name: str, hold: bool, gate: str, stubborn: bool
) -> Callable[[str], Awaitable[dict[str, Any]]]:
    """The function of one step of `provision`: records that it ran, holds if told to, and
    returns who ran it (so a replay shows the recorded result, not a new one)."""

    async def run(vm: str) -> dict[str, Any]:
        await record_step_event(ctx, f"step:{name}")
        if hold:
            await _hold(ctx, name, gate, stubborn)
        return {"step": name, "vm": vm, "attempt": ctx.attempt, "pid": os.getpid()}

    return run


async def _hold(ctx: JobContext, name: str, gate: str, stubborn: bool) -> None:
    """Until the file ``gate`` exists (HOLD_S without one). ``stubborn``: a cancel does not
    stop it, as an external call that cannot be taken back would not stop (it is recorded)."""
    deadline = time.monotonic() + HOLD_S
    # A stat of a local file 20 times a second does not need a thread.
    while not (gate and os.path.exists(gate)) and time.monotonic() < deadline:  # noqa: ASYNC240
        try:
            await asyncio.sleep(0.05 if gate else HOLD_S)
        except asyncio.CancelledError:
            if not stubborn:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await record_step_event(ctx, f"cancel-ignored:{name}")


def build_app(settings: Settings | None = None) -> App:
    """An App with the acceptance-test jobs registered."""
    app = App(settings=settings)

    @app.job()
    async def hold(ctx: JobContext, seconds: float) -> float:
        """At most once: records its start, sleeps, records its end."""
        await record_event(ctx, "start")
        await asyncio.sleep(seconds)
        await record_event(ctx, "end")
        return seconds

    @app.job(retry=Retry(attempts=3, backoff=0.1))
    async def hold_retryable(ctx: JobContext, seconds: float) -> float:
        """The same as ``hold``, but retried (three attempts in all)."""
        await record_event(ctx, "start")
        await asyncio.sleep(seconds)
        await record_event(ctx, "end")
        return seconds

    @app.job()
    async def record(ctx: JobContext) -> None:
        """Records that this attempt ran, and nothing else."""
        await record_event(ctx, "run")

    @app.job(retry=Retry(attempts=3, backoff=0.1))
    async def hold_first_attempt(ctx: JobContext, seconds: float) -> int:
        """Retryable; its first attempt holds for ``seconds`` (a node gets killed meanwhile),
        later attempts end at once. Records every start and end."""
        await record_event(ctx, "start")
        if ctx.attempt == 1:
            await asyncio.sleep(seconds)
        await record_event(ctx, "end")
        return ctx.attempt

    @app.job(retry=Retry(attempts=3, backoff=0.1))
    async def whoami(ctx: JobContext, first_attempt_seconds: float) -> dict[str, int]:
        """Retryable; returns which attempt ran it, in which process. The first attempt takes
        ``first_attempt_seconds`` (a node gets cut off meanwhile), later ones end at once."""
        await record_event(ctx, "start")
        if ctx.attempt == 1:
            await asyncio.sleep(first_attempt_seconds)
        return {"attempt": ctx.attempt, "pid": os.getpid()}

    @app.job()
    async def fail(ctx: JobContext, message: str) -> None:
        """Records its attempt, then raises ValueError(message)."""
        await record_event(ctx, "run")
        raise ValueError(message)

    @app.job(concurrency_key="k:{key}")
    async def exclusive(ctx: JobContext, key: str, seconds: float) -> None:
        """At most one per key at once, across nodes; records its start and end."""
        await record_event(ctx, "start")
        await asyncio.sleep(seconds)
        await record_event(ctx, "end")

    @app.job(concurrency_key="k:{key}", concurrency_limit=3)
    async def three_at_once(ctx: JobContext, key: str, seconds: float) -> None:
        """At most three per key at once, across nodes; records its start and end."""
        await record_event(ctx, "start")
        await asyncio.sleep(seconds)
        await record_event(ctx, "end")

    @app.job(rate_limit="20/s")
    async def rated(ctx: JobContext) -> None:
        """At most 20 starts in any second, across nodes; records its start."""
        await record_event(ctx, "start")

    @app.job()
    async def note(ctx: JobContext, seconds: float = 0.0) -> None:
        """Appends "<job id> <attempt>" to this process's file in ASYNCJOBS_TEST_RUNS_DIR: a
        cheap record of every execution, for tests that run tens of thousands of jobs."""
        if seconds:
            await asyncio.sleep(seconds)
        note_run(ctx)

    @app.job(durable=True)
    async def provision(
        ctx: JobContext,
        vm: str,
        hold: str = "",
        idempotent_step3: bool = False,
        gate: str = "",
        stubborn: bool = False,
    ) -> list[dict[str, Any]]:
        """Durable, at most once: the five PROVISION_STEPS, each recording its run
        ('step:<name>') and returning who ran it. Its first attempt holds (a node gets killed
        or cut off meanwhile): inside step 3 (``hold="step"``), or between steps 2 and 3,
        outside any step (``hold="between"``, recorded as 'between'); until the file ``gate``
        exists if one is given. Step 3 is idempotent if ``idempotent_step3``. A step that
        raises is recorded as 'raised:<name>:<error type>'."""
        done = []
        for seq, name in enumerate(PROVISION_STEPS, 1):
            third_of_first_run = seq == 3 and ctx.attempt == 1
            if third_of_first_run and hold == "between":
                await record_step_event(ctx, "between")
                await _hold(ctx, "between", gate, stubborn=False)
            # What the step does differs by attempt, its arguments do not: a replay matches.
            fn = _provision_step(ctx, name, third_of_first_run and hold == "step", gate, stubborn)
            try:
                result = await ctx.step(name, fn, vm, idempotent=seq == 3 and idempotent_step3)
            except BaseException as exc:  # a cancel too: the rejoin of a reaped node
                # Shielded: a cancel landing meanwhile must not lose the record.
                await _shielded(record_step_event(ctx, f"raised:{name}:{type(exc).__name__}"))
                raise
            done.append(result)
        return done

    return app


@functools.cache
def _runs_file() -> int:
    path = os.path.join(os.environ["ASYNCJOBS_TEST_RUNS_DIR"], f"{os.getpid()}.runs")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def note_run(ctx: JobContext) -> None:
    # One write per line, O_APPEND: whole lines even if the process is killed mid-way.
    os.write(_runs_file(), f"{ctx.job_id} {ctx.attempt}\n".encode())


def read_runs(directory: str) -> dict[str, list[tuple[str, int]]]:
    """Every process's noted runs: {pid: [(job id, attempt), ...]}."""
    out: dict[str, list[tuple[str, int]]] = {}
    for name in os.listdir(directory):
        if name.endswith(".runs"):
            with open(os.path.join(directory, name)) as f:
                out[name.removesuffix(".runs")] = [
                    (job_id, int(attempt)) for job_id, attempt in (line.split() for line in f)
                ]
    return out


app = build_app()
