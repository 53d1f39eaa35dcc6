"""``asyncjobs loadtest`` as a user runs it: a few seconds against the real Postgres, with a real
node it starts and stops, and a report whose counts add up and match the database."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import orjson

from .nodes import describe, run_cli, subprocess_env

STATES = ("succeeded", "failed", "cancelled", "lost")


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, f"a traceback instead of a sentence:\n{stderr}"


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_loadtest_reports_a_mix_whose_counts_add_up_and_match_the_database(
    pg_dsn: str, pg_schema: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = await run_cli(
        "loadtest", "--dsn", pg_dsn, "--schema", pg_schema, "--keep", "--nodes", "1",
        "--concurrency", "50", "--workers", "1", "--in-flight", "20", "--duration", "2",
        "--mix", "io=0.6,cpu=0.2,workflow=0.2", "--workflow", "chain:3",
        "--io-sleep", "uniform:0.001:0.01", "--cpu-work", "20000", "--fail-rate", "0.1",
        "--seed", "7", "--timeout", "40", "--json", str(out),
        env=subprocess_env(), timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, describe(result)
    assert_no_traceback(result.stderr)
    assert "latency (ms)" in result.stdout, describe(result)
    r = orjson.loads(out.read_bytes())
    assert r["stopped_by"] == "duration", describe(result)

    # Every job enqueued ends in exactly one final state (the drain waited for all of them).
    jobs, subs = r["jobs"], r["submissions"]
    assert jobs["unfinished"] == 0, r["jobs"]
    assert jobs["enqueued"] == sum(jobs[s] for s in STATES) + jobs["unfinished"]
    assert subs["total"] == subs["io"] + subs["cpu"] + subs["workflow"]
    assert jobs["enqueued"] == subs["io"] + subs["cpu"] + 3 * subs["workflow"]
    assert min(subs["io"], subs["cpu"], subs["workflow"]) > 0, subs
    rows = await db.fetch(
        f"SELECT state::text, count(*) FROM {pg_schema}.asyncjobs_jobs GROUP BY state"
    )
    in_db = {row[0]: row[1] for row in rows}
    assert {s: jobs[s] for s in STATES if jobs[s]} == in_db

    # Errors by kind: the injected failures, and the workflow steps they cancelled.
    errors = dict(r["errors"])
    assert jobs["failed"] > 0
    assert errors.get("failed: InjectedFailure") == jobs["failed"], r["errors"]
    assert errors.get("cancelled: upstream_failed", 0) == jobs["cancelled"], r["errors"]
    assert r["workflows"]["succeeded"] + r["workflows"]["failed"] == subs["workflow"]

    # Latency of every single job, in order, and throughput.
    lat = r["latency_ms"]
    assert lat["io"]["enqueue_to_finish"]["count"] == subs["io"]
    assert lat["cpu"]["enqueue_to_finish"]["count"] == subs["cpu"]
    for key in ("io", "cpu", "jobs"):
        for span in ("enqueue_to_start", "enqueue_to_finish"):
            s = lat[key][span]
            assert 0 <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"], (key, span, s)
    assert lat["jobs"]["enqueue_to_start"]["p50"] <= lat["jobs"]["enqueue_to_finish"]["p50"]
    assert lat["workflow"]["submit_to_finish"]["count"] == subs["workflow"]
    assert r["throughput"]["finished_per_s"] > 0
    assert sum(p["finished"] for p in r["timeline"]) == jobs["enqueued"]

    # The node it started: memory sampled, and stopped at the end.
    (node,) = r["nodes"]
    assert node["exit_status"] is None
    assert node["rss_bytes"]["peak"] >= node["rss_bytes"]["first"] > 0
    assert node["rss_with_pool_bytes"]["peak"] > node["rss_bytes"]["peak"]  # + zygote, worker
    assert not is_running(node["pid"])
    live = await db.fetchval(
        f"SELECT count(*) FROM {pg_schema}.asyncjobs_nodes WHERE stopped_at IS NULL"
    )
    assert live == 0


async def test_loadtest_drops_the_schema_it_created(
    pg_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    result = await run_cli(
        "loadtest", "--dsn", pg_dsn, "--schema", pg_schema, "--rate", "50", "--jobs", "20",
        "--concurrency", "10", "--workers", "1", "--quiet", "--timeout", "40",
        env=subprocess_env(), timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, describe(result)
    assert "(dropped)" in result.stdout, describe(result)
    assert "20 (io 20, cpu 0, workflow 0)" in result.stdout, describe(result)
    exists = await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", pg_schema)
    assert exists == 0


async def test_loadtest_with_a_mix_that_does_not_add_up_exits_2_with_one_sentence(
    pg_dsn: str,
) -> None:
    result = await run_cli(
        "loadtest", "--dsn", pg_dsn, "--mix", "io=0.7,cpu=0.5", env=subprocess_env()
    )

    assert result.returncode == 2, describe(result)
    assert_no_traceback(result.stderr)
    assert result.stderr.strip().splitlines() == [
        "asyncjobs: --mix 'io=0.7,cpu=0.5': the fractions add up to 1.2, not 1; make them "
        "sum to 1, like io=0.7,cpu=0.2,workflow=0.1"
    ]
