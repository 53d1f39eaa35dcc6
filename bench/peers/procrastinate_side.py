"""The procrastinate side of the peers harness, run with ``bench/.peers/procrastinate``'s Python.

procrastinate keeps its jobs in Postgres, like asyncjobs, so it gets a database of its own
(``<bench database>_procrastinate``) with its schema applied through its ``SchemaManager``.
Everything here goes through procrastinate's public API: ``App``, ``PsycopgConnector``,
``@app.task``, ``defer_async``, ``batch_defer_async``, ``open_async`` and
``run_worker_async``. The side reads procrastinate's tables only to watch progress and to
measure their size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import procrastinate
import psycopg

from . import side_common as sc
from .procrastinate_jobs import app, noop, probe, sleeper

MODULE = "bench.peers.procrastinate_side"
LOOP = sc.uvloop_factory()
# The worker's best settings here (see SETTINGS), and the pool that serves them.
CONCURRENCY = {"drain": 50, "latency": 100}
POOL_SIZE = 20
TABLES = ("procrastinate_jobs", "procrastinate_events")
SETTINGS = [
    "worker: `app.run_worker_async(...)` in its own process, on uvloop",
    f"concurrency {CONCURRENCY['drain']} for the drain (the fastest of 1, 5, 10, 20 and 50 "
    f"tried here, within noise of 10 and 20), {CONCURRENCY['latency']} for latency (as "
    "asyncjobs' node; with 10, jobs queued up and p50 was 20-50 ms), N for memory",
    "listen_notify on (the default); fetch_job_polling_interval 5 s (the default)",
    f"PsycopgConnector pool: min = max = {POOL_SIZE} connections (worker and producers; "
    "default 4), with procrastinate's default connection check",
    "tasks: `async def`; jobs kept after they finish (the default), as asyncjobs keeps them",
    "log level WARNING (no line per job)",
    "producers: `await task.defer_async(...)`; bulk: `await task.batch_defer_async(...)`",
]


def _dsn(params: sc.Params) -> str:
    """This side's own database, next to the bench database."""
    parts = urlsplit(params["dsn"])
    return urlunsplit(parts._replace(path=f"{parts.path}_procrastinate"))


def _admin_dsn(params: sc.Params) -> str:
    return urlunsplit(urlsplit(params["dsn"])._replace(path="/postgres"))


@contextlib.asynccontextmanager
async def _connect(params: sc.Params, pool_size: int = POOL_SIZE) -> AsyncIterator[None]:
    """The app, open on this side's database with a pool of ``pool_size`` connections."""
    connector = procrastinate.PsycopgConnector(
        conninfo=_dsn(params), min_size=pool_size, max_size=pool_size
    )
    with app.replace_connector(connector):
        async with app.open_async():
            yield


async def _reset(params: sc.Params) -> None:
    """A fresh database for this side, with procrastinate's schema applied."""
    name = urlsplit(_dsn(params)).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(_admin_dsn(params), autocommit=True) as con:
        await con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await con.execute(f"CREATE DATABASE {name}")
    async with _connect(params, 1):
        await app.schema_manager.apply_schema_async()


# -- the worker ----------------------------------------------------------------------------------


async def _serve(params: sc.Params) -> None:
    async with _connect(params, params["pool_size"]):
        sc.ready()
        await app.run_worker_async(concurrency=params["concurrency"])


def worker(params: sc.Params) -> None:
    logging.basicConfig(level=logging.WARNING)
    sc.run_async(_serve(params), LOOP)


def _worker(params: sc.Params, concurrency: int, pool_size: int = POOL_SIZE) -> sc.Worker:
    return sc.Worker(
        sc.worker_args(
            MODULE, {"dsn": params["dsn"], "concurrency": concurrency, "pool_size": pool_size}
        )
    )


# -- enqueue -------------------------------------------------------------------------------------


async def _enqueue_sequential(params: sc.Params) -> sc.Result:
    await _reset(params)
    async with _connect(params):
        for _ in range(params["warmup"]):
            await noop.defer_async()
        t0 = time.perf_counter()
        for _ in range(params["n"]):
            await noop.defer_async()
        return {"jobs_per_s": params["n"] / (time.perf_counter() - t0)}


async def _enqueue_concurrent(params: sc.Params) -> sc.Result:
    await _reset(params)
    tasks, per_task = params["tasks"], params["n"] // params["tasks"]

    async def producer(count: int) -> None:
        for _ in range(count):
            await noop.defer_async()

    async with _connect(params):
        await asyncio.gather(*(producer(1) for _ in range(tasks)))
        t0 = time.perf_counter()
        await asyncio.gather(*(producer(per_task) for _ in range(tasks)))
        return {"jobs_per_s": per_task * tasks / (time.perf_counter() - t0)}


async def _enqueue_bulk(params: sc.Params) -> sc.Result:
    await _reset(params)
    async with _connect(params):
        await noop.batch_defer_async(*({} for _ in range(params["warmup"])))
        kwargs = [{} for _ in range(params["n"])]
        t0 = time.perf_counter()
        await noop.batch_defer_async(*kwargs)
        return {"jobs_per_s": params["n"] / (time.perf_counter() - t0)}


