"""``asyncjobs status`` and ``asyncjobs report``: read from indexes and the nodes' statistics."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ..monitoring import (
    CPU_BOUND_FROM,
    IO_BOUND_BELOW,
    age,
    classify,
    duration_s,
    error_line,
    snapshot,
    snapshot_json,
)
from .common import EXIT_OK, CliError, _command, _open_store, _print_json, _print_rows

if TYPE_CHECKING:
    from .common import Subparsers


async def cmd_status(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        snap = await snapshot(store)
    if args.json:
        _print_json(snapshot_json(snap))
        return EXIT_OK
    now = snap.taken_at
    print("queues:" if snap.queues else "no unfinished jobs")
    rows: list[tuple[str, ...]] = [
        ("QUEUE", "QUEUED", "PARKED", "RUNNING", "SCHEDULED", "OLDEST WAIT")
    ]
    for q in snap.queues:
        wait = "-" if q.oldest_queued_at is None else age(now - q.oldest_queued_at)
        rows.append((q.queue, str(q.queued), str(q.parked), str(q.running), str(q.scheduled), wait))
    if snap.queues:
        _print_rows(rows)
    tp = snap.throughput
    counts = ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(tp.finished.items()))
    print(
        f"finished over the last {tp.window_s:.0f} s: {tp.per_s:,.1f} jobs/s"
        + (f" ({counts})" if counts else "")
    )
    print("nodes:" if snap.nodes else "no node is up")
    rows = [("NODE", "HOST", "PID", "QUEUES", "RUNNING", "WORKERS", "HEARTBEAT", "UP FOR")]
    for n in snap.nodes:
        rows.append(
            (str(n.id), n.host, str(n.pid), ",".join(n.queues), f"{n.running}/{n.concurrency}",
             str(n.workers), f"{age(n.heartbeat_age_s)} ago", age(now - n.started_at))
        )  # fmt: skip
    if snap.nodes:
        _print_rows(rows)
    keys = snap.busy_keys
    print("busy concurrency keys (running / limit):" if keys else "no concurrency key is busy")
    rows = [("KEY", "RUNNING", "HOLDERS")]
    for k in keys:
        holders = ", ".join(f"{name} {job_id} on node {node}" for job_id, name, node in k.holders)
        rows.append((k.key, f"{k.running}/{k.limit}", holders))
    if keys:
        _print_rows(rows)
    buckets = snap.rate_buckets
    print("rate limits:" if buckets else "no rate-limited job has started yet")
    rows = [("BUCKET", "RATE", "NEXT START")]
    for b in buckets:
        budget = "free now" if b.ahead_s <= 0 else f"booked {b.ahead_s:.2f} s ahead"
        rows.append((b.key, f"{b.starts}/{b.period_s:g}s", budget))
    if buckets:
        _print_rows(rows)
    print("recent failures:" if snap.failures else "no recent failures")
    rows = [("JOB", "NAME", "STATE", "ENDED", "ERROR")]
    for r in snap.failures:
        ended = "-" if r.finished_at is None else f"{age(now - r.finished_at.timestamp())} ago"
        rows.append((str(r.id), r.name, r.state.value, ended, error_line(r)))
    if snap.failures:
        _print_rows(rows)
    return EXIT_OK


def add_status(sub: Subparsers) -> None:
    """Register ``asyncjobs status``."""
    p = sub.add_parser(
        "status",
        help="queues, throughput, nodes, busy concurrency keys, rate limits, recent failures",
        description="Show each queue's unfinished jobs (queued, parked, running, scheduled) and "
        "oldest wait; the jobs/s the nodes finished over the last minute; the nodes that are "
        "up, with their running jobs, pool workers and heartbeat; the concurrency keys that "
        "have running jobs, with the jobs holding them; each rate bucket's rate and next free "
        "start; and the most recent failures. Read through indexes and the nodes' statistics "
        "only: as fast with millions of finished jobs as with none.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_status)


async def cmd_report(args: argparse.Namespace) -> int:
    seconds = _duration_s(args.since, "--since")
    async with _open_store(args) as store:
        stats = await store.job_stats(time.time() - seconds)
    rows_out = [classify(s) for s in stats]
    if args.json:
        _print_json(
            {
                "since_s": seconds,
                "jobs": [
                    {**c.stats._asdict(), "cpu_share": c.cpu_share, "kind": c.kind}
                    for c in rows_out
                ],
            }
        )
        return EXIT_OK
    if not rows_out:
        print(f"no job finished in the last {args.since}")
        return EXIT_OK
    print(
        f"jobs finished in the last {args.since}, by CPU time over run time "
        f"(CPU-bound from {CPU_BOUND_FROM:.0%}, IO-bound up to {IO_BOUND_BELOW:.0%}):"
    )
    rows: list[tuple[str, ...]] = [
        ("NAME", "KIND", "CPU/RUN", "ATTEMPTS", "FAILED", "AVG WAIT", "AVG RUN", "AVG CPU",
         "MAX RUN")
    ]  # fmt: skip
    for c in rows_out:
        s = c.stats
        share = "-" if c.cpu_share is None else f"{c.cpu_share:.0%}"
        avg_cpu = f"{s.cpu_s / s.timed * 1000:,.1f} ms" if s.timed else "-"
        rows.append(
            (s.name, c.kind, share, f"{s.attempts:,}", f"{s.failed:,}",
             f"{s.wait_s / s.attempts * 1000:,.1f} ms", f"{s.wall_s / s.attempts * 1000:,.1f} ms",
             avg_cpu, f"{s.max_wall_s * 1000:,.1f} ms")
        )  # fmt: skip
    _print_rows(rows)
    return EXIT_OK


def _duration_s(value: str, flag: str) -> float:
    try:
        return duration_s(value)
    except ValueError as exc:
        raise CliError(f"{flag} {exc}") from None


def add_report(sub: Subparsers) -> None:
    """Register ``asyncjobs report``."""
    p = sub.add_parser(
        "report",
        help="reports over the nodes' statistics (cpu-vs-io)",
        description="cpu-vs-io: for each job name, the attempts finished over a recent period, "
        "their average queue wait, run time and CPU time, and whether the job is CPU-bound "
        "(CPU time at least half its run time: give it to the process pool) or IO-bound (at "
        "most a tenth: a coroutine is right). Read from the per-node statistics, not the jobs.",
    )
    p.add_argument("kind", choices=["cpu-vs-io"], help="the report")
    p.add_argument("--since", default="1h", help="the period: 30m, 1h (default), 2d, ...")
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_report)
