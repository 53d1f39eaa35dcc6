"""What `asyncjobs status` and the dashboard's overview show, read in one place.

Every read goes through an index or a small table: the partial indexes of unfinished jobs,
the failures index, the nodes table, and the per-node statistics the completers write (see
migration 0007). None of them reads finished jobs one by one, so a snapshot costs the same
with a million finished jobs as with none.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .ids import id_floor
from .jobs import JobId, JobRecord
from .store.base import (
    BusyKey,
    JobStats,
    NodeStatus,
    QueueCounts,
    RateBucket,
    StepRecord,
    Store,
    Throughput,
)

THROUGHPUT_WINDOW_S = 60.0
FAILURES_SHOWN = 10
ROWS_SHOWN = 20  # busy keys and rate buckets

# A job whose CPU time is at least this share of its run time is CPU-bound; at most
# IO_BOUND_BELOW, IO-bound; in between, mixed.
CPU_BOUND_FROM = 0.5
IO_BOUND_BELOW = 0.1


_DURATION = re.compile(r"^(\d{1,9}(?:\.\d{1,9})?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 100 * 365 * 86400.0  # longer ago than any job


def duration_s(text: str) -> float:
    """Seconds in "90s", "30m", "1h", "2d"; ``ValueError`` with a sentence otherwise."""
    match = _DURATION.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration; use for example 90s, 30m, 1h or 2d")
    return min(float(match[1]) * _UNIT_S[match[2]], MAX_DURATION_S)


def created_since(text: str, now: float | None = None) -> JobId:
    """The smallest id of a job created ``text`` ago ("90s", "30m", "1h", "2d") or since an
    ISO time: ids are UUIDv7, so this bounds the primary-key scan. ``ValueError`` with a
    sentence if it is neither."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return id_floor(now - min(float(match[1]) * _UNIT_S[match[2]], MAX_DURATION_S))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 30m, 1h, 2d) nor an ISO time "
            "(2026-11-21T10:00:00+00:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return id_floor(when.timestamp())


def age(seconds: float | None) -> str:
    """A duration for people: ``250 ms``, ``4.2 s``, ``3.1 min``, ``2.0 h``, ``1.5 d``."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class Snapshot(NamedTuple):
    taken_at: float  # epoch seconds
    queues: list[QueueCounts]
    nodes: list[NodeStatus]
    throughput: Throughput
    failures: list[JobRecord]
    busy_keys: list[BusyKey]
    rate_buckets: list[RateBucket]


async def snapshot(store: Store, now: float | None = None) -> Snapshot:
    """The cluster as it is now: queues, nodes, throughput, recent failures, limits."""
    now = time.time() if now is None else now
    return Snapshot(
        now,
        await store.queue_counts(),
        await store.live_nodes(),
        await store.throughput(now, THROUGHPUT_WINDOW_S),
        await store.recent_failures(FAILURES_SHOWN),
        await store.busy_keys(ROWS_SHOWN),
        await store.rate_buckets(ROWS_SHOWN),
    )


def record_summary(r: JobRecord) -> dict[str, Any]:
    """A job as one row of a list (JSON-ready but for ids and datetimes)."""
    return {
        "id": r.id, "name": r.name, "queue": r.queue, "state": r.state.value,
        "attempt": r.attempt, "max_attempts": r.max_attempts, "created_at": r.created_at,
        "started_at": r.started_at, "finished_at": r.finished_at, "node_id": r.node_id,
        "reason": r.reason,
    }  # fmt: skip


def step_summary(s: StepRecord) -> dict[str, Any]:
    """One recorded step of a durable job (``asyncjobs show``, the dashboard's job page)."""
    return {
        "seq": s.seq, "name": s.name, "kind": s.kind, "state": s.state, "attempt": s.attempt,
        "idempotent": s.idempotent, "started_at": s.started_at, "finished_at": s.finished_at,
        "node_id": s.node_id,
        "error": None if s.error is None else f"{s.error.get('type')}: {s.error.get('message')}",
    }  # fmt: skip


def record_detail(r: JobRecord, steps: Sequence[StepRecord] = ()) -> dict[str, Any]:
    """Everything about a job (``asyncjobs show --json``, the dashboard's job page)."""
    out = record_summary(r)
    out.update(
        args=r.args, kwargs=r.kwargs, result=r.result, error=r.error, run_at=r.run_at,
        priority=r.priority, unique_key=r.unique_key, workflow_id=r.workflow_id,
        step=r.step, schedule=r.schedule, cancel_requested=r.cancel_requested,
        queue_wait_s=r.queue_wait_s, wall_s=r.wall_s, cpu_s=r.cpu_s,
        steps=[step_summary(s) for s in steps],
    )  # fmt: skip
    return out


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    return {
        "taken_at": s.taken_at,
        "queues": [q._asdict() for q in s.queues],
        "nodes": [n._asdict() for n in s.nodes],
        "throughput": {
            "window_s": s.throughput.window_s,
            "finished": s.throughput.finished,
            "per_s": s.throughput.per_s,
        },
        "busy_keys": [k._asdict() for k in s.busy_keys],
        "rate_buckets": [b._asdict() for b in s.rate_buckets],
        "recent_failures": [record_summary(r) for r in s.failures],
    }


def error_line(r: JobRecord, width: int = 80) -> str:
    """A failed job's error (or reason) on one line."""
    why = r.reason or ""
    if r.error:
        why = f"{r.error.get('type', '')}: {r.error.get('message', '')}"
    return why.splitlines()[0][:width] if why else ""


class Classified(NamedTuple):
    """One job name's attempts, classified by how much of their run time was CPU."""

    stats: JobStats
    kind: str  # "cpu-bound", "io-bound", "mixed", or "unmeasured"

    @property
    def cpu_share(self) -> float | None:
        """CPU time over run time, over the attempts that measured CPU."""
        s = self.stats
        if not s.timed or s.timed_wall_s <= 0:
            return None
        return min(1.0, s.cpu_s / s.timed_wall_s)


def classify(stats: JobStats) -> Classified:
    c = Classified(stats, "unmeasured")
    share = c.cpu_share
    if share is None:
        return c
    if share >= CPU_BOUND_FROM:
        return c._replace(kind="cpu-bound")
    if share <= IO_BOUND_BELOW:
        return c._replace(kind="io-bound")
    return c._replace(kind="mixed")
