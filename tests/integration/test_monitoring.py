"""Per-job timings and the nodes' statistics, measured by real nodes on both stores.

A job that burns CPU and one that sleeps for the same time must come out CPU-bound and
IO-bound, whether they run as coroutines or in pool workers; the statistics must count what
the nodes finished; and a node must report its pool's workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from asyncjobs import App, JobFailedError, MemoryStore, Settings
from asyncjobs.monitoring import classify, snapshot
from tests import pool_jobs
from tests.helpers import wait_until

RUN_S = 0.2
TIMEOUT = 30


async def spin_here(seconds: float) -> float:
    """Burn the event loop's CPU (a CPU-bound coroutine: exactly what not to write)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return seconds


async def nap_here(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def spin_between_naps(seconds: float) -> float:
    """Half CPU, half waiting, over several steps."""
    for _ in range(4):
        await spin_here(seconds / 8)
        await asyncio.sleep(seconds / 8)
    return seconds


def build(settings: Settings, store: MemoryStore | None = None) -> App:
    app = pool_jobs.build_app(settings, store)
    for fn in (spin_here, nap_here, spin_between_naps):
        app.job()(fn)
    return app


async def test_each_attempt_records_its_run_and_cpu_time(any_settings: Settings) -> None:
    async with build(any_settings) as app:
        ids = {
            name: await app.enqueue(name, RUN_S)
            for name in ("spin_here", "nap_here", "spin", "nap", "spin_between_naps")
        }
        for job_id in ids.values():
            await app.result(job_id, timeout=TIMEOUT)
        jobs = {name: await app.get(job_id) for name, job_id in ids.items()}
    for name, record in jobs.items():
        assert record.wall_s is not None and record.wall_s >= RUN_S * 0.9, (name, record.wall_s)
        assert record.cpu_s is not None, name
        assert record.queue_wait_s is not None and record.queue_wait_s < TIMEOUT
    for cpu_bound in ("spin_here", "spin"):  # a coroutine, and a pool worker
        assert jobs[cpu_bound].cpu_s >= RUN_S * 0.8, (cpu_bound, jobs[cpu_bound].cpu_s)
    for io_bound in ("nap_here", "nap"):
        assert jobs[io_bound].cpu_s < RUN_S * 0.25, (io_bound, jobs[io_bound].cpu_s)
    # Only the steps of the job itself count, not the loop's other work while it waits: its
    # four naps (half of RUN_S) stay out. Bounded by its own run time rather than by RUN_S,
    # because the meter reads the monotonic clock: on a loaded machine a spinning step that
    # is preempted takes longer than its CPU time, and so does the whole run.
    mixed = jobs["spin_between_naps"]
    assert mixed.cpu_s is not None and mixed.wall_s is not None
    assert RUN_S * 0.4 <= mixed.cpu_s <= mixed.wall_s - RUN_S / 2 * 0.9, (mixed.cpu_s, mixed.wall_s)


async def test_the_report_classifies_cpu_bound_and_io_bound_jobs(any_settings: Settings) -> None:
    started = time.time()
    async with build(any_settings) as app:
        ids = [await app.enqueue(name, RUN_S) for name in ("spin_here", "nap_here", "spin", "nap")]
        ids += [await app.enqueue("fail", "no disk")]
        for job_id in ids:
            with contextlib.suppress(JobFailedError):
                await app.result(job_id, timeout=TIMEOUT)

        # The node writes its statistics with its heartbeat (every 0.5 s here).
        async def all_counted() -> bool:
            stats = await app.store.job_stats(started - 10)
            return sum(s.attempts for s in stats) == 5

        await wait_until(all_counted, timeout=TIMEOUT, what="the statistics of 5 attempts")
        stats = {s.name: s for s in await app.store.job_stats(started - 10)}
        shares = {name: classify(s).cpu_share for name, s in stats.items()}
        # A spinning job's share is 1 on an idle machine; other processes on a loaded one
        # stretch its run time, never its CPU time, so the bound is loose on purpose.
        assert shares["spin_here"] >= 0.3 and shares["spin"] >= 0.3, (shares, stats)
        assert shares["nap_here"] <= 0.1 and shares["nap"] <= 0.1, (shares, stats)
        assert classify(stats["nap"]).kind == "io-bound"
        assert stats["fail"].attempts == stats["fail"].failed == 1
        assert stats["spin"].attempts == 1 and stats["spin"].max_wall_s >= RUN_S * 0.9
        assert stats["nap_here"].wait_s >= 0

        throughput = await app.store.throughput(time.time(), 60.0)
        assert throughput.finished == {"succeeded": 4, "failed": 1}
        assert 60.0 <= throughput.window_s <= 80.0
        assert await app.store.job_stats(time.time() + 60) == []  # nothing in the future


async def test_cpu_is_not_measured_when_turned_off(any_settings: Settings) -> None:
    async with build(any_settings.replace(measure_cpu=False)) as app:
        job_id = await app.enqueue("spin_here", 0.01)
        await app.result(job_id, timeout=TIMEOUT)
        record = await app.get(job_id)
    assert record.cpu_s is None and record.wall_s is not None


async def test_status_shows_each_node_with_its_pool_workers(any_settings: Settings) -> None:
    async with build(any_settings.replace(workers_min=2)) as app:
        await app.result(await app.enqueue("echo", 1), timeout=TIMEOUT)

        async def two_workers_reported() -> bool:
            nodes = (await snapshot(app.store)).nodes
            return len(nodes) == 1 and nodes[0].workers == 2

        await wait_until(two_workers_reported, timeout=TIMEOUT, what="a heartbeat with workers")

        async def counted() -> bool:
            return (await snapshot(app.store)).throughput.finished == {"succeeded": 1}

        await wait_until(counted, timeout=TIMEOUT, what="the finished job in the throughput")


async def test_old_statistics_are_pruned_with_the_jobs(any_settings: Settings) -> None:
    async with build(any_settings) as app:
        await app.result(await app.enqueue("nap_here", 0.0), timeout=TIMEOUT)

        async def counted() -> bool:
            return bool(await app.store.job_stats(0.0))

        await wait_until(counted, timeout=TIMEOUT, what="the statistics")
        await app.store.prune_rest(-3600.0, 3600.0)  # everything is older than "an hour ahead"
        assert await app.store.job_stats(0.0) == []


async def test_a_stopping_node_writes_its_last_statistics(any_settings: Settings) -> None:
    # A heartbeat far in the future: only the node's last write can carry the statistics.
    settings = any_settings.replace(heartbeat_interval_s=600.0, node_timeout_s=1200.0)
    memory = MemoryStore() if settings.dsn == "memory://" else None
    async with build(settings, memory) as app:
        await app.result(await app.enqueue("nap_here", 0.0), timeout=TIMEOUT)
        assert await app.store.job_stats(0.0) == []
    async with App(settings=any_settings, store=memory) as reader:
        (stats,) = await reader.store.job_stats(0.0)
    assert stats.name == "nap_here" and stats.attempts == 1
