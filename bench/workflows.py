"""workflows: submitting a large workflow, running a wide DAG, and the overhead of a chain step.

Every workflow here is made of one job, ``async def noop(*args): return None``: a chain step
receives its parent's result (a chord callback the list of its group's) as its first
argument, which the no-op accepts and ignores.

Three measurements, each repeat in a fresh schema (dropped again at its end):

- **submit**: ``chain(chord(group(W no-ops), noop), ...)``, C chords of W members chained:
  C x (W + 1) jobs and about 2 x C x W edges. A producer-only app (``node=False``, so nothing
  runs the jobs) first submits a small workflow of the same shape (connection open, code
  warm); the workflow is built before the clock starts, and the figure is ``app.submit``
  alone. The status afterwards must show every job stored: the first group ``queued``, the
  rest ``waiting``. Peak memory is measured in a fresh child process
  (``python -m bench.workflows memory ...``), the same warm-up first, over building the chain
  *and* submitting it: once without tracing, for the peak RSS growth (the peak RSS, reset to
  the current RSS just before through ``/proc/self/clear_refs``, minus the RSS before), then
  again under ``tracemalloc``, for the peak of Python allocations. A child, because in this
  process earlier repeats (and benchmarks) leave freed memory behind that would hide the
  growth.
- **dag**: the same shape, run by a node embedded in this process (``concurrency`` 500; at
  most W + 1 jobs are ever ready at once). After a small warm-up workflow has run, timed from
  the return of ``app.submit`` until ``app.workflow_result`` returns (the last callback's
  completion, by NOTIFY): executing the DAG, in jobs / second. ``workflow_dag_with_submit``
  starts the clock before ``app.submit`` instead. The status must then be ``succeeded`` with
  every job counted. Measured twice: as a fresh schema is (``workflow_dag``: the tables
  never analyzed, as for a first workflow), and with ``VACUUM ANALYZE`` of the jobs and edges
  after the warm-up (``workflow_dag_analyzed``: statistics as autovacuum would provide, as
  bench/drain.py does). The plans must not depend on them; the two figures show whether
  they do.
- **chain**: ``chain(noop, noop, ...)`` of N steps on the same embedded node, timed the same
  way; the figure is the wall time per step. Each step's row is then read back (ordered by id:
  ids are UUIDv7, increasing in the order the steps were added): the gap from one step's
  ``finished_at`` to the next one's ``started_at`` (both the node's clock) is what the
  workflow machinery adds between two steps: the completion's round trip, the release of the
  dependent, its NOTIFY and the claim.

No bare baseline: plain asyncpg has no workflows to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import sys
import time
import tracemalloc
from itertools import pairwise
from typing import Any

import asyncpg
import psutil
import uvloop

from asyncjobs import App, JobDef, Settings, WorkflowId, WorkflowStatus, chain, chord, group
from asyncjobs.workflows import Chain

from .common import (
    REPO_ROOT,
    TABLE,
    Context,
    Figure,
    drop_schema,
    fresh_schema,
    percentile,
)

NAME = "workflows"
SCHEMA = "bench_workflows"
DEPS_TABLE = "asyncjobs_job_deps"  # the edges table under the default table prefix
CONCURRENCY = 500  # ample: at most one group and its callback (W + 1 jobs) are ever ready
TARGET_SUBMIT_S = 1.0
TARGET_SUBMIT_MB = 30.0
TARGET_DAG_JOBS_PER_S = 10_000.0
TARGET_CHAIN_GAP_MS = 3.0
WARMUP_CHORDS = 2
WARMUP_WIDTH = 10
RUN_TIMEOUT_S = 120.0
CHILD_TIMEOUT_S = 120.0
MB = 1_000_000


async def noop(*_: Any) -> None:
    return None


def make_app(dsn: str, schema: str, **settings: Any) -> tuple[App, JobDef[..., None]]:
    """An app on this schema with the ``noop`` job registered, and that job."""
    app = App(settings=Settings(dsn=dsn, schema=schema, **settings))
    return app, app.job(noop)


def chained_chords(job: JobDef[..., None], chords: int, width: int) -> Chain:
    """``chain(chord(group(width x job), job), ...)``, ``chords`` times: chords x (width + 1)
    jobs."""
    return chain(*(chord(group(job.s() for _ in range(width)), job.s()) for _ in range(chords)))


def shape(chords: int, width: int) -> str:
    return f"chain of {chords} chords, each a group of {width} no-ops and a no-op callback"


async def check_status(
    app: App, workflow_id: WorkflowId, n: int, expected: dict[str, int]
) -> WorkflowStatus:
    """Raise unless the workflow has ``n`` jobs, in exactly the states of ``expected``."""
    status = await app.workflow_status(workflow_id)
    counts = {state: count for state, count in status.counts.items() if count}
    if status.total != n or counts != expected:
        raise RuntimeError(
            f"workflow {workflow_id} is {status.state} with {status.total} jobs {counts}, not "
            f"{n} jobs {expected}; failures: {status.failures[:3]}"
        )
    return status


async def check_succeeded(app: App, workflow_id: WorkflowId, n: int) -> None:
    status = await check_status(app, workflow_id, n, {"succeeded": n})
    if status.state != "succeeded":
        raise RuntimeError(f"workflow {workflow_id} ended {status.state}, not succeeded")


async def run_to_end(app: App, workflow: Chain, n: int) -> tuple[WorkflowId, float, float]:
    """Submit and wait for the end; returns (id, seconds in all, seconds in submit)."""
    t0 = time.perf_counter()
    workflow_id = await app.submit(workflow)
    submitted = time.perf_counter()
    await app.workflow_result(workflow_id, timeout=RUN_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    await check_succeeded(app, workflow_id, n)
    return workflow_id, elapsed, submitted - t0


async def warm_up(app: App, job: JobDef[..., None], *, wait: bool) -> None:
    n = WARMUP_CHORDS * (WARMUP_WIDTH + 1)
    workflow_id = await app.submit(chained_chords(job, WARMUP_CHORDS, WARMUP_WIDTH))
    if wait:
        await app.workflow_result(workflow_id, timeout=RUN_TIMEOUT_S)
        await check_succeeded(app, workflow_id, n)


def submitted_counts(chords: int, width: int) -> dict[str, int]:
    """Just after submitting chained_chords: the first group queued, the rest waiting."""
    return {"queued": width, "waiting": chords * (width + 1) - width}


# -- submit ------------------------------------------------------------------------------------


async def _submit_once(dsn: str, chords: int, width: int) -> dict[str, float]:
    """One repeat: the submit time (s) and, from a child, the memory figures (bytes)."""
    n = chords * (width + 1)
    await fresh_schema(dsn, SCHEMA)
    try:
        app, job = make_app(dsn, SCHEMA)
        await app.start(node=False)
        try:
            await warm_up(app, job, wait=False)
            workflow = chained_chords(job, chords, width)
            t0 = time.perf_counter()
            workflow_id = await app.submit(workflow)
            elapsed = time.perf_counter() - t0
            await check_status(app, workflow_id, n, submitted_counts(chords, width))
        finally:
            await app.stop()
        memory = await _memory_in_child(dsn, chords, width)
    finally:
        await drop_schema(dsn, SCHEMA)
    return {"submit_s": elapsed, **memory}


async def _memory_in_child(dsn: str, chords: int, width: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.workflows", "memory", "--dsn", dsn, "--schema", SCHEMA,
        "--chords", str(chords), "--width", str(width),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(
            f"the memory child exited with {proc.returncode}:\n{err.decode(errors='replace')}"
        )
    result: dict[str, float] = json.loads(out)
    return result


async def _memory_child(dsn: str, schema: str, chords: int, width: int) -> dict[str, float]:
    """In the child: peak memory growth over building and submitting, in bytes."""
    n = chords * (width + 1)
    process = psutil.Process()
    app, job = make_app(dsn, schema)
    await app.start(node=False)
    try:
        await warm_up(app, job, wait=False)
        gc.collect()
        peak_reset = reset_peak_rss()
        rss_before = process.memory_info().rss
        peak_before = peak_rss()
        workflow_id = await app.submit(chained_chords(job, chords, width))
        peak_after = peak_rss()
        rss_after = process.memory_info().rss
        await check_status(app, workflow_id, n, submitted_counts(chords, width))
        gc.collect()
        tracemalloc.start()
        try:
            workflow_id = await app.submit(chained_chords(job, chords, width))
            _, traced_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await check_status(app, workflow_id, n, submitted_counts(chords, width))
    finally:
        await app.stop()
    return {
        "traced_peak": traced_peak,
        "peak_rss_growth": peak_after - rss_before,
        # Where the peak could not be reset, one reached before (imports, warm-up) hides part
        # of the growth: this says by how much it exceeded the RSS when the measurement began.
        "peak_rss_headroom": peak_before - rss_before,
        "peak_rss_reset": peak_reset,
        "rss_growth": rss_after - rss_before,
    }


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux 4.0+); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM, which reset_peak_rss resets, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- the DAG and the chain -----------------------------------------------------------------------


async def analyze(dsn: str, schema: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        for table in (TABLE, DEPS_TABLE):
            await con.execute(f"VACUUM ANALYZE {schema}.{table}")
    finally:
        await con.close()


async def _dag_once(dsn: str, chords: int, width: int, *, analyzed: bool) -> tuple[float, float]:
    """One repeat: (jobs per second from submit to the end, seconds in submit)."""
    n = chords * (width + 1)
    await fresh_schema(dsn, SCHEMA)
    try:
        app, job = make_app(dsn, SCHEMA, concurrency=CONCURRENCY)
        async with app:
            await warm_up(app, job, wait=True)
            if analyzed:
                await analyze(dsn, SCHEMA)
            workflow = chained_chords(job, chords, width)
            _, elapsed, submit_s = await run_to_end(app, workflow, n)
    finally:
        await drop_schema(dsn, SCHEMA)
    return n / elapsed, submit_s


async def _chain_once(dsn: str, n: int) -> tuple[float, list[float]]:
    """One repeat: (ms of wall time per step, the n - 1 gaps between steps in ms)."""
    await fresh_schema(dsn, SCHEMA)
    try:
        app, job = make_app(dsn, SCHEMA, concurrency=CONCURRENCY)
        async with app:
            await warm_up(app, job, wait=True)
            workflow = chain(*(job.s() for _ in range(n)))
            workflow_id, elapsed, _ = await run_to_end(app, workflow, n)
        con = await asyncpg.connect(dsn)
        try:
            rows = await con.fetch(
                f"SELECT started_at, finished_at FROM {SCHEMA}.{TABLE}"
                " WHERE workflow_id = $1 ORDER BY id",
                workflow_id,
            )
        finally:
            await con.close()
    finally:
        await drop_schema(dsn, SCHEMA)
    if len(rows) != n or any(r["started_at"] is None or r["finished_at"] is None for r in rows):
        raise RuntimeError(f"the chain's {len(rows)} rows are not {n} started and finished ones")
    gaps = [
        (after["started_at"] - before["finished_at"]).total_seconds() * 1000
        for before, after in pairwise(rows)
    ]
    if min(gaps) < 0:
        raise RuntimeError(f"a step started {-min(gaps):.3f} ms before its parent finished")
    return elapsed * 1000 / n, gaps


# -- run -----------------------------------------------------------------------------------------


async def run(ctx: Context) -> list[Figure]:
    chords = ctx.size(100, 10)
    width = ctx.size(100, 10)
    chain_n = ctx.size(1_000, 50)
    n = chords * (width + 1)

    submits: list[dict[str, float]] = []
    for i in range(ctx.repeats):
        submits.append(await _submit_once(ctx.dsn, chords, width))
        s = submits[-1]
        ctx.note(
            f"submit {i + 1}: {s['submit_s']:.3f} s for {n:,} jobs; peak "
            f"{s['traced_peak'] / MB:.1f} MB traced, {s['peak_rss_growth'] / MB:.1f} MB RSS"
        )
    dags: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for i in range(ctx.repeats):
        for analyzed, runs in dags.items():
            runs.append(await _dag_once(ctx.dsn, chords, width, analyzed=analyzed))
        ctx.note(
            f"dag {i + 1}: {dags[False][-1][0]:,.0f} jobs/s; after ANALYZE "
            f"{dags[True][-1][0]:,.0f} jobs/s ({n:,} jobs)"
        )
    chains: list[tuple[float, list[float]]] = []
    for i in range(ctx.repeats):
        chains.append(await _chain_once(ctx.dsn, chain_n))
        per_step, gaps = chains[-1]
        ctx.note(
            f"chain {i + 1}: {per_step:.2f} ms/step, gap p50 {percentile(gaps, 50):.2f} ms "
            f"({chain_n:,} steps)"
        )

    all_gaps = [gaps for _, gaps in chains]
    # One dict for every figure (RESULTS.md lists a benchmark's parameters once), prefixed by
    # measurement as in bench/pool.py; lists stay in the JSON.
    params = {
        "job": "async def noop(*args): return None",
        "shape": shape(chords, width),
        "jobs": n,
        "edges": 2 * chords * width - width,
        "warmup": f"a workflow of {WARMUP_CHORDS} chords of {WARMUP_WIDTH}, first",
        "submit_app": "producer only (start(node=False))",
        "submit_timed": "await app.submit(workflow), the chain built before the clock",
        "submit_memory": "a fresh child process (python -m bench.workflows memory), after the "
        "warm-up, over building the chain and submitting it: peak RSS growth = VmHWM after "
        "(reset through /proc/self/clear_refs just before) minus VmRSS before, no tracing; "
        "Python peak = tracemalloc peak of a second build and submit",
        "submit_peak_rss_reset": "yes" if all(s["peak_rss_reset"] for s in submits) else "no",
        "submit_rss_growth_after_mb": [s["rss_growth"] / MB for s in submits],
        "submit_peak_rss_headroom_mb": [s["peak_rss_headroom"] / MB for s in submits],
        "node": "embedded (async with app), this process",
        "concurrency": CONCURRENCY,
        "dag_timed": "workflow_dag(_analyzed): app.submit() returned until "
        "app.workflow_result() returns; workflow_dag_with_submit: from before app.submit()",
        "dag_statistics": "workflow_dag: none (fresh tables); workflow_dag_analyzed: VACUUM "
        "ANALYZE of the jobs and edges tables after the warm-up",
        "dag_submit_s_median": statistics.median(s for _, s in dags[False]),
        "dag_submit_s": [s for _, s in dags[False]],
        "dag_analyzed_submit_s": [s for _, s in dags[True]],
        "chain_steps": chain_n,
        "chain_timed": "app.submit() until app.workflow_result() returns, over steps",
        "chain_gap": "next step's started_at minus this step's finished_at (node clock)",
        "chain_gap_ms_p90": [percentile(g, 90) for g in all_gaps],
        "chain_gap_ms_p99": [percentile(g, 99) for g in all_gaps],
        "chain_gap_ms_max": [max(g) for g in all_gaps],
    }
    return [
        Figure(
            name="workflow_submit",
            unit="s",
            samples=[s["submit_s"] for s in submits],
            target=TARGET_SUBMIT_S,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="workflow_submit_py_peak",
            unit="MB",
            samples=[s["traced_peak"] / MB for s in submits],
            target=TARGET_SUBMIT_MB,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="workflow_submit_rss_peak",
            unit="MB",
            samples=[s["peak_rss_growth"] / MB for s in submits],
            target=TARGET_SUBMIT_MB,
            higher_is_better=False,
            params=params,
        ),
        # Executing the DAG: from the end of the submit to the end of the workflow.
        *(
            Figure(
                name="workflow_dag_analyzed" if analyzed else "workflow_dag",
                unit="jobs/s",
                samples=[n / (n / rate - submit_s) for rate, submit_s in runs],
                target=TARGET_DAG_JOBS_PER_S,
                higher_is_better=True,
                params=params,
            )
            for analyzed, runs in dags.items()
        ),
        Figure(
            name="workflow_dag_with_submit",
            unit="jobs/s",
            samples=[rate for rate, _ in dags[False]],
            target=None,
            higher_is_better=True,
            params=params,
        ),
        Figure(
            name="workflow_chain_per_step",
            unit="ms",
            samples=[per_step for per_step, _ in chains],
            target=None,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="workflow_chain_gap_p50",
            unit="ms",
            samples=[percentile(gaps, 50) for gaps in all_gaps],
            target=TARGET_CHAIN_GAP_MS,
            higher_is_better=False,
            params=params,
        ),
    ]


# -- the memory child ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workflows")
    sub = parser.add_subparsers(dest="command", required=True)
    memory = sub.add_parser("memory", help="print the submit's peak memory growth as JSON")
    memory.add_argument("--dsn", required=True)
    memory.add_argument("--schema", required=True)
    memory.add_argument("--chords", type=int, required=True)
    memory.add_argument("--width", type=int, required=True)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(_memory_child(args.dsn, args.schema, args.chords, args.width))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
