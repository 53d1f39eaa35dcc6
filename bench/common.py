"""What every benchmark shares: the jobs, figures, schemas, timing, machine info and JSON."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

import asyncjobs
from asyncjobs import App, JobContext, JobDef, Settings
from asyncjobs.app import make_store

from . import fault_jobs

# One open loop and one percentile for every benchmark, the peers' sides included (that module
# needs only the standard library, so a peer's venv can import it too).
from .peers.side_common import open_loop, percentile  # noqa: F401 (re-exported)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/asyncjobs_bench"
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LATEST_DIR = RESULTS_DIR / "latest"  # committed: each benchmark's newest full-size result
TABLE = "asyncjobs_jobs"  # the jobs table under the default table prefix
NODES_TABLE = "asyncjobs_nodes"  # the nodes table, likewise
_STATES = frozenset(
    ("scheduled", "waiting", "queued", "running", "succeeded", "failed", "cancelled", "lost")
)


# -- the jobs ----------------------------------------------------------------------------------
# Plain functions, registered on each benchmark's app (and in bench.node_proc), so the job names
# ("noop", "stamp", "sleeper", "nap", and those of bench.fault_jobs) match between a producer
# and a node in another process.


async def noop() -> None:
    return None


async def stamp() -> float:
    """Returns the wall time at which the job started: the end point of the latency figure."""
    return time.time()


async def sleeper(seconds: float = 30.0) -> None:
    await asyncio.sleep(seconds)


async def nap(ctx: JobContext, seconds: float) -> float:
    """A durable job that parks once in ``ctx.sleep``; returns the wall time at which the run
    that got past the sleep started (its resume: the end point of the wake-up lag)."""
    started = time.time()
    await ctx.sleep(seconds)
    return started


class Jobs(NamedTuple):
    noop: JobDef[[], None]
    stamp: JobDef[[], float]
    sleeper: JobDef[[float], None]
    hold_first_attempt: JobDef[[float], int]
    note: JobDef[[float], None]
    nap: JobDef[[float], float]


def make_app(dsn: str, schema: str, **settings: Any) -> tuple[App, Jobs]:
    """An app on this schema with the benchmark jobs registered, and those jobs."""
    app = App(settings=Settings(dsn=dsn, schema=schema, **settings))
    return app, register_jobs(app)


def register_jobs(app: App) -> Jobs:
    return Jobs(
        app.job(noop),
        app.job(stamp),
        app.job(sleeper),
        app.job(retry=fault_jobs.HOLD_RETRY)(fault_jobs.hold_first_attempt),
        app.job(fault_jobs.note),
        app.job(durable=True)(nap),
    )


# -- figures -------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure: the samples of every repeat, and the target from the issue.

    ``baseline_samples``, when given, are the same measurement made with bare asyncpg code
    (bench/baselines.py), one per repeat, interleaved with the asyncjobs samples. The machine's
    speed drifts between runs, so ``ratio`` (asyncjobs over bare) is the figure that compares
    from one run to the next; the absolute ones only compare within a run.
    """

    name: str
    unit: str
    samples: list[float]
    target: float | None
    higher_is_better: bool
    params: dict[str, Any] = field(default_factory=dict)
    baseline_samples: list[float] | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def baseline(self) -> float | None:
        return None if not self.baseline_samples else statistics.median(self.baseline_samples)

    @property
    def ratio(self) -> float | None:
        """asyncjobs median / bare median: below 1 is slower for a rate, faster for a time."""
        baseline = self.baseline
        return None if not baseline else self.median / baseline

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if self.higher_is_better:
            return self.median >= self.target
        return self.median <= self.target

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out |= {
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target_op": ">=" if self.higher_is_better else "<=",
            "passed": self.passed,
        }
        return out


@dataclass
class Context:
    """What a benchmark is given: where to connect, how big to go, how it was invoked."""

    dsn: str
    quick: bool
    repeats: int
    command: str
    machine: dict[str, Any]

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def note(self, message: str) -> None:
        """A progress line while a benchmark runs (repeats take seconds each)."""
        print(f"    {message}", flush=True)


# -- Postgres ------------------------------------------------------------------------------------


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(dsn: str) -> None:
    """Create the benchmark database if it is missing (connecting to `postgres` to do so)."""
    name = urlsplit(dsn).path.lstrip("/")
    try:
        con = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(_with_database(dsn, "postgres"))
        try:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"use a plain database name in --dsn, not {name!r}")
            await admin.execute(f"CREATE DATABASE {name}")  # a name cannot be a bind parameter
        except asyncpg.DuplicateDatabaseError:
            pass  # another run created it meanwhile
        finally:
            await admin.close()
    else:
        await con.close()


async def fresh_schema(dsn: str, schema: str) -> None:
    """Drop the schema and create it again at the current migration.

    Dropped at the start of a run, never at the end, so the last run can be inspected.
    """
    await drop_schema(dsn, schema)
    # A producer-only app does not migrate, so the schema is created here, the supported way.
    store = make_store(Settings(dsn=dsn, schema=schema))
    await store.open()
    try:
        await store.migrate()
    finally:
        await store.close()


