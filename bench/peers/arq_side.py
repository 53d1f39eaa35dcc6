"""The arq side of the peers harness, run with ``bench/.peers/arq``'s Python.

arq keeps its queue in Redis (a sorted set of job ids, a key per job and per result), in a
Redis database of its own here (``--redis-db``, flushed before each workload and at the end).
Everything goes through arq's public API: ``create_pool``, ``ArqRedis.enqueue_job`` and a
``Worker`` with its documented options. The side reads arq's queue length
(``ZCARD arq:queue``; a job leaves the queue when it finishes) to watch a drain, and Redis'
``used_memory`` to measure storage. arq has no call that enqueues many jobs at once, so it has
no bulk figure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.metadata import version
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name
from arq.worker import Worker

from . import arq_jobs
from . import side_common as sc

MODULE = "bench.peers.arq_side"
LOOP = sc.uvloop_factory()
MAX_JOBS = {"drain": 1000, "latency": 100}
POLL_DELAY_S = 0.001
PRODUCERS = 100
SETTINGS = [
    "worker: `arq.worker.Worker(functions=..., ...)` in its own process, on uvloop",
    f"max_jobs {MAX_JOBS['drain']} for the drain (as asyncjobs' 1,000; 50 to 1,000 measured "
    f"within noise here, 10 slower), {MAX_JOBS['latency']} for latency (as asyncjobs' node), "
    "N for memory",
    f"poll_delay {POLL_DELAY_S * 1000:g} ms (default 500 ms): arq polls its queue, so its "
    "latency follows this delay; the price is about 20% of a core while idle here",
    "keep_result 3600 s (the default): results kept, as asyncjobs keeps them",
    "log level WARNING (no line per job); redis-py with hiredis",
    "producers: `await redis.enqueue_job(...)` on one `create_pool()`; no bulk call exists",
]


def _settings(params: sc.Params) -> RedisSettings:
    return RedisSettings.from_dsn(params["redis_url"])


async def _redis(params: sc.Params, flush: bool = True) -> ArqRedis:
    redis = await create_pool(_settings(params))
    if flush:
        await redis.flushdb()
    return redis


# -- the worker ----------------------------------------------------------------------------------


async def _serve(params: sc.Params) -> None:
    worker = Worker(
        functions=arq_jobs.FUNCTIONS,
        redis_settings=_settings(params),
        on_startup=arq_jobs.on_startup,
        max_jobs=params["max_jobs"],
        poll_delay=params.get("poll_delay", POLL_DELAY_S),
        job_timeout=3600,
    )
    try:
        await worker.async_run()
    finally:
        await worker.close()


def worker(params: sc.Params) -> None:
    logging.basicConfig(level=logging.WARNING)
    sc.run_async(_serve(params), LOOP)


def _worker(params: sc.Params, max_jobs: int, **extra: Any) -> sc.Worker:
    args = {"redis_url": params["redis_url"], "max_jobs": max_jobs, **extra}
    return sc.Worker(sc.worker_args(MODULE, args))


# -- enqueue -------------------------------------------------------------------------------------


async def _enqueue_sequential(params: sc.Params) -> sc.Result:
    redis = await _redis(params)
    try:
        for _ in range(params["warmup"]):
            await redis.enqueue_job("noop")
        t0 = time.perf_counter()
        for _ in range(params["n"]):
            await redis.enqueue_job("noop")
        return {"jobs_per_s": params["n"] / (time.perf_counter() - t0)}
    finally:
        await redis.aclose()


async def _enqueue_concurrent(params: sc.Params) -> sc.Result:
    redis = await _redis(params)
    tasks, per_task = params["tasks"], params["n"] // params["tasks"]

    async def producer(count: int) -> None:
        for _ in range(count):
            await redis.enqueue_job("noop")

    try:
        await asyncio.gather(*(producer(1) for _ in range(tasks)))
        t0 = time.perf_counter()
        await asyncio.gather(*(producer(per_task) for _ in range(tasks)))
        return {"jobs_per_s": per_task * tasks / (time.perf_counter() - t0)}
    finally:
        await redis.aclose()


# -- drain and storage ---------------------------------------------------------------------------


async def _enqueue_many(redis: ArqRedis, n: int, function: str, *args: Any) -> None:
    """n jobs from 100 concurrent producers (arq has no bulk call; 100, not n, connections)."""
    per_task = -(-n // PRODUCERS)

    async def producer(count: int) -> None:
        for _ in range(count):
            await redis.enqueue_job(function, *args)

    await asyncio.gather(*(producer(min(per_task, n - i)) for i in range(0, n, per_task)))


async def _used_memory(redis: ArqRedis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def _drain(params: sc.Params) -> sc.Result:
    n = params["n"]
    redis = await _redis(params)
    try:
        empty = await _used_memory(redis)
        await _enqueue_many(redis, n, "noop")
        queued = await _used_memory(redis) - empty

        async def finished() -> bool:
            return await redis.zcard(default_queue_name) == 0

        max_jobs = params.get("max_jobs", MAX_JOBS["drain"])  # tuning runs set it
        spawned = time.perf_counter()
        with _worker(params, max_jobs, **params.get("worker", {})) as w:
            ready = time.perf_counter()
            end = await sc.poll_until(
                finished, timeout=params["timeout"], step=sc.DRAIN_POLL_S, what="the drain"
            )
            w.stop()
        results = await redis.keys("arq:result:*")
        if len(results) != n:
            raise RuntimeError(f"after the drain arq holds {len(results)} results, not {n}")
        done = await _used_memory(redis) - empty
    finally:
        await redis.aclose()
    return sc.drain_rate(n, spawned, ready, end) | {
        "storage_queued": {"per_job": queued / n, "measured": "Redis used_memory growth"},
        "storage_finished": {"per_job": done / n, "measured": "Redis used_memory growth"},
    }


# -- latency -------------------------------------------------------------------------------------


async def _latency(params: sc.Params) -> sc.Result:
    n, out_dir = params["n"], params["out_dir"]
    redis = await _redis(params)
    try:
        with _worker(params, MAX_JOBS["latency"], **params.get("worker", {})):
            for i in range(params["warmup"]):
                await redis.enqueue_job("probe", -1, time.time())
                await sc.poll_until(
                    sc.records_at_least(out_dir, i + 1), timeout=10, step=0.001, what="a warm-up"
                )
            await asyncio.sleep(params["idle_s"])

            async def send(i: int) -> None:
                await redis.enqueue_job("probe", i, time.time())

            worst_lag = await sc.open_loop(send, n, params["rate"])
            await sc.poll_until(
                sc.records_at_least(out_dir, params["warmup"] + n),
                timeout=params["timeout"],
                step=0.01,
                what="every latency job",
            )
    finally:
        await redis.aclose()
    return sc.probe_latencies(out_dir) | {"worst_send_lag_ms": worst_lag * 1000}


# -- memory --------------------------------------------------------------------------------------


async def _memory(params: sc.Params) -> sc.Result:
    n, out_dir = params["n"], params["out_dir"]
    redis = await _redis(params)
    try:
        with _worker(params, n) as w:
            await redis.enqueue_job("probe", -1, time.time())
            await sc.poll_until(
                sc.records_at_least(out_dir, 1), timeout=10, step=0.001, what="a warm-up"
            )
            await asyncio.sleep(params["settle_s"])
            before = sc.rss(w.pid)
            t0 = time.perf_counter()
            await _enqueue_many(redis, n, "sleeper", params["sleep_s"])
            done = await sc.poll_until(
                sc.records_at_least(out_dir, 1 + n),
                timeout=params["timeout"],
                step=0.01,
                what="every sleeper to start",
            )
            await asyncio.sleep(params["settle_s"])
            after = sc.rss(w.pid)
            w.kill()
        await redis.flushdb()
    finally:
        await redis.aclose()
    return sc.memory_figures(before, after, n, done - t0)


# -- info and cleanup ----------------------------------------------------------------------------


async def _info(params: sc.Params) -> sc.Result:
    redis = await create_pool(_settings(params))
    try:
        server = (await redis.info("server"))["redis_version"]
    finally:
        await redis.aclose()
    return {
        "versions": {name: version(name) for name in ("arq", "redis", "hiredis", "uvloop")},
        "settings": SETTINGS,
        "store": "Redis",
        "redis_server": server,
    }


async def _cleanup(params: sc.Params) -> sc.Result:
    redis = await _redis(params)
    await redis.aclose()
    return {}


def _sync(fn: Any) -> Any:
    return lambda params: sc.run_async(fn(params), LOOP)


WORKLOADS = {
    "info": _sync(_info),
    "enqueue_sequential": _sync(_enqueue_sequential),
    "enqueue_concurrent": _sync(_enqueue_concurrent),
    "drain": _sync(_drain),
    "latency": _sync(_latency),
    "memory": _sync(_memory),
    "cleanup": _sync(_cleanup),
}

if __name__ == "__main__":
    sc.run_side(WORKLOADS, worker)
