"""Random crashes between and inside the steps of durable jobs, on both stores (Hypothesis).

A job of random steps, some idempotent, runs under the test harness, which kills its node at
random points (before a step, during it, after its result is recorded), one after the
other, each time letting another node take over as the reaper would. Whatever the points:

- no step that is not idempotent ever runs twice, and no completed step runs again;
- the job always ends with a record: ``succeeded`` with every step's result, or ``lost``
  exactly when a crash hit a step that is not idempotent while it ran, naming that step;
- its recorded steps are the ones that ran, in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjobs import App, JobContext, JobState, Settings
from asyncjobs.testing import Harness


@dataclass(frozen=True)
class Plan:
    idempotent: list[bool]  # one per step
    crashes: list[tuple[int, str]]  # (step index, point), in the order they are armed


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 6))
    idempotent = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    points = st.tuples(st.integers(0, n - 1), st.sampled_from(["before", "during", "after"]))
    crashes = draw(st.lists(points, max_size=4, unique=True))
    return Plan(idempotent, crashes)


async def run_plan(base: Settings, plan: Plan) -> None:
    app = App(settings=base)
    ran: list[int] = []

    async def work(i: int) -> int:
        ran.append(i)
        await asyncio.sleep(0)
        return i * 10

    @app.job(durable=True)
    async def flow(ctx: JobContext, n: int) -> list[int]:
        return [await ctx.step(f"s{i}", work, i, idempotent=plan.idempotent[i]) for i in range(n)]

    n = len(plan.idempotent)
    async with Harness(app) as h:
        for i, point in plan.crashes:
            h.crash_at(f"s{i}", when=point)
        job_id = await h.app.enqueue(flow, n)
        await h.run_until_idle()
        record = await h.app.get(job_id)
        steps = await h.app.steps(job_id)

    # The model: crash points fire in the order the job reaches them, each at most once.
    # A crash "during" a step that is not idempotent ends the job lost; any other crash
    # resumes it, with its completed steps kept (a "during" crash never lets the function
    # run, so an idempotent step hit there runs once, on the resume).
    armed = set(plan.crashes)
    expected_runs: list[int] = []
    lost_at: int | None = None
    for i in range(n):
        armed.discard((i, "before"))
        if (i, "during") in armed and not plan.idempotent[i]:
            lost_at = i
            break
        armed.discard((i, "during"))
        expected_runs.append(i)
        armed.discard((i, "after"))

    for i in set(ran):
        if not plan.idempotent[i]:
            assert ran.count(i) == 1, f"step s{i} (not idempotent) ran {ran.count(i)} times"
    assert ran == expected_runs, (ran, expected_runs)
    if lost_at is None:
        assert record.state is JobState.SUCCEEDED, (record.state, record.reason)
        assert record.result == [i * 10 for i in range(n)]
        assert [(s.name, s.state) for s in steps] == [(f"s{i}", "succeeded") for i in range(n)]
    else:
        assert record.state is JobState.LOST, (record.state, record.reason)
        assert record.reason is not None
        assert f"step 's{lost_at}' (#{lost_at + 1}) was running" in record.reason
        assert [s.state for s in steps] == ["succeeded"] * lost_at + ["running"]


def test_random_crashes_never_run_a_step_twice_and_always_end_with_a_record(
    any_settings: Settings,
) -> None:
    @settings(
        max_examples=40 if any_settings.dsn != "memory://" else 150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(plan=plans())
    def check(plan: Plan) -> None:
        asyncio.run(run_plan(any_settings, plan))

    check()