async def drop_schema(dsn: str, schema: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await con.close()


async def state_counts(con: asyncpg.Connection, schema: str) -> dict[str, int]:
    rows = await con.fetch(f"SELECT state::text, count(*) FROM {schema}.{TABLE} GROUP BY state")
    return {r[0]: r[1] for r in rows}


async def count_state(con: asyncpg.Connection, schema: str, state: str) -> int:
    # Inlined (from a fixed set) rather than bound: a literal lets the planner use the partial
    # index of running jobs instead of scanning the whole history.
    if state not in _STATES:
        raise ValueError(f"unknown job state {state!r}")
    value = await con.fetchval(f"SELECT count(*) FROM {schema}.{TABLE} WHERE state = '{state}'")
    return int(value)


def no_jobs_in(schema: str, *states: str) -> str:
    """An SQL expression, true when no job is in any of ``states``: one ``NOT EXISTS`` per
    state, in the order given (evaluation stops at the first that is false).

    The state literals (from a fixed set, as in ``count_state``) let the planner use the
    partial indexes of queued and running jobs: each is one index probe.
    """
    unknown = set(states) - _STATES
    if unknown:
        raise ValueError(f"unknown job state {sorted(unknown)[0]!r}")
    return " AND ".join(
        f"NOT EXISTS (SELECT 1 FROM {schema}.{TABLE} WHERE state = '{state}')" for state in states
    )


async def check_drained(con: asyncpg.Connection, schema: str, n: int) -> None:
    """Raise unless all the jobs of ``schema`` succeeded and there are ``n`` of them.

    Meant for a fresh schema given exactly ``n`` jobs (``drain.enqueue_backlog``): then this
    is the same as n succeeded and none queued or running.
    """
    counts = await state_counts(con, schema)
    if counts != {"succeeded": n}:
        raise RuntimeError(f"after the drain {schema} holds {counts}, not {n} succeeded")


# -- timing --------------------------------------------------------------------------------------

T = TypeVar("T")
U = TypeVar("U")


async def alternate(
    ctx: Context,
    measure: Callable[[], Awaitable[T]],
    bare: Callable[[], Awaitable[U]],
    describe: Callable[[T, U], str],
) -> tuple[list[T], list[U]]:
    """Run a measurement and its bare baseline once per repeat, back to back.

    The pair runs bare first in even repeats and asyncjobs first in odd ones, so that neither
    side always gets the warmer (or the more throttled) slot. Returns both lists of results.
    """
    measured: list[T] = []
    baseline: list[U] = []
    for i in range(ctx.repeats):
        if i % 2 == 0:
            baseline.append(await bare())
            measured.append(await measure())
        else:
            measured.append(await measure())
            baseline.append(await bare())
        ctx.note(f"repeat {i + 1}: {describe(measured[-1], baseline[-1])}")
    return measured, baseline


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float, step: float = 0.001, what: str = ""
) -> None:
    """Poll a cheap in-process predicate with short sleeps; raise if the deadline passes."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what or 'a condition'}")
        await asyncio.sleep(step)


async def timed_drain(app: App, n: int, timeout: float) -> tuple[float, float]:
    """Start ``app``'s node and time it until its completer has written ``n`` outcomes, then
    stop it. Returns (seconds from just before ``app.start()``, of them the start-up's).

    The clock stops on the completer's in-process counter rather than a count query, so the
    measurement adds no load to the database it measures."""
    t0 = time.perf_counter()
    await app.start()
    try:
        started = time.perf_counter()
        completer = app.node.completer
        await wait_until(lambda: completer.flushed >= n, timeout=timeout, what="the drain")
        elapsed = time.perf_counter() - t0
    finally:
        await app.stop()
    return elapsed, started - t0


async def wait_for_count(
    con: asyncpg.Connection,
    schema: str,
    state: str,
    n: int,
    *,
    timeout: float,
    step: float = 0.005,
) -> None:
    """Poll the database until at least ``n`` jobs are in ``state``."""
    deadline = time.perf_counter() + timeout
    while True:
        got = await count_state(con, schema, state)
        if got >= n:
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {got} of {n} jobs reached {state} within {timeout:g} s")
        await asyncio.sleep(step)


# -- machine and results -----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (with uncommitted changes in src/)" if dirty else head


async def machine_info(dsn: str) -> dict[str, Any]:
    con = await asyncpg.connect(dsn)
    try:
        pg_version = await con.fetchval("SHOW server_version")
        pg_settings = {
            name: await con.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")
        }
    finally:
        await con.close()
    parts = urlsplit(dsn)
    return {
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "cpu_model": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "uvloop": version("uvloop"),
        "asyncpg": asyncpg.__version__,
        "asyncjobs": asyncjobs.__version__,
        "commit": _git_commit(),
        "postgres": pg_version,
        "postgres_host": f"{parts.hostname}:{parts.port or 5432}",
        "postgres_settings": pg_settings,
        # Other work on the machine skews every figure; the load says how much there was.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def figure_docs(name: str, figures: list[Figure], ctx: Context) -> list[dict[str, Any]]:
    # The benchmark and command are repeated per figure so that one figure copied elsewhere
    # still says how it was made.
    return [f.to_json() | {"benchmark": name, "command": ctx.command} for f in figures]


def write_results(
    name: str, figures: list[dict[str, Any]], ctx: Context, stamp_: str, position: int
) -> Path:
    """Write ``bench/results/<name>-<timestamp>.json`` and return its path.

    Every file of one run shares the run's timestamp; ``position`` keeps the run's order.
    """
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{stamp_}.json"
    doc = {
        "benchmark": name,
        "timestamp": stamp_,
        "position": position,
        "command": ctx.command,
        "quick": ctx.quick,
        "repeats": ctx.repeats,
        "machine": ctx.machine,
        "figures": figures,
    }
    text = json.dumps(doc, indent=2) + "\n"
    path.write_text(text)
    if not ctx.quick:
        # The newest full-size result of each benchmark is committed (results/latest/), so a
        # run of some benchmarks (--only) on a fresh clone keeps the others' figures.
        LATEST_DIR.mkdir(exist_ok=True)
        (LATEST_DIR / f"{name}.json").write_text(text)
    return path
