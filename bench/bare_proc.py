"""The bare baselines' child processes: plain asyncpg and asyncio, no asyncjobs code.

    python -m bench.bare_proc listen --dsn ... --schema ...   # the bare latency consumer
    python -m bench.bare_proc sleepers --n 10000               # the bare memory figure

Each runs on uvloop, as a node does, prints ``ready`` and is stopped by SIGTERM (see
``bench.node_proc.ChildProcess`` for the parent side).

``listen`` LISTENs on the schema's channel; on each notification it runs the claim statement
(the shape of asyncjobs' own) until a claim comes back short, and notes ``time.time()`` as
each claimed job's start. Claimed jobs stay ``running``: the parent counts them to know when
all are in. On SIGTERM it prints ``[[id, time], ...]`` as JSON and exits.

``sleepers``, on SIGUSR1, starts N tasks that each ``await asyncio.sleep(30)``, waits until
every one has taken its first step and prints ``running``; the parent reads its RSS before
and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

import asyncpg

# Spelled out rather than imported: bench.common and bench.node_proc import asyncjobs, and
# nothing of it should be loaded (or counted in the RSS) here. bench.node_proc imports from
# this module instead (READY_LINE, stop_event), so this module must not import asyncjobs.
READY_LINE = b"ready"
RUNNING_LINE = b"running"
TABLE = "asyncjobs_jobs"  # bench.common.TABLE


def channel(schema: str) -> str:
    """The channel asyncjobs notifies on for this schema (under the default table prefix)."""
    return f"{schema}.asyncjobs_events"


def claim_sql(schema: str) -> str:
    """Claims at most $1 ready jobs of the default queue: asyncjobs' claim, one queue, no node."""
    return f"""
        UPDATE {schema}.{TABLE} AS j
        SET state = 'running', attempt = j.attempt + 1, started_at = now()
        WHERE j.id = ANY(ARRAY(
            SELECT id FROM {schema}.{TABLE}
            WHERE state = 'queued' AND queue = 'default'
            ORDER BY priority DESC, id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        ))
        RETURNING j.id, j.attempt"""


def _say(line: bytes) -> None:
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()


def stop_event(*signums: int) -> asyncio.Event:
    """An event set by any of these signals (handlers on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in signums:
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _listen(dsn: str, schema: str, batch: int) -> None:
    stop = stop_event(signal.SIGTERM, signal.SIGINT)
    con = await asyncpg.connect(dsn)
    wake = asyncio.Event()
    started: list[tuple[str, float]] = []
    claim = claim_sql(schema)

    async def consume() -> None:
        while True:
            await wake.wait()
            wake.clear()  # a notification during the claim below means claim again
            while True:
                rows = await con.fetch(claim, batch)
                now = time.time()
                started.extend((str(r[0]), now) for r in rows)
                if len(rows) < batch:
                    break

    try:
        await con.add_listener(channel(schema), lambda *_: wake.set())
        consumer = asyncio.create_task(consume())
        _say(READY_LINE)
        await stop.wait()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    finally:
        await con.close()
    _say(json.dumps(started).encode())


async def _sleepers(n: int) -> None:
    stop = stop_event(signal.SIGTERM, signal.SIGINT)
    go = stop_event(signal.SIGUSR1)
    stepped = 0
    all_stepped = asyncio.Event()

    async def sleeper(seconds: float = 30.0) -> None:
        nonlocal stepped
        stepped += 1
        if stepped == n:
            all_stepped.set()
        await asyncio.sleep(seconds)

    _say(READY_LINE)
    await go.wait()
    # Held, as a node holds its running jobs (the event loop keeps only weak references).
    tasks = [asyncio.create_task(sleeper()) for _ in range(n)]
    await all_stepped.wait()
    _say(RUNNING_LINE)
    await stop.wait()
    for task in tasks:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proc")
    sub = parser.add_subparsers(dest="command", required=True)
    listen = sub.add_parser("listen")
    listen.add_argument("--dsn", required=True)
    listen.add_argument("--schema", required=True)
    listen.add_argument("--batch", type=int, default=100)
    sleepers = sub.add_parser("sleepers")
    sleepers.add_argument("--n", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    if args.command == "listen":
        coro = _listen(args.dsn, args.schema, args.batch)
    else:
        coro = _sleepers(args.n)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


if __name__ == "__main__":
    main()
