"""`make run`'s demo (plugins_example/demo.py), run to the end with ``--once``, in the test's
own schema (the demo honours ASYNCJOBS_SCHEMA, and defaults to ``asyncjobs_demo``)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import asyncpg

from .nodes import ROOT, describe, subprocess_env

DEMO_TIMEOUT_S = 60

OUTCOME_LINES = {
    "a short sleep succeeds": r"^\s*sleep 0\.5 s\s+succeeded: 0\.5$",
    "a longer sleep succeeds": r"^\s*sleep 1\.5 s\s+succeeded: 1\.5$",
    "a failing job fails at once": (
        r"^\s*fails at once\s+failed after 1 attempt\(s\): .*always_fails.*ProvisioningError"
    ),
    "a flaky job is retried until it succeeds": (
        r"^\s*flaky, retried\s+succeeded: 'succeeded on attempt 3'$"
    ),
    "a slow job hits its time limit": (
        r"^\s*too slow \(1 s limit\)\s+failed after 1 attempt\(s\): .*too_slow.*time limit"
    ),
    "a delayed job runs": r"^\s*delayed by 2 s\s+succeeded: 0\.1$",
    "a CPU job runs in a pool worker": r"^\s*CPU, in a worker\s+succeeded: '[0-9a-f]{64}'$",
    "a query is answered from the preloaded model": (
        r"^\s*model lookup\s+succeeded: '[0-9a-f]{16}'$"
    ),
    "the bulk jobs finish": r"^\s*1,000 short sleeps\s+finished \(sampled 10/10 succeeded\)$",
}


async def test_demo_once_exits_0_and_prints_the_outcome_of_each_example_job(
    pg_dsn: str, pg_schema: str
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "plugins_example.demo", "--once"],
        cwd=ROOT,
        env=subprocess_env(pg_dsn, pg_schema),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    missing = [
        what
        for what, pattern in OUTCOME_LINES.items()
        if not re.search(pattern, result.stdout, re.MULTILINE)
    ]
    assert not missing, f"outcome lines missing: {missing}\n{describe(result)}"
    con = await asyncpg.connect(pg_dsn)
    try:
        jobs = await con.fetchval(f"SELECT count(*) FROM {pg_schema}.asyncjobs_jobs")
    finally:
        await con.close()
    assert jobs == 1008, "the demo did not use the database it was given"
