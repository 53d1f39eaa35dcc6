"""dashboard: the web dashboard's pages, and ``asyncjobs status``, over a big history.

A fresh schema is filled server-side (``INSERT ... SELECT FROM generate_series``, not through
the API, so a million rows take seconds) with:

- F finished jobs created over the last 7 days (the default retention), each ~0.6 s after the
  last: 95% succeeded, 4% failed (with a traceback), 1% cancelled; eight job names, four
  queues, two nodes, run and CPU times, results and errors as the node writes them;
- Q queued jobs created over the last 10 minutes, in the same queues;
- the per-node statistics of the last hour (10-second buckets), and two live nodes.

Ids are UUIDv7 as ``asyncjobs.ids`` makes them: the creation millisecond first, so they
increase with ``created_at`` (each row has a millisecond of its own). Then VACUUM ANALYZE.

``asyncjobs dashboard`` then runs in its own process (``--port 0``), and an httpx client,
sending the token, times each page (after a warm-up; the figure is the median request):

- ``dashboard_overview_ms``: ``/``;
- ``dashboard_jobs_page1_ms``: ``/jobs``, the newest 50;
- ``dashboard_jobs_page1000_ms``: ``/jobs?before=<id>``, the 1,000th page: its cursor (the
  last id of page 999) is found by a query, as following 999 "next" links would find it;
- ``dashboard_failed_page_ms``: ``/jobs?state=failed``;
- ``status_ms``: the ``asyncjobs status`` command's function in this process, output
  discarded, connecting to the database included (as each run of the command does).

No bare baseline: the targets are absolute (200 ms a page, 300 ms the status command).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import orjson

from asyncjobs import cli

from .common import NODES_TABLE, REPO_ROOT, TABLE, Context, Figure, fresh_schema

NAME = "dashboard"
SCHEMA = "bench_dashboard"
TOKEN = "bench-dashboard-token-0123456789"
PAGE_SIZE = 50
TARGET_PAGE_MS = 200.0
TARGET_STATUS_MS = 300.0
WARMUP = 3
REQUESTS_PER_REPEAT = 5
START_TIMEOUT_S = 30.0
DAY_MS = 86_400_000
NAMES = ("resize_image", "send_email", "sync_inventory", "render_pdf", "charge_card",
         "index_document", "notify_webhook", "compact_logs")  # fmt: skip
QUEUES = ("default", "images", "email", "reports")
NODES = ("01a1fe00-0000-7000-8000-00000000000a", "01a1fe00-0000-7000-8000-00000000000b")
ERROR = {  # a failed job's error, as the node stores it
    "type": "ConnectionError",
    "message": "smtp.example.com refused the connection",
    "traceback": (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/jobs.py", line 42, in send_email\n'
        "    await smtp.send(message)\n"
        '  File "/srv/app/smtp.py", line 17, in send\n'
        '    raise ConnectionError(f"{host} refused the connection")\n'
        "ConnectionError: smtp.example.com refused the connection\n"
    ),
}

# A UUIDv7 for epoch millisecond `ms`: the timestamp, version 7, a zero counter, the variant,
# then random bits (as asyncjobs.ids.new_id makes the first id of a millisecond).
_UUID7 = (
    "(lpad(to_hex({ms}), 12, '0') || '70008' || "
    "lpad(to_hex((random() * 2^59)::bigint), 15, '0'))::uuid"
)
FILL_FINISHED = f"""
INSERT INTO {{s}}.{TABLE}
    (id, priority, state, attempt, max_attempts, run_at, created_at, started_at, finished_at,
     node_id, name, queue, args, result, error, wall_s, cpu_s)
SELECT {_UUID7.format(ms="g.ms")}, 0, g.state::{{s}}.asyncjobs_job_state,
       1, CASE WHEN g.i % 3 = 0 THEN 3 ELSE 1 END,
       g.t, g.t, g.t + interval '40 ms', g.t + interval '40 ms' + g.wall * interval '1 s',
       CASE WHEN g.i % 2 = 0 THEN '{NODES[0]}'::uuid ELSE '{NODES[1]}'::uuid END,
       g.name, g.queue,
       jsonb_build_array(jsonb_build_array(g.i, 'item-' || g.i), '{{}}'::jsonb),
       CASE WHEN g.state = 'succeeded' THEN jsonb_build_object('ok', true, 'n', g.i) END,
       CASE WHEN g.state = 'failed' THEN $5::jsonb END,
       g.wall, g.wall * 0.1
FROM (
    SELECT i, ms, to_timestamp(ms / 1000.0) AS t, (0.01 + (i % 97) / 100.0)::real AS wall,
           CASE WHEN i % 100 < 95 THEN 'succeeded' WHEN i % 100 < 99 THEN 'failed'
                ELSE 'cancelled' END AS state,
           ($3::text[])[(1 + i % 8)::int] AS name, ($4::text[])[(1 + i % 4)::int] AS queue
    FROM generate_series(0::bigint, $1::bigint - 1) AS i,
         LATERAL (SELECT $2::bigint + i * 604800000 / $1::bigint AS ms) AS m
) AS g
"""
FILL_QUEUED = f"""
INSERT INTO {{s}}.{TABLE}
    (id, priority, state, attempt, max_attempts, run_at, created_at, name, queue, args)
SELECT {_UUID7.format(ms="ms")}, 0, 'queued', 0, 1, to_timestamp(ms / 1000.0),
       to_timestamp(ms / 1000.0), ($3::text[])[(1 + i % 8)::int], ($4::text[])[(1 + i % 4)::int],
       jsonb_build_array(jsonb_build_array(i), '{{}}'::jsonb)
FROM generate_series(0::bigint, $1::bigint - 1) AS i,
     LATERAL (SELECT $2::bigint + i * 600000 / $1::bigint AS ms) AS m
