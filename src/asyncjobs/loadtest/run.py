"""One load test, from the schema to the clean-up: nodes, load, drain, report.

Bounded in time: everything after the database check runs under ``timeout``. When it passes
(or on the first Ctrl-C or SIGTERM), the load stops and the report covers what was measured.
A second signal abandons the report. In every case the ``finally`` stops the nodes the run
started (SIGTERM, then SIGKILL), and drops the schema if the run created it, unless ``keep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
import asyncpg

from ..settings import Settings, mask_dsn
from .db import LoadTestQueries
from .driver import Driver, LoadResult
from .errors import EXIT_UNAVAILABLE, EXIT_USAGE, LoadTestError
from .jobs import CPU_QUEUE, IO_QUEUE, build_app
from .mix import Mix
from .nodes import LocalCluster, NodeStartError
from .progress import Progress, Snapshot
from .report import NodeFacts, RunFacts, build_report
from .tracker import Tracker

log = logging.getLogger("asyncjobs.loadtest")

SAMPLE_INTERVAL_S = 1.0  # node memory and jobs in flight are sampled this often
FINAL_READ_S = 15.0  # at most this long for the last read of the jobs, after the timeout


@dataclass(frozen=True, slots=True)
class RunConfig:
    dsn: str
    schema: str
    table_prefix: str
    nodes: int  # 0: drive nodes already running
    concurrency: int
    workers: int
    mix: Mix
    rate: float | None  # open loop
    in_flight: int | None  # closed loop
    duration: float | None
    jobs: int | None
    timeout: float
    seed: int
    keep: bool
    show_progress: bool = True

    def describe(self, schema_kept: bool) -> dict[str, Any]:
        return {
            "dsn": mask_dsn(self.dsn), "schema": self.schema, "schema_kept": schema_kept,
            "table_prefix": self.table_prefix, "nodes": self.nodes,
            "concurrency": self.concurrency, "workers": self.workers,
            "mode": "open" if self.rate is not None else "closed", "rate": self.rate,
            "in_flight": self.in_flight, "duration_s": self.duration, "jobs": self.jobs,
            "timeout_s": self.timeout, "seed": self.seed, "mix": self.mix.describe(),
        }  # fmt: skip


class _State:
    """What the run knows so far, for the progress display and the report."""

    def __init__(self) -> None:
        self.phase = "start"
        self.load_started = time.time()
        self.in_flight: list[tuple[float, int, int]] = []
        self.stop_reason = "interrupted"  # what set the stop event: a signal, unless told
        self.ended = time.time()  # when the run stopped waiting for jobs


async def run_loadtest(cfg: RunConfig, *, stderr: TextIO = sys.stderr) -> dict[str, Any]:
    """Run one load test and return its report (``report.build_report``)."""
    settings = Settings(dsn=cfg.dsn, schema=cfg.schema, table_prefix=cfg.table_prefix)
    queries = LoadTestQueries(settings.schema, settings.table_prefix)
    existed = await _check_database(cfg, queries)
    stop = anyio.Event()
    abort = anyio.CancelScope()
    with _signals(stop, abort, stderr):
        app = build_app(settings)
        tracker = Tracker(queries, cfg.dsn)
        driver = Driver(
            app, cfg.mix, tracker, random.Random(cfg.seed), rate=cfg.rate, in_flight=cfg.in_flight
        )
        state = _State()
        log_dir = Path(tempfile.mkdtemp(prefix="asyncjobs-loadtest-"))
        cluster = LocalCluster(
            cfg.nodes, dsn=cfg.dsn, schema=cfg.schema, table_prefix=cfg.table_prefix,
            concurrency=cfg.concurrency, workers=cfg.workers, log_dir=log_dir,
        )  # fmt: skip
        progress = Progress(stderr) if cfg.show_progress else None
        stopped_by = "timeout"
        leftover: dict[str, int] = {}
        try:
            with abort:
                with anyio.move_on_after(cfg.timeout) as hard:
                    await app.start(node=False)  # migrates: a new schema is created here
                    if cfg.nodes:
                        await cluster.start(app.store)
                    else:
                        await _check_running_nodes(app.store, cfg)
                    stopped_by = await _load_and_drain(
                        cfg, driver, tracker, cluster, state, progress, stop
                    )
                if hard.cancelled_caught:
                    stopped_by = "timeout"
                state.phase = "done"
                state.ended = time.time()
                leftover = await _final_read(tracker)
        except NodeStartError as exc:
            raise LoadTestError(str(exc), EXIT_USAGE) from None
        finally:
            with anyio.CancelScope(shield=True):
                if progress is not None:
                    progress.close()
                cluster.sample(time.time() - state.load_started)
                exited = {n.number: n.proc.returncode for n in cluster.crashed()}
                for node in cluster.crashed():
                    stderr.write(
                        f"node {node.number} (pid {node.pid}) exited with status "
                        f"{node.proc.returncode} during the run. Its last output:\n"
                        f"{node.output_tail() or '(nothing)'}\n"
                    )
                await cluster.stop()
                with anyio.move_on_after(10):
                    await app.stop()
                if not existed and not cfg.keep:
                    await _drop_schema(cfg.dsn, queries)
                shutil.rmtree(log_dir, ignore_errors=True)
        if abort.cancelled_caught:
            raise KeyboardInterrupt
    result = driver.result
    started = result.started or state.ended  # the load never began if it is still 0
    facts = RunFacts(
        config=cfg.describe(schema_kept=existed or cfg.keep),
        started=started, load_ended=result.ended or state.ended, ended=state.ended,
        stopped_by=stopped_by, submitted=dict(tracker.submitted),
        enqueue_errors=dict(tracker.enqueue_errors), enqueued_jobs=tracker.enqueued_jobs,
        jobs=tracker.jobs, workflows=tracker.workflows, unfinished=leftover,
        enqueue_call_s=tracker.enqueue_call_s,
        max_lag_s=result.max_lag_s if cfg.rate is not None else None,
        nodes=[NodeFacts(n.number, n.pid, exited.get(n.number), n.samples)
               for n in cluster.nodes],
        in_flight=state.in_flight,
    )  # fmt: skip
    return build_report(facts)


async def _load_and_drain(
    cfg: RunConfig,
    driver: Driver,
    tracker: Tracker,
    cluster: LocalCluster,
    state: _State,
    progress: Progress | None,
    stop: anyio.Event,
) -> str:
    """The load phase, then the wait for the last jobs; returns what stopped the load."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(tracker.run)
        state.load_started = time.time()
        tg.start_soon(_sample, cluster, tracker, state, stop)
        if progress is not None:
            tg.start_soon(_show_progress, progress, tracker, state)
        state.phase = "load"
        load: LoadResult = await driver.run(duration=cfg.duration, jobs=cfg.jobs, stop=stop)
        state.phase = "drain"
        if not stop.is_set():
            async with anyio.create_task_group() as drain:
                drain.start_soon(_cancel_when, stop, drain.cancel_scope)
                await tracker.wait_idle()
                drain.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    return state.stop_reason if stop.is_set() else load.stopped_by