# -- drain and storage ---------------------------------------------------------------------------


async def _storage(con: psycopg.AsyncConnection[Any], n: int) -> sc.Result:
    sizes = {}
    for table in TABLES:
        await con.execute(f"VACUUM ANALYZE {table}")
        cur = await con.execute(sc.PG_SIZE_SQL.format(table=table))
        sizes[table] = tuple(await cur.fetchone() or ())
    return sc.storage_figures(sizes, n)


async def _drain(params: sc.Params) -> sc.Result:
    n = params["n"]
    await _reset(params)
    async with _connect(params):
        await noop.batch_defer_async(*({} for _ in range(n)))
    all_done = (
        "SELECT NOT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
    )
    async with await psycopg.AsyncConnection.connect(_dsn(params), autocommit=True) as con:
        queued = await _storage(con, n)  # VACUUM ANALYZE first, as for asyncjobs

        async def finished() -> bool:
            row = await (await con.execute(all_done)).fetchone()
            return bool(row and row[0])

        spawned = time.perf_counter()
        concurrency = params.get("concurrency", CONCURRENCY["drain"])  # tuning runs set it
        with _worker(params, concurrency, params.get("pool_size", POOL_SIZE)) as w:
            ready = time.perf_counter()
            end = await sc.poll_until(
                finished, timeout=params["timeout"], step=sc.DRAIN_POLL_S, what="the drain"
            )
            w.stop()
        cur = await con.execute("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1")
        counts = dict(await cur.fetchall())
        if counts != {"succeeded": n}:
            raise RuntimeError(f"after the drain procrastinate_jobs holds {counts}")
        finished_storage = await _storage(con, n)
    return sc.drain_rate(n, spawned, ready, end) | {
        "storage_queued": queued,
        "storage_finished": finished_storage,
    }


# -- latency -------------------------------------------------------------------------------------


async def _latency(params: sc.Params) -> sc.Result:
    n, out_dir = params["n"], params["out_dir"]
    await _reset(params)
    with _worker(params, params.get("concurrency", CONCURRENCY["latency"])):
        async with _connect(params):
            for i in range(params["warmup"]):
                await probe.defer_async(i=-1, sent=time.time())
                await sc.poll_until(
                    sc.records_at_least(out_dir, i + 1), timeout=10, step=0.001, what="a warm-up"
                )
            await asyncio.sleep(params["idle_s"])

            async def send(i: int) -> None:
                await probe.defer_async(i=i, sent=time.time())

            worst_lag = await sc.open_loop(send, n, params["rate"])
        await sc.poll_until(
            sc.records_at_least(out_dir, params["warmup"] + n),
            timeout=params["timeout"],
            step=0.01,
            what="every latency job",
        )
    return sc.probe_latencies(out_dir) | {"worst_send_lag_ms": worst_lag * 1000}


# -- memory --------------------------------------------------------------------------------------


async def _memory(params: sc.Params) -> sc.Result:
    n, out_dir = params["n"], params["out_dir"]
    await _reset(params)
    with _worker(params, n) as w:
        async with _connect(params):
            await probe.defer_async(i=-1, sent=time.time())
            await sc.poll_until(
                sc.records_at_least(out_dir, 1), timeout=10, step=0.001, what="a warm-up"
            )
            await asyncio.sleep(params["settle_s"])
            before = sc.rss(w.pid)
            t0 = time.perf_counter()
            await sleeper.batch_defer_async(*({"seconds": params["sleep_s"]} for _ in range(n)))
            done = await sc.poll_until(
                sc.records_at_least(out_dir, 1 + n),
                timeout=params["timeout"],
                step=0.01,
                what="every sleeper to start",
            )
            await asyncio.sleep(params["settle_s"])
            after = sc.rss(w.pid)
        w.kill()
    return sc.memory_figures(before, after, n, done - t0)


# -- info and cleanup ----------------------------------------------------------------------------


def _info(params: sc.Params) -> sc.Result:
    return {
        "versions": {
            name: version(name) for name in ("procrastinate", "psycopg", "psycopg-pool", "uvloop")
        },
        "settings": SETTINGS,
        "store": "Postgres (psycopg 3)",
    }


async def _cleanup(params: sc.Params) -> sc.Result:
    name = urlsplit(_dsn(params)).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(_admin_dsn(params), autocommit=True) as con:
        await con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return {}


def _sync(fn: Any) -> Any:
    return lambda params: sc.run_async(fn(params), LOOP)


WORKLOADS = {
    "info": _info,
    "enqueue_sequential": _sync(_enqueue_sequential),
    "enqueue_concurrent": _sync(_enqueue_concurrent),
    "enqueue_bulk": _sync(_enqueue_bulk),
    "drain": _sync(_drain),
    "latency": _sync(_latency),
    "memory": _sync(_memory),
    "cleanup": _sync(_cleanup),
}

if __name__ == "__main__":
    sc.run_side(WORKLOADS, worker)