"""
FILL_STATS = """
INSERT INTO {s}.asyncjobs_job_stats
    (bucket, node_id, name, outcome, attempts, wait_s, wall_s, max_wall_s, timed,
     timed_wall_s, cpu_s)
SELECT b, n::uuid, name, outcome, a, a * 0.05, a * 0.3, 1.2, a, a * 0.3, a * 0.03
FROM generate_series(date_bin('10 s', now() - interval '1 hour', 'epoch'), now(),
                     interval '10 s') AS b,
     unnest($1::text[]) AS n, unnest($2::text[]) AS name,
     LATERAL (VALUES ('succeeded', 19), ('failed', 1)) AS o(outcome, a)
"""
FILL_NODES = f"""
INSERT INTO {{s}}.{NODES_TABLE} (id, pid, concurrency, running, host, version, queues)
SELECT n::uuid, 1000 + ord, 100, 37, 'worker-' || ord, 'bench', $2::text[]
FROM unnest($1::text[]) WITH ORDINALITY AS u(n, ord)
"""


async def fill(dsn: str, finished: int, queued: int) -> None:
    """A fresh schema with ``finished`` finished and ``queued`` queued jobs, statistics, nodes."""
    await fresh_schema(dsn, SCHEMA)
    now_ms = int(time.time() * 1000)
    con = await asyncpg.connect(dsn)
    try:
        names, queues = list(NAMES), list(QUEUES)
        # Finished jobs over the 7 days before the queued ones' 10 minutes: ids keep rising.
        start = now_ms - 7 * DAY_MS - 600_000
        await con.execute(
            FILL_FINISHED.replace("{s}", SCHEMA),
            finished,
            start,
            names,
            queues,
            orjson.dumps(ERROR).decode(),
        )
        await con.execute(
            FILL_QUEUED.replace("{s}", SCHEMA), queued, now_ms - 600_000, names, queues
        )
        await con.execute(FILL_STATS.replace("{s}", SCHEMA), list(NODES), names)
        await con.execute(FILL_NODES.replace("{s}", SCHEMA), list(NODES), queues)
        await con.execute(f"VACUUM ANALYZE {SCHEMA}.{TABLE}")
        await con.execute(f"VACUUM ANALYZE {SCHEMA}.asyncjobs_job_stats")
    finally:
        await con.close()


async def page_cursor(dsn: str, page: int) -> str:
    """The ``before`` of the job list's page ``page``: the last id of the page before it."""
    con = await asyncpg.connect(dsn)
    try:
        value = await con.fetchval(
            f"SELECT id FROM {SCHEMA}.{TABLE} ORDER BY id DESC OFFSET $1 LIMIT 1",
            (page - 1) * PAGE_SIZE - 1,
        )
    finally:
        await con.close()
    return str(value)


class Dashboard:
    """``asyncjobs dashboard`` in its own process, on a free port."""

    def __init__(self, dsn: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
        env |= {"ASYNCJOBS_DSN": dsn, "ASYNCJOBS_SCHEMA": SCHEMA,
                "ASYNCJOBS_DASHBOARD_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asyncjobs.cli", "dashboard", "--port", "0"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    async def url(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        match = re.search(rb"dashboard on (http://\S+)", line)
        if not match:
            raise RuntimeError(f"asyncjobs dashboard did not start: {line.decode()!r}")
        return match[1].decode()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def timed(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    """``n`` calls, one after the other, in milliseconds (after ``WARMUP`` untimed ones)."""
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def run(ctx: Context) -> list[Figure]:
    finished, queued = ctx.size(1_000_000, 20_000), ctx.size(100_000, 2_000)
    page = ctx.size(1000, 100)
    t0 = time.perf_counter()
    await fill(ctx.dsn, finished, queued)
    ctx.note(f"filled {finished:,} finished and {queued:,} queued jobs in "
             f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    before = await page_cursor(ctx.dsn, page)
    n = ctx.repeats * REQUESTS_PER_REPEAT
    paths = {
        "dashboard_overview_ms": "/",
        "dashboard_jobs_page1_ms": "/jobs",
        "dashboard_jobs_page1000_ms": f"/jobs?before={before}",
        "dashboard_failed_page_ms": "/jobs?state=failed",
    }
    samples: dict[str, list[float]] = {}
    server = Dashboard(ctx.dsn)
    try:
        url = await server.url()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            for figure, path in paths.items():

                async def get(path: str = path) -> None:
                    response = await client.get(path)
                    if response.status_code != 200 or "<table>" not in response.text:
                        raise RuntimeError(f"GET {path}: {response.status_code}")

                samples[figure] = await timed(get, n)
                ctx.note(f"{path}: median {statistics.median(samples[figure]):.1f} ms")
    finally:
        server.stop()
    args = cli.build_parser().parse_args(["status", "--dsn", ctx.dsn, "--schema", SCHEMA])

    async def status() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            await cli.cmd_status(args)

    samples["status_ms"] = await timed(status, n)
    ctx.note(f"asyncjobs status: median {statistics.median(samples['status_ms']):.1f} ms")
    params = {
        "finished_jobs": finished,
        "queued_jobs": queued,
        "page_size": PAGE_SIZE,
        "deep_page": page,
        "requests": n,
        "warmup": WARMUP,
        "client": "httpx, keep-alive, to `asyncjobs dashboard` in another process",
    }
    return [
        Figure(
            name=name,
            unit="ms",
            samples=values,
            target=TARGET_STATUS_MS if name == "status_ms" else TARGET_PAGE_MS,
            higher_is_better=False,
            params=params | ({"path": paths[name]} if name in paths else {}),
        )
        for name, values in samples.items()
    ]
