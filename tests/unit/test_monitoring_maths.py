"""The CPU-vs-IO classification and the CPU meter of coroutine jobs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from asyncjobs.monitoring import classify
from asyncjobs.node.cputime import metered
from asyncjobs.store.base import JobStats, Throughput, stats_bucket


def stats(cpu: float, timed_wall: float, timed: int = 10) -> JobStats:
    return JobStats("j", 10, 0, 0.0, timed_wall, cpu, timed, timed_wall, 1.0)


@pytest.mark.parametrize(
    ("cpu", "wall", "kind"),
    [(9.0, 10.0, "cpu-bound"), (5.0, 10.0, "cpu-bound"), (4.9, 10.0, "mixed"),
     (1.01, 10.0, "mixed"), (1.0, 10.0, "io-bound"), (0.0, 10.0, "io-bound")],
)  # fmt: skip
def test_a_job_is_classified_by_its_cpu_share(cpu: float, wall: float, kind: str) -> None:
    assert classify(stats(cpu, wall)).kind == kind


def test_a_job_without_cpu_times_is_unmeasured() -> None:
    c = classify(stats(0.0, 0.0, timed=0))
    assert c.kind == "unmeasured" and c.cpu_share is None


def test_the_share_never_exceeds_one() -> None:
    assert classify(stats(12.0, 10.0)).cpu_share == 1.0  # clocks of different resolution


def test_throughput_per_second_and_buckets() -> None:
    assert Throughput(60.0, {"succeeded": 90, "failed": 30}).per_s == 2.0
    assert Throughput(0.0, {}).per_s == 0.0
    assert stats_bucket(1234.5) == 1230.0 and stats_bucket(1240.0) == 1240.0


class Job:
    cpu: float | None = None


async def test_the_meter_passes_values_exceptions_and_results_through() -> None:
    async def body() -> Any:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, 41)
        got = await fut
        try:
            await asyncio.sleep(0)
            raise KeyError("inner")
        except KeyError:
            pass
        return got + 1

    job = Job()
    assert await metered(body(), job) == 42  # type: ignore[arg-type]
    assert job.cpu is not None and job.cpu >= 0.0

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("out")

    with pytest.raises(ValueError, match="out"):
        await metered(boom(), Job())  # type: ignore[arg-type]


async def test_the_meter_lets_the_job_see_and_handle_its_cancellation() -> None:
    seen = asyncio.Event()
    started = asyncio.Event()

    async def body() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.set()
            raise
        return "not reached"

    task = asyncio.ensure_future(metered(body(), Job()))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen.is_set()


async def test_the_meter_counts_the_jobs_own_steps_not_its_waits() -> None:
    # The step holds the loop for 0.05 s of wall time, which is what the meter reads (the
    # monotonic clock): a busy machine that preempts the test cannot stretch it. The wait is
    # ten times as long, so counting it could not pass unnoticed.
    async def body() -> None:
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0.5)  # waiting: not counted

    job = Job()
    await metered(body(), job)  # type: ignore[arg-type]
    assert job.cpu is not None and 0.05 <= job.cpu < 0.3


def test_node_stats_sum_per_bucket_name_and_outcome_and_survive_a_failed_write() -> None:
    from asyncjobs.node.stats import NodeStats

    stats = NodeStats()
    stats.add("a", "succeeded", 1001.0, 0.5, 2.0, 1.0)
    stats.add("a", "succeeded", 1009.9, 0.5, 4.0, None)  # same bucket, CPU not measured
    stats.add("a", "scheduled", 1002.0, 0.0, 1.0, 0.1)  # a retry
    stats.add("a", "succeeded", 1010.0, 0.0, 1.0, 0.2)  # the next bucket
    rows = {(r.bucket, r.outcome): r for r in stats.take()}
    assert stats.take() == []
    first = rows[(1000.0, "succeeded")]
    assert (first.attempts, first.wait_s, first.wall_s, first.max_wall_s) == (2, 1.0, 6.0, 4.0)
    assert (first.timed, first.timed_wall_s, first.cpu_s) == (1, 2.0, 1.0)
    assert rows[(1000.0, "retried")].attempts == 1 and rows[(1010.0, "succeeded")].attempts == 1

    stats.give_back(list(rows.values()))  # the heartbeat failed
    stats.add("a", "succeeded", 1005.0, 1.0, 8.0, 2.0)
    merged = {(r.bucket, r.outcome): r for r in stats.take()}
    again = merged[(1000.0, "succeeded")]
    assert (again.attempts, again.wait_s, again.max_wall_s, again.timed) == (3, 2.0, 8.0, 2)
    assert len(merged) == 3
