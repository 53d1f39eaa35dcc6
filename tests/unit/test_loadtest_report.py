"""The maths of ``asyncjobs loadtest``'s report: percentiles, rates, buckets over time, and the
report's counts adding up."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncjobs.loadtest.progress import Snapshot, format_line
from asyncjobs.loadtest.report import (
    MAX_BUCKETS,
    JobOutcome,
    NodeFacts,
    RunFacts,
    WorkflowOutcome,
    bucket_counts,
    bucket_index,
    bucket_width,
    build_report,
    error_kind,
    percentile,
    rate,
    rss_summary,
    summarize,
    timeline,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=200)


# -- percentiles -------------------------------------------------------------------------------


@given(samples, st.integers(min_value=1, max_value=99))
def test_percentile_matches_the_standard_librarys_inclusive_quantiles(
    values: list[float], q: int
) -> None:
    if len(values) < 2:
        values = values * 2  # statistics.quantiles needs two points
    expected = statistics.quantiles(values, n=100, method="inclusive")[q - 1]
    assert percentile(sorted(values), q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@given(samples)
def test_percentile_0_is_the_minimum_and_100_the_maximum(values: list[float]) -> None:
    ordered = sorted(values)
    assert percentile(ordered, 0) == ordered[0]
    assert percentile(ordered, 100) == ordered[-1]


@given(samples, st.floats(0, 100), st.floats(0, 100))
def test_percentile_never_decreases_with_q_and_stays_within_the_values(
    values: list[float], q1: float, q2: float
) -> None:
    ordered = sorted(values)
    lo, hi = sorted((q1, q2))
    assert ordered[0] <= percentile(ordered, lo) <= percentile(ordered, hi) <= ordered[-1]


def test_percentile_interpolates_between_the_two_closest_ranks() -> None:
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 90) == pytest.approx(37.0)
    assert percentile([5.0], 99) == 5.0


def test_percentile_of_nothing_or_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside 0 to 100"):
        percentile([1.0], 101)


@given(samples)
def test_summarize_counts_every_value_and_orders_its_percentiles(values: list[float]) -> None:
    s = summarize(values)
    assert s is not None
    assert s.count == len(values)
    assert s.max == max(values)
    assert s.mean == pytest.approx(math.fsum(values) / len(values), abs=1e-6)
    assert min(values) <= s.p50 <= s.p90 <= s.p99 <= s.max


def test_summarize_of_no_values_is_none() -> None:
    assert summarize([]) is None


def test_a_summary_in_json_is_scaled_to_milliseconds() -> None:
    s = summarize([0.001, 0.002, 0.003])
    assert s is not None
    assert s.to_json(scale=1000) == {
        "count": 3, "p50": 2.0, "p90": 2.8, "p99": 2.98, "max": 3.0, "mean": 2.0,
    }  # fmt: skip


# -- rates and buckets -------------------------------------------------------------------------


@given(st.integers(0, 10**9), st.floats(min_value=1e-3, max_value=1e6))
def test_a_rate_times_its_span_gives_back_the_count(count: int, seconds: float) -> None:
    assert rate(count, seconds) * seconds == pytest.approx(count)


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_a_rate_over_no_time_is_zero_rather_than_infinite(seconds: float) -> None:
    assert rate(10, seconds) == 0.0


@given(st.floats(min_value=0, max_value=1e7))
def test_bucket_width_is_whole_seconds_and_fits_the_span_in_the_most_buckets(span: float) -> None:
    width = bucket_width(span)
    assert width >= 1 and width == int(width)
    assert math.ceil(span / width) <= MAX_BUCKETS


@given(
    st.lists(st.floats(min_value=-50, max_value=150), max_size=300),
    st.floats(min_value=0.1, max_value=20),
    st.integers(1, 50),
)
def test_bucket_counts_add_up_and_put_each_time_in_its_interval(
    times: list[float], width: float, n: int
) -> None:
    counts = bucket_counts(times, 0.0, width, n)
    assert len(counts) == n
    assert sum(counts) == len(times)
    for t in times:
        i = bucket_index(t, 0.0, width, n)
        if 0 <= t < n * width:  # inside the range: its own interval; outside: the nearest end
            assert i * width <= t < (i + 1) * width or math.isclose(t, (i + 1) * width)
        else:
            assert i == (0 if t < 0 else n - 1)


def job(
    finished: float,
    *,
    created: float = 0.0,
    started: float | None = 0.0,
    kind: str = "io",
    state: str = "succeeded",
) -> JobOutcome:
    error = error_kind(state, None, "upstream_failed" if state == "cancelled" else None)
    return JobOutcome(kind, state, created, started, finished, error)


def test_timeline_counts_finishes_per_second_and_the_latency_of_single_jobs_only() -> None:
    jobs = [
        job(0.2, created=0.1),  # 100 ms
        job(0.5, created=0.2),  # 300 ms
        job(1.5, created=1.0, kind="step"),  # a workflow step: counted, not in latency
        job(1.7, created=1.6, state="failed"),  # 100 ms, an error
    ]
    points = timeline(jobs, t0=0.0, t_end=2.0)
    assert [p["finished"] for p in points] == [2, 2]
    assert [p["finished_per_s"] for p in points] == [2.0, 2.0]
    assert [p["errors"] for p in points] == [0, 1]
    assert points[0]["finish_p50_ms"] == pytest.approx(200.0)
    assert points[1]["finish_p50_ms"] == pytest.approx(100.0)


def test_the_last_bucket_rate_uses_its_own_shorter_width() -> None:
    points = timeline([job(2.2), job(2.3)], t0=0.0, t_end=2.5)  # buckets [0,1) [1,2) [2,2.5)
    assert points[-1]["finished"] == 2
    assert points[-1]["finished_per_s"] == pytest.approx(4.0)


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "error_type", "reason", "expected"),
    [
        ("succeeded", None, None, None),
        ("failed", "asyncjobs.loadtest.jobs.InjectedFailure", None, "failed: InjectedFailure"),
        ("failed", None, "unknown job", "failed: unknown job"),
        ("cancelled", None, "upstream_failed", "cancelled: upstream_failed"),
        ("lost", None, "node 0190 stopped heartbeating at 12:00", "lost"),
    ],
)
def test_error_kind_is_one_short_label_per_kind_of_failure(
    state: str, error_type: str | None, reason: str | None, expected: str | None
) -> None:
    assert error_kind(state, error_type, reason) == expected


def test_rss_summary_gives_the_first_peak_and_last_sample() -> None:
    assert rss_summary([(0.0, 10), (1.0, 30), (2.0, 20)]) == {"first": 10, "peak": 30, "last": 20}
    assert rss_summary([]) is None


# -- the whole report ----------------------------------------------------------------------------


def facts(**changes: object) -> RunFacts:
    jobs = [
        job(1.2, created=1.0, started=1.1),
        job(1.4, created=1.0, started=1.3, kind="cpu", state="failed"),
        job(2.0, created=1.5, started=1.6, kind="step"),
        job(2.1, created=1.5, started=None, kind="step", state="cancelled"),
    ]
    base = {
        "config": {"rate": None},
        "started": 1.0,
        "load_ended": 3.0,
        "ended": 4.0,
        "stopped_by": "duration",
        "submitted": {"io": 1, "cpu": 1, "workflow": 2},
        "enqueue_errors": {"StoreUnavailableError": 1},
        "enqueued_jobs": 7,
        "jobs": jobs,
        "workflows": [WorkflowOutcome("failed", 1.5, 1.6, 2.1)],
        "unfinished": {"queued": 2, "running": 1},
        "enqueue_call_s": [0.001, 0.003],
        "max_lag_s": None,
        "nodes": [NodeFacts(1, 4242, None, [(0.0, 100, 300), (1.0, 150, 400)])],
        "in_flight": [(0.0, 0, 0), (1.0, 2, 3)],
    }
    base.update(changes)
    return RunFacts(**base)  # type: ignore[arg-type]


def test_the_report_counts_every_enqueued_job_once_in_a_final_state_or_unfinished() -> None:
    r = build_report(facts())
    j = r["jobs"]
    assert j["enqueued"] == 7
    assert j["succeeded"] + j["failed"] + j["cancelled"] + j["lost"] + j["unfinished"] == 7
    assert (j["succeeded"], j["failed"], j["cancelled"], j["unfinished"]) == (2, 1, 1, 3)
    assert r["submissions"] == {"io": 1, "cpu": 1, "workflow": 2, "total": 4, "enqueue_failed": 1}
    assert r["workflows"] == {"submitted": 2, "succeeded": 0, "failed": 1, "unfinished": 1}


def test_the_report_rates_use_the_load_for_enqueues_and_the_finishes_for_throughput() -> None:
    r = build_report(facts())
    assert r["throughput"]["enqueued_per_s"] == pytest.approx(7 / 2.0)  # 2 s of load
    assert r["throughput"]["submitted_per_s"] == pytest.approx(4 / 2.0)
    assert r["throughput"]["finished_per_s"] == pytest.approx(4 / 1.1, abs=1e-3)  # last finish 2.1


def test_the_report_latency_is_in_ms_and_leaves_workflow_steps_out() -> None:
    lat = build_report(facts())["latency_ms"]
    assert lat["io"]["enqueue_to_start"]["p50"] == pytest.approx(100.0)
    assert lat["io"]["enqueue_to_finish"]["max"] == pytest.approx(200.0)
    assert lat["cpu"]["enqueue_to_start"]["p50"] == pytest.approx(300.0)
    assert lat["jobs"]["enqueue_to_finish"]["count"] == 2  # the two steps are not in it
    assert lat["workflow"]["submit_to_finish"]["max"] == pytest.approx(600.0)
    assert lat["enqueue_call"]["max"] == pytest.approx(3.0)


def test_the_report_lists_errors_most_frequent_first_with_failed_enqueues() -> None:
    r = build_report(facts(enqueue_errors={"StoreUnavailableError": 5}))
    assert r["errors"] == [
        ["enqueue: StoreUnavailableError", 5],
        ["cancelled: upstream_failed", 1],
        ["failed: no error recorded", 1],
    ]


def test_the_report_summarizes_each_nodes_memory_with_and_without_its_pool() -> None:
    (node,) = build_report(facts())["nodes"]
    assert node["rss_bytes"] == {"first": 100, "peak": 150, "last": 150}
    assert node["rss_with_pool_bytes"] == {"first": 300, "peak": 400, "last": 400}


def test_a_report_of_a_run_where_nothing_finished_has_no_latency_and_zero_throughput() -> None:
    r = build_report(facts(jobs=[], workflows=[], unfinished={"queued": 7}))
    assert r["jobs"]["unfinished"] == 7
    assert r["throughput"]["finished_per_s"] == 0.0
    assert r["latency_ms"]["jobs"]["enqueue_to_start"] is None
    assert r["timeline"] == []


def test_the_progress_line_shows_rate_in_flight_errors_and_recent_latency() -> None:
    line = format_line(Snapshot(3.0, "load", 120, 100, 33.3, 20, 2, [0.010, 0.020, 0.030]))
    assert "done 100 (33.3/s)" in line
    assert "in flight 20" in line
    assert "errors 2" in line
    assert "p50 20.0 ms" in line
    assert "latency" not in format_line(Snapshot(3.0, "drain", 120, 100, 0.0, 20, 2, []))
