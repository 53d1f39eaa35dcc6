"""A 10,000-task workflow on real Postgres: 100 chords of 100, chained (DESIGN §6).

Every job counts its runs in this process, so "no task lost, none run twice" is proved, not
assumed, and the final result proves each chord got all 100 results of its group.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from asyncjobs import App, JobContext, Settings, chain, chord, group

STAGES = 100
WIDTH = 100


async def test_ten_thousand_tasks_of_chained_chords_all_run_once(pg_settings: Settings) -> None:
    runs: Counter[Any] = Counter()
    app = App(settings=pg_settings.replace(concurrency=300))

    @app.job()
    async def member(ctx: JobContext, previous: int | None, i: int) -> int:
        runs[ctx.job_id] += 1
        return i if previous is None else previous + i

    @app.job()
    async def total(ctx: JobContext, results: list[int]) -> int:
        runs[ctx.job_id] += 1
        assert len(results) == WIDTH
        return sum(results) // WIDTH  # the average carries into the next stage

    @app.job()
    async def first(ctx: JobContext) -> None:
        runs[ctx.job_id] += 1

    stages = [chord(group(member.s(i) for i in range(WIDTH)), total.s()) for _ in range(STAGES)]
    workflow = chain(first.s(), *stages)
    async with app:
        wid = await app.submit(workflow, name="chained chords")
        # Stage k's members get stage k-1's average a and return a + i: each stage adds
        # sum(range(WIDTH)) // WIDTH (49) to the average, starting from nothing (None).
        result = await app.workflow_result(wid, timeout=240)
        status = await app.workflow_status(wid)
    expected_tasks = 1 + STAGES * (WIDTH + 1)
    assert status.state == "succeeded"
    assert status.counts["succeeded"] == status.total == expected_tasks
    assert len(runs) == expected_tasks and set(runs.values()) == {1}
    assert result == STAGES * (sum(range(WIDTH)) // WIDTH)
