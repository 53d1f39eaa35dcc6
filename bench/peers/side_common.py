"""What every side of the peers harness shares. Standard library only: it runs in each venv.

A side is ``python -m bench.peers.<system>_side WORKLOAD --params JSON``, run with that
system's Python. It measures one workload and prints one line, ``RESULT {json}``, as its last
line of output; anything else it says goes to stderr. ``run_side`` does that plumbing.

Inside jobs, ``record`` appends a line to a per-process file in ``$BENCH_PEERS_OUT_DIR``: how a
job hands a measurement (its latency, or "I started") back to the side without a database,
with the same cost in every system. ``percentile`` and ``open_loop`` live here, not in
``bench/common.py`` (which imports asyncjobs, which a peer's venv lacks), and that module
re-exports them for the rest of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = b"ready"
RESULT_PREFIX = "RESULT "
OUT_DIR_ENV = "BENCH_PEERS_OUT_DIR"
WORKER_START_TIMEOUT_S = 60.0

Params = dict[str, Any]
Result = dict[str, Any]


# -- inside jobs ---------------------------------------------------------------------------------


@functools.cache
def _out_fd() -> int:
    path = os.path.join(os.environ[OUT_DIR_ENV], f"{os.getpid()}.out")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def record(line: str) -> None:
    """Append one line to this process's file: one write on an O_APPEND descriptor."""
    os.write(_out_fd(), line.encode() + b"\n")


def read_records(directory: str) -> list[str]:
    lines: list[str] = []
    for path in sorted(Path(directory).glob("*.out")):
        lines += path.read_text().splitlines()
    return lines


def count_records(directory: str) -> int:
    return sum(path.read_bytes().count(b"\n") for path in Path(directory).glob("*.out"))


def records_at_least(directory: str, count: int) -> Callable[[], Awaitable[bool]]:
    """A predicate for ``poll_until``: at least ``count`` lines recorded in ``directory``."""

    async def check() -> bool:
        return count_records(directory) >= count

    return check


def probe_latencies(directory: str) -> Result:
    """The latency figures from the probe jobs' lines (``i latency_s``; warm-ups have i < 0)."""
    latencies = []
    for line in read_records(directory):
        i, value = line.split()
        if int(i) >= 0:
            latencies.append(float(value) * 1000)
    return latency_stats(latencies)


def ready() -> None:
    """Tell the side the worker is up: ``ready`` on file descriptor 1 (under a worker that
    redirects ``sys.stdout`` to its logger, as Celery's does, fd 1 still reaches the side)."""
    os.write(1, READY_LINE + b"\n")


# -- worker processes ----------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{parent}/task/{tid}/children").read_text()
            except OSError:
                continue
            for child in map(int, text.split()):
                out.append(child)
                todo.append(child)
    return out


def rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def uss(pid: int) -> int:
    """Private (unshared) memory in bytes, from smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


class Worker:
    """A system's worker in its own process; a context manager that always ends it.

    Entering starts ``args`` and waits for the ``ready`` line on its stdout; from then a
    thread drains its stdout, so a chatty worker never blocks on a full pipe. ``stop`` asks it
    to stop (SIGTERM), ``kill`` does not ask; both end every process below it too.
    """

    def __init__(self, args: list[str], *, env: Mapping[str, str] | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Self:
        # stderr is inherited: a worker that fails says why in the run's output.
        self.proc = subprocess.Popen(self.args, cwd=REPO_ROOT, stdout=subprocess.PIPE, env=self.env)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        seen = b""
        try:
            while READY_LINE + b"\n" not in seen:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"worker {self.args!r} did not start (said {seen[-200:]!r})")
                readable, _, _ = select.select([fd], [], [], min(left, 0.5))
                if readable:
                    chunk = os.read(fd, 4096)
                    if not chunk and self.proc.poll() is not None:
                        continue
                    seen += chunk
        except BaseException:
            self.kill()
            raise
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        return self

    def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while self.proc.stdout.read(65536):
            pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL (to it and everything below it) if it is still there."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        below = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
        self._kill_all(below)

    def kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._kill_all(descendants(proc.pid))

    def _kill_all(self, below: list[int]) -> None:
        assert self.proc is not None
        for pid in [self.proc.pid, *below]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


# -- measuring -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between the closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_stats(latencies_ms: list[float]) -> Result:
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p90_ms": percentile(latencies_ms, 90),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms),
        "count": len(latencies_ms),
    }


async def open_loop(
    send: Callable[[int], Coroutine[Any, Any, None]], n: int, rate_per_s: float
) -> float:
    """Start ``send(i)`` at t0 + i/rate in its own task, whether or not earlier sends have
    returned; wait for all and return the worst schedule lag in seconds."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    worst = 0.0
    t0 = loop.time() + 0.01
    for i in range(n):
        due = t0 + i / rate_per_s
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        worst = max(worst, loop.time() - due)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)  # raises if any send failed
    return worst


