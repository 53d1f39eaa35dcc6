"""Jobs for the fault benchmarks (reap, pg_restart), registered on every benchmark app.

- ``hold_first_attempt``: retryable; its first attempt sleeps (its node gets killed meanwhile),
  later attempts end at once, so the re-run after a reap is cheap and finishes.
- ``note``: sleeps, then appends ``"<job id> <attempt>"`` to this process's file in
  ``$BENCH_RUNS_DIR``: a record of every execution kept outside the database, so "each job ran
  exactly once" is counted rather than assumed from the job table.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

from asyncjobs import JobContext, Retry

RUNS_DIR_ENV = "BENCH_RUNS_DIR"  # not ASYNCJOBS_*: Settings.from_env rejects unknown names
# Two attempts: the one the killed node started, and the re-run. The reaper re-queues with
# run_at = now, so the backoff never applies to that re-run.
HOLD_RETRY = Retry(attempts=2, backoff=0.1)


async def hold_first_attempt(ctx: JobContext, seconds: float) -> int:
    if ctx.attempt == 1:
        await asyncio.sleep(seconds)
    return ctx.attempt


async def note(ctx: JobContext, seconds: float = 0.0) -> None:
    if seconds:
        await asyncio.sleep(seconds)
    # One write of one line on an O_APPEND descriptor: whole lines even if the node is killed.
    os.write(_runs_fd(), f"{ctx.job_id} {ctx.attempt}\n".encode())


@functools.cache
def _runs_fd() -> int:
    path = os.path.join(os.environ[RUNS_DIR_ENV], f"{os.getpid()}.runs")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def read_runs(directory: Path) -> list[tuple[str, int]]:
    """Every execution noted in ``directory``, by any process: (job id, attempt)."""
    out: list[tuple[str, int]] = []
    for path in sorted(directory.glob("*.runs")):
        for line in path.read_text().splitlines():
            job_id, attempt = line.split()
            out.append((job_id, int(attempt)))
    return out
