"""The Celery side of the peers harness, run with ``bench/.peers/celery``'s Python.

Celery runs with Redis as broker and result backend, in two Redis databases of its own
(``--redis-db`` and the next one; flushed before each workload and at the end). Everything
goes through Celery's public API: ``Celery``, ``@app.task``, ``delay``, ``group`` and the
``celery worker`` command with documented options. The side reads the number of stored
results (``DBSIZE`` of the backend database) to watch a drain, and Redis' ``used_memory`` to
measure storage.

Celery's client is blocking: the concurrent figure uses threads (100, as the others use 100
tasks), and the latency producer sends one message after another on the open-loop schedule.
In a prefork pool each child runs one job at a time, so memory per in-flight job is the RSS of
a child running one sleeping job.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as redis_py

from . import side_common as sc

POOL = "prefork"
CONCURRENCY = 2  # the cores: prefork's default, and the fastest tried here
PREFETCH_MULTIPLIER = 4  # Celery's default
SETTINGS = [
    f"worker: `celery -A bench.peers.celery_jobs worker --pool={POOL} "
    f"--concurrency={CONCURRENCY}` (the cores): solo, threads (4) and prefetch 64 measured "
    "within noise of it here, gevent (50) slower",
    f"--prefetch-multiplier={PREFETCH_MULTIPLIER} (the default), acks on receipt (the default)",
    "--without-gossip --without-mingle --without-heartbeat (documented start-up and "
    "traffic savers for one worker), --loglevel=WARNING (no line per task)",
    "Redis broker; Redis result backend given to the worker (`celery --result-backend`), "
    "so every result is stored, as asyncjobs keeps every outcome; producers name no backend "
    "(with one, each send also subscribes to the task's result channel); JSON serializer",
    "producers: `task.delay()`; concurrent: 100 threads; bulk: `group(...).apply_async()`",
]


def _urls(params: sc.Params) -> tuple[str, str]:
    """Broker and backend: the given Redis database and the next one."""
    parts = urlsplit(params["redis_url"])
    db = int(parts.path.lstrip("/") or 0)
    return params["redis_url"], urlunsplit(parts._replace(path=f"/{db + 1}"))


def _jobs(params: sc.Params) -> ModuleType:
    """The Celery app's module, imported with this side's broker."""
    os.environ["BENCH_CELERY_BROKER"] = _urls(params)[0]
    from . import celery_jobs

    return celery_jobs


def _flush(params: sc.Params) -> tuple[redis_py.Redis, redis_py.Redis]:
    broker, backend = (redis_py.Redis.from_url(url) for url in _urls(params))
    broker.flushdb()
    backend.flushdb()
    return broker, backend


def _worker(params: sc.Params, concurrency: int = CONCURRENCY, **extra: Any) -> sc.Worker:
    _jobs(params)  # sets the variables the worker inherits
    pool = extra.get("pool", POOL)
    args = [
        sys.executable,
        "-m",
        "celery",
        "--quiet",  # no banner
        "-A",
        "bench.peers.celery_jobs",
        f"--result-backend={_urls(params)[1]}",
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--prefetch-multiplier={extra.get('prefetch_multiplier', PREFETCH_MULTIPLIER)}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=WARNING",
    ]
    return sc.Worker(args)


# -- enqueue -------------------------------------------------------------------------------------


def _enqueue_sequential(params: sc.Params) -> sc.Result:
    jobs = _jobs(params)
    _flush(params)
    for _ in range(params["warmup"]):
        jobs.noop.delay()
    t0 = time.perf_counter()
    for _ in range(params["n"]):
        jobs.noop.delay()
    return {"jobs_per_s": params["n"] / (time.perf_counter() - t0)}


def _enqueue_concurrent(params: sc.Params) -> sc.Result:
    jobs = _jobs(params)
    _flush(params)
    tasks, per_task = params["tasks"], params["n"] // params["tasks"]

    def producer(count: int) -> None:
        for _ in range(count):
            jobs.noop.delay()

    with ThreadPoolExecutor(tasks) as pool:
        list(pool.map(producer, [1] * tasks))
        t0 = time.perf_counter()
        list(pool.map(producer, [per_task] * tasks))
        return {"jobs_per_s": per_task * tasks / (time.perf_counter() - t0)}


def _enqueue_bulk(params: sc.Params) -> sc.Result:
    from celery import group

    jobs = _jobs(params)
    _flush(params)
    group(jobs.noop.s() for _ in range(params["warmup"])).apply_async()
    signatures = [jobs.noop.s() for _ in range(params["n"])]
    t0 = time.perf_counter()
    group(signatures).apply_async()
    return {"jobs_per_s": params["n"] / (time.perf_counter() - t0)}


# -- drain and storage ---------------------------------------------------------------------------


def _used_memory(r: redis_py.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def _drain(params: sc.Params) -> sc.Result:
    n = params["n"]
    jobs = _jobs(params)
    broker, backend = _flush(params)
    empty = _used_memory(broker)
    with ThreadPoolExecutor(100) as pool:
        per_task = -(-n // 100)
        counts = [min(per_task, n - i) for i in range(0, n, per_task)]
        list(pool.map(lambda c: [jobs.noop.delay() for _ in range(c)], counts))
    queued = _used_memory(broker) - empty

    def finished() -> bool:
        return backend.dbsize() >= n

    spawned = time.perf_counter()
    with _worker(params, params.get("concurrency", CONCURRENCY), **params.get("worker", {})) as w:
        ready = time.perf_counter()
        end = sc.poll_until_sync(
            finished, timeout=params["timeout"], step=sc.DRAIN_POLL_S, what="the drain"
        )
        w.stop()
    if backend.dbsize() != n or broker.llen("celery"):
        raise RuntimeError(f"after the drain: {backend.dbsize()} results of {n}")
    done = _used_memory(broker) - empty
    return sc.drain_rate(n, spawned, ready, end) | {
        "storage_queued": {"per_job": queued / n, "measured": "Redis used_memory growth"},
        "storage_finished": {"per_job": done / n, "measured": "Redis used_memory growth"},
    }


# -- latency -------------------------------------------------------------------------------------


def _latency(params: sc.Params) -> sc.Result:
    n, out_dir = params["n"], params["out_dir"]
    jobs = _jobs(params)
    _flush(params)
    with _worker(params, **params.get("worker", {})):
        for i in range(params["warmup"]):
            jobs.probe.delay(-1, time.time())
            sc.poll_until_sync(
                lambda i=i: sc.count_records(out_dir) >= i + 1,
                timeout=10,
                step=0.001,
                what="a warm-up",
            )
        time.sleep(params["idle_s"])
        worst_lag = sc.open_loop_sync(
            lambda i: jobs.probe.delay(i, time.time()) and None, n, params["rate"]
        )
        sc.poll_until_sync(
            lambda: sc.count_records(out_dir) >= params["warmup"] + n,
            timeout=params["timeout"],
            step=0.01,
            what="every latency job",
        )
    return sc.probe_latencies(out_dir) | {"worst_send_lag_ms": worst_lag * 1000}


# -- memory --------------------------------------------------------------------------------------


def _memory(params: sc.Params) -> sc.Result:
    """RSS of each prefork child while it runs one sleeping job: one job in flight each."""
    out_dir = params["out_dir"]
    jobs = _jobs(params)
    _flush(params)
    with _worker(params) as w:
        t0 = time.perf_counter()
        for _ in range(CONCURRENCY):
            jobs.sleeper.delay(params["sleep_s"])
        done = sc.poll_until_sync(
            lambda: sc.count_records(out_dir) >= CONCURRENCY,
            timeout=params["timeout"],
            step=0.01,
            what="a sleeper in every child",
        )
        time.sleep(params["settle_s"])
        children = sc.descendants(w.pid)
        rss = [sc.rss(pid) for pid in children]
        uss = [sc.uss(pid) for pid in children]
        master = sc.rss(w.pid)
        w.kill()
    _flush(params)
    return {
        "bytes_per_job": sum(rss) / len(rss),
        "n": len(rss),
        "child_rss": rss,
        "child_uss": uss,
        "master_rss": master,
        "all_started_s": done - t0,
        "measured": "mean RSS of the prefork children, each running one sleeping job",
    }


# -- info and cleanup ----------------------------------------------------------------------------


def _info(params: sc.Params) -> sc.Result:
    return {
        "versions": {name: version(name) for name in ("celery", "kombu", "billiard", "redis")},
        "settings": SETTINGS,
        "store": "Redis (broker and result backend)",
        "redis_server": redis_py.Redis.from_url(params["redis_url"]).info("server")[
            "redis_version"
        ],
    }


def _cleanup(params: sc.Params) -> sc.Result:
    _flush(params)
    return {}


def worker(params: sc.Params) -> None:
    raise SystemExit("Celery's worker is its own command (`celery worker`); see _worker")


WORKLOADS = {
    "info": _info,
    "enqueue_sequential": _enqueue_sequential,
    "enqueue_concurrent": _enqueue_concurrent,
    "enqueue_bulk": _enqueue_bulk,
    "drain": _drain,
    "latency": _latency,
    "memory": _memory,
    "cleanup": _cleanup,
}

if __name__ == "__main__":
    sc.run_side(WORKLOADS, worker)
