"""The app the acceptance tests run in node subprocesses (``tests.acceptance.jobs_app:app``).

Its jobs record what they do into ``<schema>.acceptance_runs`` (created by the tests), so a test
can see from outside which attempt of which job ran, where, and whether it got to its end. The
node process finds the database and schema in ``ASYNCJOBS_DSN`` and ``ASYNCJOBS_SCHEMA``, the
same variables its settings come from.

``build_app`` registers the jobs on a new App: the node imports ``app``; a test builds its own
producer app with the same jobs (``build_app(settings)``), so it can enqueue them by reference.
"""

from __future__ import annotations

import asyncio
import functools
import os

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