async def _final_read(tracker: Tracker) -> dict[str, int]:
    """The jobs still unfinished, by state, after one last read (bounded in time)."""
    with anyio.move_on_after(FINAL_READ_S):
        try:
            return await tracker.final_read()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("the last read of the run's jobs failed: %s", exc)
    return {"unread": tracker.jobs_in_flight}


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _sample(
    cluster: LocalCluster, tracker: Tracker, state: _State, stop: anyio.Event
) -> None:
    """Sample node memory and jobs in flight; stop the run if every node it started died
    (nothing would run the jobs, and waiting would only end at the timeout)."""
    while True:
        t = time.time() - state.load_started
        cluster.sample(t)
        state.in_flight.append((t, tracker.submissions_in_flight, tracker.jobs_in_flight))
        if cluster.nodes and len(cluster.crashed()) == len(cluster.nodes) and not stop.is_set():
            state.stop_reason = "nodes exited"
            stop.set()
        await anyio.sleep(SAMPLE_INTERVAL_S)


async def _show_progress(progress: Progress, tracker: Tracker, state: _State) -> None:
    last_t, last_done = time.monotonic(), 0
    while True:
        await anyio.sleep(progress.interval)
        now, done = time.monotonic(), tracker.finished_jobs
        progress.show(
            Snapshot(
                elapsed_s=time.time() - state.load_started,
                phase=state.phase,
                enqueued=tracker.enqueued_jobs,
                finished=done,
                done_per_s=(done - last_done) / max(now - last_t, 1e-9),
                in_flight=tracker.jobs_in_flight,
                errors=tracker.errors,
                recent_finish_s=tracker.take_recent(),
            )
        )
        last_t, last_done = now, done


# -- the database, before and after -----------------------------------------------------------


async def _check_database(cfg: RunConfig, queries: LoadTestQueries) -> bool:
    """Whether the schema exists already; raises ``LoadTestError`` if the database cannot be
    reached, or if nodes are to be driven on a schema that does not exist."""
    try:
        con = await asyncpg.connect(cfg.dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise LoadTestError(
            f"cannot connect to {mask_dsn(cfg.dsn)}: {exc}. Check --dsn and that Postgres "
            "is running",
            EXIT_UNAVAILABLE,
        ) from None
    try:
        existed = await queries.schema_exists(con)
    finally:
        await con.close()
    if cfg.nodes == 0 and not existed:
        raise LoadTestError(
            f"schema {cfg.schema!r} does not exist, so no node runs on it. With --nodes 0, pass "
            "the --schema of nodes started with `asyncjobs node --app "
            "asyncjobs.loadtest.jobs:app`, or let the harness start nodes (--nodes 2)"
        )
    return existed


async def _check_running_nodes(store: Any, cfg: RunConfig) -> None:
    served = {q for node in await store.live_nodes() for q in node.queues}
    fractions = cfg.mix.fractions
    needed = [IO_QUEUE] if fractions.get("io", 0) + fractions.get("workflow", 0) > 0 else []
    needed += [CPU_QUEUE] if fractions.get("cpu", 0) > 0 else []
    missing = [q for q in needed if q not in served]
    if missing:
        raise LoadTestError(
            f"no running node on schema {cfg.schema!r} serves queue {missing[0]!r}. Start nodes "
            "with `asyncjobs node --app asyncjobs.loadtest.jobs:app --schema "
            f"{cfg.schema}`, or let the harness start them (--nodes 2)"
        )


async def _drop_schema(dsn: str, queries: LoadTestQueries) -> None:
    with anyio.move_on_after(30), contextlib.suppress(Exception):
        con = await asyncpg.connect(dsn, timeout=10)
        try:
            await queries.drop_schema(con)
        finally:
            await con.close()


@contextlib.contextmanager
def _signals(stop: anyio.Event, abort: anyio.CancelScope, stderr: TextIO) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop the load and report. Second: abandon the report."""
    loop = asyncio.get_running_loop()
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            stderr.write(
                f"\n{signal.Signals(signum).name}: stopping the load and reporting what was "
                "measured (again to abandon the report)\n"
            )
            stop.set()
        else:
            abort.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