def open_loop_sync(send: Callable[[int], None], n: int, rate_per_s: float) -> float:
    """``open_loop`` for a blocking client: sends one after another on the same schedule (a
    send that overruns its slot delays the next; the worst lag says by how much)."""
    worst = 0.0
    t0 = time.monotonic() + 0.01
    for i in range(n):
        due = t0 + i / rate_per_s
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        worst = max(worst, time.monotonic() - due)
        send(i)
    return worst


async def poll_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, step: float, what: str
) -> float:
    """Await ``predicate`` every ``step`` seconds until true; returns the perf_counter then."""
    deadline = time.perf_counter() + timeout
    while True:
        if await predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(step)


def poll_until_sync(
    predicate: Callable[[], bool], *, timeout: float, step: float, what: str
) -> float:
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(step)


DRAIN_POLL_S = 0.005


def drain_rate(n: int, spawned: float, ready: float, end: float) -> Result:
    """The drain figures from the clock readings of one drain (``time.perf_counter()``).

    The rate runs from the worker saying ``ready`` (its imports done and its connections
    open) until the side sees all N jobs finished, polling every ``DRAIN_POLL_S``: process
    start-up is left out for every system alike, and reported apart.
    """
    return {
        "jobs_per_s": n / (end - ready),
        "timed_s": end - ready,
        "startup_s": ready - spawned,
        "total_s": end - spawned,
    }


def memory_figures(rss_before: int, rss_after: int, n: int, all_started_s: float) -> Result:
    return {
        "bytes_per_job": (rss_after - rss_before) / n,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "n": n,
        "all_started_s": all_started_s,
    }


# -- the side's command line ---------------------------------------------------------------------


def run_side(
    workloads: Mapping[str, Callable[[Params], Result]], worker: Callable[[Params], None]
) -> None:
    """The side's command line: ``worker --params JSON`` runs the system's worker (until it
    is stopped); any other word names a workload, run with its ``--params``, whose result is
    printed as ``RESULT {json}``. A workload runs with ``$BENCH_PEERS_OUT_DIR`` set to a fresh
    directory, which the workers it starts inherit."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=sorted([*workloads, "worker"]))
    parser.add_argument("--params", default="{}", help="the workload's parameters, as JSON")
    args = parser.parse_args()
    params: Params = json.loads(args.params)
    if args.workload == "worker":
        worker(params)
        return
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as out_dir:
        os.environ[OUT_DIR_ENV] = out_dir
        params["out_dir"] = out_dir
        try:
            result = workloads[args.workload](params)
        except Exception:
            traceback.print_exc()
            raise SystemExit(1) from None
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def worker_args(module: str, params: Params) -> list[str]:
    """The command that runs ``module``'s worker with ``params``, with this Python."""
    return [sys.executable, "-m", module, "worker", "--params", json.dumps(params)]


def run_async(
    coro: Coroutine[Any, Any, Result],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> Result:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if it is installed in this venv (it is in every one here)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# Postgres footprint of a table (a fixed name, never user input): all of it (heap, TOAST, free
# space and visibility maps, indexes), the heap's main fork, and its indexes.
PG_SIZE_SQL = (
    "SELECT pg_total_relation_size('{table}'::regclass), pg_relation_size('{table}'::regclass,"
    " 'main'), pg_indexes_size('{table}'::regclass)"
)


def storage_figures(sizes: Mapping[str, tuple[int, int, int]], n: int) -> Result:
    """Per-job bytes from ``PG_SIZE_SQL`` readings of each table: (total, heap, indexes)."""
    return {
        "per_job": sum(total for total, _, _ in sizes.values()) / n,
        "heap_per_job": sum(heap for _, heap, _ in sizes.values()) / n,
        "indexes_per_job": sum(indexes for _, _, indexes in sizes.values()) / n,
        "tables": {
            name: dict(zip(("total", "heap", "indexes"), s, strict=True))
            for name, s in sizes.items()
        },
    }
