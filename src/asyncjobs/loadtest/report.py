"""The maths of a load-test report: percentiles, rates, buckets over time. Pure functions.

Times are epoch seconds. A job's ``created`` is the database's clock at insert; ``started``
and ``finished`` come from the node's clock. On one machine they are one clock; across
machines, their skew adds to (or subtracts from) every latency.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

PERCENTILES = (50, 90, 99)
MAX_BUCKETS = 120  # a timeline has at most this many points; buckets widen to fit
TERMINAL = ("succeeded", "failed", "cancelled", "lost")


class JobOutcome(NamedTuple):
    """One finished job of the run. ``kind``: io, cpu, or step (of a workflow)."""

    kind: str
    state: str
    created: float
    started: float | None  # None if it never ran (cancelled first)
    finished: float
    error: str | None  # its error kind (``error_kind``); None if it succeeded


class WorkflowOutcome(NamedTuple):
    """One finished workflow: submitted (its steps' insert), first start, last finish."""

    state: str  # succeeded if every step did, else failed
    created: float
    started: float | None
    finished: float


@dataclass(frozen=True, slots=True)
class Summary:
    """Latency percentiles of a set of samples, in the samples' unit."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    def to_json(self, scale: float = 1.0, digits: int = 3) -> dict[str, float | int]:
        return {
            "count": self.count,
            **{k: round(getattr(self, k) * scale, digits) for k in ("p50", "p90", "p99", "max")},
            "mean": round(self.mean * scale, digits),
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of sorted values, linearly interpolated between the
    two closest ranks (numpy's default). Raises ``ValueError`` on no values."""
    if not ordered:
        raise ValueError("no values to take a percentile of")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0 to 100")
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    low, high = ordered[lo], ordered[hi]
    return low + (high - low) * (pos - lo)


def summarize(values: Iterable[float]) -> Summary | None:
    """p50, p90, p99, max and mean of ``values``; None if there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    p50, p90, p99 = (percentile(ordered, q) for q in PERCENTILES)
    return Summary(len(ordered), p50, p90, p99, ordered[-1], math.fsum(ordered) / len(ordered))


def rate(count: float, seconds: float) -> float:
    """``count`` per second over ``seconds``; 0 for an empty or zero span."""
    return count / seconds if seconds > 0 else 0.0


def bucket_width(span_s: float, max_buckets: int = MAX_BUCKETS) -> float:
    """A whole number of seconds (at least 1) that cuts ``span_s`` into at most
    ``max_buckets`` buckets."""
    return float(max(1, math.ceil(span_s / max_buckets)))


def bucket_index(t: float, t0: float, width: float, n: int) -> int:
    """The bucket of time ``t``: ``[t0 + i*width, t0 + (i+1)*width)``, clamped to 0..n-1."""
    return min(max(int((t - t0) // width), 0), n - 1)


def bucket_counts(times: Iterable[float], t0: float, width: float, n: int) -> list[int]:
    """How many of ``times`` fall in each of ``n`` buckets from ``t0`` (out-of-range times go
    to the first or last bucket, so the counts add up to the number of times)."""
    counts = [0] * n
    for t in times:
        counts[bucket_index(t, t0, width, n)] += 1
    return counts


def timeline(
    jobs: Sequence[JobOutcome], t0: float, t_end: float, width: float | None = None
) -> list[dict[str, Any]]:
    """Per bucket of time since ``t0``: jobs finished, their rate, errors, and the p50 and
    p99 enqueue-to-finish latency (ms) of the single jobs that finished in it."""
    span = max(t_end - t0, 1e-9)
    width = width or bucket_width(span)
    n = max(1, math.ceil(span / width))
    finished = [0] * n
    errors = [0] * n
    latencies: list[list[float]] = [[] for _ in range(n)]
    for job in jobs:
        i = bucket_index(job.finished, t0, width, n)
        finished[i] += 1
        if job.error is not None:
            errors[i] += 1
        if job.kind != "step" and job.started is not None:
            latencies[i].append(job.finished - job.created)
    points = []
    for i in range(n):
        start = i * width
        this_width = min(width, span - start) if i == n - 1 else width
        summary = summarize(latencies[i])
        points.append(
            {
                "t_s": round(start, 3),
                "finished": finished[i],
                "finished_per_s": round(rate(finished[i], this_width), 3),
                "errors": errors[i],
                "finish_p50_ms": None if summary is None else round(summary.p50 * 1000, 3),
                "finish_p99_ms": None if summary is None else round(summary.p99 * 1000, 3),
            }
        )
    return points


def error_kind(state: str, error_type: str | None, reason: str | None) -> str | None:
    """How a job went wrong, as one short label (None if it succeeded): the error's class for
    a failure (``failed: InjectedFailure``), the reason for a cancellation, ``lost``."""
    if state == "succeeded":
        return None
    if state == "failed":
        what = error_type.rsplit(".", 1)[-1] if error_type else (reason or "no error recorded")
        return f"failed: {what}"
    if state == "cancelled":
        return f"cancelled: {reason or 'no reason recorded'}"
    return state  # lost: the reason names the node and time, which would split the count


def latency_summaries(jobs: Iterable[JobOutcome]) -> dict[str, dict[str, Summary | None]]:
    """Enqueue-to-start and enqueue-to-finish (seconds) of the single jobs that ran, per kind
    (io, cpu) and for all of them (jobs). Workflow steps are left out: their wait includes
    their parents' run."""
    start: dict[str, list[float]] = {"jobs": [], "io": [], "cpu": []}
    finish: dict[str, list[float]] = {"jobs": [], "io": [], "cpu": []}
    for job in jobs:
        if job.kind == "step" or job.started is None:
            continue
        for key in ("jobs", job.kind):
            start[key].append(job.started - job.created)
            finish[key].append(job.finished - job.created)
    return {
        key: {"start": summarize(start[key]), "finish": summarize(finish[key])} for key in start
    }


def workflow_summary(workflows: Iterable[WorkflowOutcome]) -> dict[str, Summary | None]:
    """Submit-to-first-start and submit-to-last-finish (seconds) of the finished workflows."""
    runs = list(workflows)
    return {
        "start": summarize(w.started - w.created for w in runs if w.started is not None),
        "finish": summarize(w.finished - w.created for w in runs),
    }


def state_counts(jobs: Iterable[JobOutcome]) -> dict[str, int]:
    counts = Counter(job.state for job in jobs)
    return {state: counts.get(state, 0) for state in TERMINAL}


def error_counts(jobs: Iterable[JobOutcome], enqueue_errors: Mapping[str, int]) -> list[Any]:
    """``[kind, count]`` pairs, most frequent first: the jobs' errors, then failed enqueues."""
    counts = Counter(job.error for job in jobs if job.error is not None)
    for kind, n in enqueue_errors.items():
        counts[f"enqueue: {kind}"] += n
    return [[kind, n] for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def rss_summary(samples: Sequence[tuple[float, int]]) -> dict[str, int] | None:
    """First, peak and last RSS (bytes) of a series of ``(t, rss)`` samples."""
    if not samples:
        return None
    return {
        "first": samples[0][1],
        "peak": max(rss for _, rss in samples),
        "last": samples[-1][1],
    }


# -- the whole report --------------------------------------------------------------------------


class NodeFacts(NamedTuple):
    """A node the harness started: its memory samples ``(t, rss, rss with its pool)``."""

    number: int
    pid: int
    exit_status: int | None  # set if it exited before the harness stopped it
    samples: Sequence[tuple[float, int, int]]


@dataclass(frozen=True, slots=True)
class RunFacts:
    """Everything a run measured, as plain data."""

    config: Mapping[str, Any]
    started: float  # epoch seconds: the load began
    load_ended: float
    ended: float  # the drain ended (every job finished, or the run stopped waiting)
    stopped_by: str  # duration, jobs, interrupted, timeout
    submitted: Mapping[str, int]  # submissions stored, by kind
    enqueue_errors: Mapping[str, int]  # submissions that failed, by exception type
    enqueued_jobs: int
    jobs: Sequence[JobOutcome]
    workflows: Sequence[WorkflowOutcome]
    unfinished: Mapping[str, int]  # jobs not finished at the end, by state
    enqueue_call_s: Sequence[float]
    max_lag_s: float | None  # open loop only
    nodes: Sequence[NodeFacts]
    in_flight: Sequence[tuple[float, int, int]]  # (t since start, submissions, jobs)


def _ms(summary: Summary | None) -> dict[str, float | int] | None:
    return None if summary is None else summary.to_json(scale=1000.0)


def build_report(f: RunFacts) -> dict[str, Any]:
    """The report as JSON-ready data. ``jobs.enqueued`` is the sum of the final states and
    ``unfinished``; latencies are in milliseconds, memory in bytes, times in seconds."""
    states = state_counts(f.jobs)
    unfinished = sum(f.unfinished.values())
    load_s = max(f.load_ended - f.started, 0.0)
    last_finish = max((j.finished for j in f.jobs), default=f.started)
    span = max(last_finish - f.started, 0.0)
    points = timeline(f.jobs, f.started, max(f.ended, last_finish)) if f.jobs else []
    latency = latency_summaries(f.jobs)
    wf_latency = workflow_summary(f.workflows)
    total_submitted = sum(f.submitted.values())
    return {
        "config": dict(f.config),
        "started_at": datetime.fromtimestamp(f.started, UTC).isoformat(),
        "stopped_by": f.stopped_by,
        "elapsed_s": {
            "load": round(load_s, 3),
            "drain": round(max(f.ended - f.load_ended, 0.0), 3),
            "total": round(max(f.ended - f.started, 0.0), 3),
        },
        "submissions": {
            **{kind: f.submitted.get(kind, 0) for kind in ("io", "cpu", "workflow")},
            "total": total_submitted,
            "enqueue_failed": sum(f.enqueue_errors.values()),
        },
        "jobs": {
            "enqueued": f.enqueued_jobs,
            **states,
            "unfinished": unfinished,
            "unfinished_by_state": dict(f.unfinished),
        },
        "workflows": {
            "submitted": f.submitted.get("workflow", 0),
            "succeeded": sum(1 for w in f.workflows if w.state == "succeeded"),
            "failed": sum(1 for w in f.workflows if w.state != "succeeded"),
            "unfinished": f.submitted.get("workflow", 0) - len(f.workflows),
        },
        "throughput": {
            "submitted_per_s": round(rate(total_submitted, load_s), 3),
            "enqueued_per_s": round(rate(f.enqueued_jobs, load_s), 3),
            "finished_per_s": round(rate(len(f.jobs), span), 3),
            "peak_finished_per_s": max((p["finished_per_s"] for p in points), default=0.0),
        },
        "latency_ms": {
            **{
                key: {"enqueue_to_start": _ms(v["start"]), "enqueue_to_finish": _ms(v["finish"])}
                for key, v in latency.items()
            },
            "workflow": {
                "submit_to_start": _ms(wf_latency["start"]),
                "submit_to_finish": _ms(wf_latency["finish"]),
            },
            "enqueue_call": _ms(summarize(f.enqueue_call_s)),
        },
        "open_loop_max_lag_ms": None if f.max_lag_s is None else round(f.max_lag_s * 1000, 3),
        "errors": error_counts(f.jobs, f.enqueue_errors),
        "nodes": [
            {
                "number": n.number,
                "pid": n.pid,
                "exit_status": n.exit_status,
                "rss_bytes": rss_summary([(t, rss) for t, rss, _ in n.samples]),
                "rss_with_pool_bytes": rss_summary([(t, tree) for t, _, tree in n.samples]),
                "samples": [[round(t, 3), rss, tree] for t, rss, tree in n.samples],
            }
            for n in f.nodes
        ],
        "timeline": points,
        "in_flight": [[round(t, 3), subs, jobs] for t, subs, jobs in f.in_flight],
    }
