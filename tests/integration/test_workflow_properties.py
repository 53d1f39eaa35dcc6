"""Properties of running random DAGs, on both stores (Hypothesis).

For any DAG, with any set of steps made to fail:
- a step starts only after every one of its parents has succeeded (run order follows edges);
- the steps that end ``cancelled`` (``upstream_failed``) are exactly the transitive dependents
  of the failed ones; every other step runs, once, and ends as it was made to;
- the workflow ends ``failed`` if a step failed, else ``succeeded``, with matching counts.

Each example runs in a fresh event loop with its own app (on Postgres, one schema for the
test, so each example is one more workflow in it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjobs import App, JobContext, Settings, Workflow
from tests.helpers import wait_until

TIMEOUT = 30.0


class Planned(Exception):
    """The failure a step was made to raise."""


@dataclass(frozen=True)
class Dag:
    parents: list[list[int]]  # parents[i]: steps that step i runs after (all < i)
    failing: frozenset[int]


@st.composite
def dags(draw: st.DrawFn, max_steps: int = 12) -> Dag:
    n = draw(st.integers(1, max_steps))
    parents = [
        draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        for i in range(n)
    ]
    failing = draw(st.frozensets(st.integers(0, n - 1), max_size=3))
    return Dag(parents, failing)


def expected_states(dag: Dag) -> list[str]:
    """The model: a step runs iff all its parents succeeded; it fails iff it was made to."""
    states: list[str] = []
    for i, ps in enumerate(dag.parents):
        if any(states[p] != "succeeded" for p in ps):
            states.append("cancelled")
        else:
            states.append("failed" if i in dag.failing else "succeeded")
    return states


async def run_dag(base: Settings, dag: Dag) -> None:
    events: list[tuple[str, int]] = []
    app = App(settings=base.replace(concurrency=8, pool_min_size=1, pool_max_size=4))

    @app.job()
    async def step(ctx: JobContext, index: int, fail: bool) -> int:
        events.append(("start", index))
        await asyncio.sleep(0)  # let others interleave
        events.append(("end", index))
        if fail:
            raise Planned(f"step {index} was made to fail")
        return index

    wf = Workflow()
    steps = []
    for i, ps in enumerate(dag.parents):
        steps.append(wf.add(step.s(i, i in dag.failing), after=[steps[p] for p in ps]))
    async with app:
        wid = await app.submit(wf)

        async def finished() -> bool:
            return (await app.workflow_status(wid)).is_finished

        await wait_until(finished, timeout=TIMEOUT, what="the workflow to finish")
        status = await app.workflow_status(wid)
        records = [await app.get(s.id) for s in steps]

    expected = expected_states(dag)
    assert [r.state.value for r in records] == expected
    for record, state in zip(records, expected, strict=True):
        if state == "cancelled":
            assert record.reason == "upstream_failed"
    position = {event: i for i, event in enumerate(events)}
    started = [i for kind, i in events if kind == "start"]
    assert sorted(started) == [i for i, s in enumerate(expected) if s != "cancelled"]
    for child in started:
        for parent in dag.parents[child]:
            assert position[("end", parent)] < position[("start", child)]
    assert status.state == ("failed" if "failed" in expected else "succeeded")
    assert status.counts["succeeded"] == expected.count("succeeded")
    assert status.counts["failed"] == expected.count("failed")
    assert status.counts["cancelled"] == expected.count("cancelled")
    assert sorted(f.step or "" for f in status.failures) == sorted(
        "step" if len(dag.parents) == 1 else f"step#{i + 1}"
        for i, s in enumerate(expected)
        if s == "failed"
    )


def test_random_dags_run_in_edge_order_and_failures_cancel_exactly_their_dependents(
    any_settings: Settings,
) -> None:
    @settings(
        max_examples=25 if any_settings.dsn != "memory://" else 60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(dag=dags())
    def check(dag: Dag) -> None:
        asyncio.run(run_dag(any_settings, dag))

    check()
