"""`make run`: a demo node with the example plug-ins, fed a few jobs so you can watch them.

Finds a database the way the tests do: ASYNCJOBS_DSN, else the server on 127.0.0.1:5432, else
a private cluster in .asyncjobs/pg (made with the machine's initdb/pg_ctl), else the in-memory
store, with a warning that nothing persists. Ctrl-C stops the node gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import anyio

from asyncjobs import AsyncJobsError, JobState
from asyncjobs.localpg import (
    DEFAULT_LOCAL_DSN,
    LocalCluster,
    LocalPostgresError,
    binaries_available,
    reachable,
)

from . import app, cpu, model

PRIVATE_CLUSTER = Path(__file__).resolve().parent.parent / ".asyncjobs" / "pg"


async def choose_dsn() -> str:
    explicit = os.environ.get("ASYNCJOBS_DSN")
    if explicit:
        return explicit
    if await reachable(DEFAULT_LOCAL_DSN):
        print(f"demo: using the Postgres server at {DEFAULT_LOCAL_DSN}")
        return DEFAULT_LOCAL_DSN
    if binaries_available():
        print(f"demo: no server on 127.0.0.1:5432; starting a private one in {PRIVATE_CLUSTER}")
        try:
            return await anyio.to_thread.run_sync(LocalCluster(PRIVATE_CLUSTER).start)
        except LocalPostgresError as exc:
            print(f"demo: {exc}", file=sys.stderr)
    print(
        "demo: WARNING: no Postgres available (no server reachable, no initdb/pg_ctl). Running "
        "on the in-memory store: NOTHING PERSISTS, and only this process sees the jobs.",
        file=sys.stderr,
    )
    return "memory://"


async def main(once: bool) -> int:
    dsn = await choose_dsn()
    schema = os.environ.get("ASYNCJOBS_SCHEMA", "asyncjobs_demo")
    # CPU-heavy jobs get their own queue, sized to the process pool (2 workers).
    app.configure(
        dsn=dsn, schema=schema, concurrency=50, shutdown_grace_s=5.0, queues="default,cpu=2",
        workers_min=1, workers_max=2,
    )  # fmt: skip
    stop = anyio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with app:
        from . import failing, io

        jobs = {
            "sleep 0.5 s": await app.enqueue(io.sleep, 0.5),
            "sleep 1.5 s": await app.enqueue(io.sleep, 1.5),
            "fails at once": await app.enqueue(failing.always_fails),
            "flaky, retried": await app.enqueue(failing.flaky),
            "too slow (1 s limit)": await app.enqueue(failing.too_slow),
            "delayed by 2 s": await app.enqueue(io.sleep, 0.1, delay=2),
            "CPU, in a worker": await app.enqueue(cpu.hash_chain, 200_000),
            "model lookup": await app.enqueue(model.model_lookup, 1234, 8),
        }
        ids = await app.enqueue_many([io.sleep.s(0.2) for _ in range(1000)])
        print(f"demo: enqueued {len(jobs)} example jobs and 1,000 short sleeps (one COPY)")
        async with anyio.create_task_group() as tg:
            for label, job_id in jobs.items():
                tg.start_soon(report, label, job_id)
            tg.start_soon(report_many, ids)
        if once:
            return 0
        print(
            "demo: the node keeps running. In another shell, try:\n"
            f"  ASYNCJOBS_DSN='{dsn}' ASYNCJOBS_SCHEMA={schema} "
            ".venv/bin/asyncjobs enqueue sleep --app plugins_example:app --args '[1]' --wait\n"
            "Press Ctrl-C to stop."
            if dsn != "memory://"
            else "demo: the node keeps running (in-memory). Press Ctrl-C to stop."
        )
        await stop.wait()
    return 0


async def report(label: str, job_id: object) -> None:
    try:
        result = await app.result(job_id, timeout=30)  # type: ignore[arg-type]
        print(f"  {label:<22} succeeded: {result!r}")
    except AsyncJobsError as exc:
        record = await app.get(job_id)  # type: ignore[arg-type]
        print(f"  {label:<22} {record.state.value} after {record.attempt} attempt(s): {exc}")


async def report_many(ids: list[object]) -> None:
    await app.result(ids[-1], timeout=60)  # type: ignore[arg-type]
    states = [(await app.get(i)).state for i in ids[:: len(ids) // 10]]  # type: ignore[arg-type]
    done = sum(s is JobState.SUCCEEDED for s in states)
    print(f"  1,000 short sleeps       finished (sampled {done}/{len(states)} succeeded)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit when the demo jobs are done")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise SystemExit(anyio.run(main, args.once, backend_options={"use_uvloop": True}))
