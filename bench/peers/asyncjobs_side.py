"""The asyncjobs side of the peers harness: the same workloads as the peers' sides, with the
project's own code, run with the project's Python (``.venv``).

The worker is one node in its own process (``python -m bench.peers.asyncjobs_side worker``),
on uvloop, as ``asyncjobs node`` runs; producers use a producer-only app
(``start(node=False)``). The backlog, schema and drain checks reuse ``bench/`` helpers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import asyncpg
import uvloop

from asyncjobs import App, Settings
from bench import drain as suite_drain
from bench.common import TABLE, check_drained, drop_schema, fresh_schema, no_jobs_in, noop

from . import side_common as sc

SCHEMA = "bench_peers"
MODULE = "bench.peers.asyncjobs_side"
LOOP = uvloop.new_event_loop
CONCURRENCY = {"drain": 1000, "latency": 100}  # the suite's drain; the default
SETTINGS = [
    "one node in its own process, uvloop",
    "concurrency 1,000 for the drain (as `make bench`), 100 (the default) for latency, "
    "N for memory",
    "every other setting at its default: LISTEN/NOTIFY wake-ups, claims of up to 500, "
    "batched completions; history kept",
    "producers: `await app.enqueue(job, ...)`; bulk: `await app.enqueue_many([...])` (COPY)",
]


async def probe(i: int, sent: float) -> None:
    """The latency job: its start minus the wall time passed by the producer."""
    sc.record(f"{i} {time.time() - sent}")


async def sleeper(seconds: float) -> None:
    sc.record("s")
    await asyncio.sleep(seconds)


def make_app(dsn: str, **settings: Any) -> App:
    app = App(settings=Settings(dsn=dsn, schema=SCHEMA, **settings))
    app.job(noop)
    app.job(probe)
    app.job(sleeper)
    return app


# -- the worker ----------------------------------------------------------------------------------


async def _serve(params: sc.Params) -> None:
    app = make_app(params["dsn"], concurrency=params["concurrency"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await app.start()
    try:
        sc.ready()
        await stop.wait()
    finally:
        await app.stop(grace=0.0)


def worker(params: sc.Params) -> None:
    logging.basicConfig(level=logging.WARNING)
    with asyncio.Runner(loop_factory=LOOP) as runner:
        runner.run(_serve(params))


def _worker(params: sc.Params, concurrency: int) -> sc.Worker:
    return sc.Worker(sc.worker_args(MODULE, {"dsn": params["dsn"], "concurrency": concurrency}))


# -- enqueue -------------------------------------------------------------------------------------


async def _producer(dsn: str) -> App:
    await fresh_schema(dsn, SCHEMA)
    app = make_app(dsn)
    await app.start(node=False)
    return app


async def _enqueue_sequential(params: sc.Params) -> sc.Result:
    app = await _producer(params["dsn"])
    try:
        for _ in range(params["warmup"]):
            await app.enqueue("noop")
        t0 = time.perf_counter()
        for _ in range(params["n"]):
            await app.enqueue("noop")
        return {"jobs_per_s": params["n"] / (time.perf_counter() - t0)}
    finally:
        await app.stop()


async def _enqueue_concurrent(params: sc.Params) -> sc.Result:
    app = await _producer(params["dsn"])
    tasks, per_task = params["tasks"], params["n"] // params["tasks"]

    async def producer(count: int) -> None:
        for _ in range(count):
            await app.enqueue("noop")

    try:
        await asyncio.gather(*(producer(1) for _ in range(tasks)))
        t0 = time.perf_counter()
        await asyncio.gather(*(producer(per_task) for _ in range(tasks)))
        return {"jobs_per_s": per_task * tasks / (time.perf_counter() - t0)}
    finally:
        await app.stop()


async def _enqueue_bulk(params: sc.Params) -> sc.Result:
    app = await _producer(params["dsn"])
    try:
        await app.enqueue_many([app.signature("noop") for _ in range(params["warmup"])])
        signatures = [app.signature("noop") for _ in range(params["n"])]
        t0 = time.perf_counter()
        await app.enqueue_many(signatures)
        return {"jobs_per_s": params["n"] / (time.perf_counter() - t0)}
    finally:
        await app.stop()


# -- drain and storage ---------------------------------------------------------------------------


async def _storage(con: asyncpg.Connection, n: int) -> sc.Result:
    await con.execute(f"VACUUM ANALYZE {SCHEMA}.{TABLE}")
    row = await con.fetchrow(sc.PG_SIZE_SQL.format(table=f"{SCHEMA}.{TABLE}"))
    return sc.storage_figures({TABLE: tuple(row)}, n)


async def _drain(params: sc.Params) -> sc.Result:
    dsn, n = params["dsn"], params["n"]
    # Fresh schema, n queued no-ops in one COPY, VACUUM ANALYZE: the suite's drain backlog.
    await suite_drain.enqueue_backlog(dsn, SCHEMA, n)
    con = await asyncpg.connect(dsn)
    try:
        queued = await _storage(con, n)
        all_done = f"SELECT {no_jobs_in(SCHEMA, 'queued', 'running')}"

        async def finished() -> bool:
            return bool(await con.fetchval(all_done))

        spawned = time.perf_counter()
        with _worker(params, CONCURRENCY["drain"]) as node:
            ready = time.perf_counter()
            end = await sc.poll_until(
                finished, timeout=params["timeout"], step=sc.DRAIN_POLL_S, what="the drain"
            )
            node.stop()
        await check_drained(con, SCHEMA, n)
        finished_storage = await _storage(con, n)
    finally:
        await con.close()
    return sc.drain_rate(n, spawned, ready, end) | {
        "storage_queued": queued,
        "storage_finished": finished_storage,
    }


# -- latency -------------------------------------------------------------------------------------


async def _latency(params: sc.Params) -> sc.Result:
    dsn, n, out_dir = params["dsn"], params["n"], params["out_dir"]
    await fresh_schema(dsn, SCHEMA)
    with _worker(params, CONCURRENCY["latency"]):
        app = make_app(dsn)
        await app.start(node=False)
        try:
            for i in range(params["warmup"]):
                await app.enqueue("probe", -1, time.time())
                await sc.poll_until(
                    sc.records_at_least(out_dir, i + 1), timeout=10, step=0.001, what="a warm-up"
                )
            await asyncio.sleep(params["idle_s"])

            async def send(i: int) -> None:
                await app.enqueue("probe", i, time.time())

            worst_lag = await sc.open_loop(send, n, params["rate"])
        finally:
            await app.stop()
        await sc.poll_until(
            sc.records_at_least(out_dir, params["warmup"] + n),
            timeout=params["timeout"],
            step=0.01,
            what="every latency job",
        )
    return sc.probe_latencies(out_dir) | {"worst_send_lag_ms": worst_lag * 1000}


# -- memory --------------------------------------------------------------------------------------


async def _memory(params: sc.Params) -> sc.Result:
    dsn, n, out_dir = params["dsn"], params["n"], params["out_dir"]
    await fresh_schema(dsn, SCHEMA)
    try:
        with _worker(params, n) as node:
            app = make_app(dsn)
            await app.start(node=False)
            try:
                await app.enqueue("probe", -1, time.time())  # warms the node's paths up
                await sc.poll_until(
                    sc.records_at_least(out_dir, 1), timeout=10, step=0.001, what="a warm-up"
                )
                await asyncio.sleep(params["settle_s"])
                before = sc.rss(node.pid)
                t0 = time.perf_counter()
                await app.enqueue_many(
                    [app.signature("sleeper", params["sleep_s"]) for _ in range(n)]
                )
                done = await sc.poll_until(
                    sc.records_at_least(out_dir, 1 + n),
                    timeout=params["timeout"],
                    step=0.01,
                    what="every sleeper to start",
                )
                await asyncio.sleep(params["settle_s"])
                after = sc.rss(node.pid)
            finally:
                await app.stop()
            node.kill()
    finally:
        await drop_schema(dsn, SCHEMA)
    return sc.memory_figures(before, after, n, done - t0)


# -- info and cleanup ----------------------------------------------------------------------------


def _info(params: sc.Params) -> sc.Result:
    from importlib.metadata import version

    return {
        "versions": {"asyncjobs": version("asyncjobs"), "asyncpg": version("asyncpg")},
        "settings": SETTINGS,
        "store": "Postgres (asyncpg)",
    }


async def _cleanup(params: sc.Params) -> sc.Result:
    await drop_schema(params["dsn"], SCHEMA)
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
