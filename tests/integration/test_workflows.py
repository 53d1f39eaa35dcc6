"""Workflows end to end on both stores (DESIGN §6): release, failure, results, control."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from asyncjobs import (
    App,
    DependencyNotFoundError,
    InputsTooLargeError,
    JobCancelledError,
    JobContext,
    JobFailedError,
    Retry,
    Workflow,
    WorkflowError,
    WorkflowNotFoundError,
    chain,
    chord,
    group,
)
from tests.helpers import wait_until

TIMEOUT = 20.0


class Boom(Exception):
    pass


def declare(app: App, log: list[str]) -> None:
    """The test jobs: each records its name and first argument as it runs."""

    @app.job()
    async def value(x: Any) -> Any:
        log.append(f"value:{x}")
        return x

    @app.job()
    async def add(prev: int, n: int) -> int:
        log.append(f"add:{prev}+{n}")
        return prev + n

    @app.job()
    async def collect(results: list[Any], tag: str = "") -> list[Any]:
        log.append(f"collect:{tag}")
        return results

    @app.job()
    async def boom(*_: Any) -> None:
        log.append("boom")
        raise Boom("kaput")

    @app.job(retry=Retry(attempts=3, backoff=0))
    async def flaky(ctx: JobContext, prev: Any = None) -> str:
        log.append(f"flaky:{ctx.attempt}")
        if ctx.attempt < 3:
            raise Boom("not yet")
        return "steady"

    @app.job()
    async def parents(ctx: JobContext) -> dict[str, Any]:
        log.append("parents")
        return await ctx.parent_results()

    @app.job()
    async def spawner(ctx: JobContext) -> str:
        # A dynamic dependency: a job that runs after this one, in the same workflow.
        follow = await ctx.enqueue("value", "after-spawner", after=[ctx.job_id])
        log.append(f"spawned:{follow}")
        return "spawned"

    @app.job()
    async def waiter(ctx: JobContext, other: str) -> Any:
        return await ctx.wait_for(other, timeout=TIMEOUT)


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
async def app(make_app: Callable[..., App], log: list[str]) -> Any:
    a = make_app(concurrency=20)
    declare(a, log)
    async with a:
        yield a


async def test_chain_passes_each_result_to_the_next_step(app: App) -> None:
    wf = chain(app.registry["value"].s(1), app.registry["add"].s(2), app.registry["add"].s(3))
    wid = await app.submit(wf)
    assert await app.workflow_result(wid, timeout=TIMEOUT) == 6
    status = await app.workflow_status(wid)
    assert status.state == "succeeded"
    assert status.counts["succeeded"] == 3 and status.total == 3


async def test_pipe_operator_builds_the_same_chain(app: App) -> None:
    value, add = app.registry["value"], app.registry["add"]
    wid = await app.submit(value.s(10) | add.s(1) | add.s(100))
    assert await app.workflow_result(wid, timeout=TIMEOUT) == 111


async def test_chord_callback_receives_the_group_results_in_group_order(app: App) -> None:
    value, collect = app.registry["value"], app.registry["collect"]
    wid = await app.submit(chord(group(value.s(i) for i in range(20)), collect.s(tag="c")))
    assert await app.workflow_result(wid, timeout=TIMEOUT) == list(range(20))


async def test_group_result_is_the_list_of_member_results(app: App) -> None:
    value = app.registry["value"]
    wid = await app.submit(group(value.s("a"), value.s("b"), value.s(None)))
    assert await app.workflow_result(wid, timeout=TIMEOUT) == ["a", "b", None]


async def test_nested_builders(app: App) -> None:
    value, add, collect = (app.registry[n] for n in ("value", "add", "collect"))
    # 1 -> [ (1+1), (1+2 -> +3) ] -> collect -> list
    wf = chain(value.s(1), group(add.s(1), chain(add.s(2), add.s(3))), collect.s())
    wid = await app.submit(wf)
    assert await app.workflow_result(wid, timeout=TIMEOUT) == [2, 6]


async def test_group_after_a_step_gives_each_member_the_result(app: App) -> None:
    value, add, collect = (app.registry[n] for n in ("value", "add", "collect"))
    wid = await app.submit(value.s(5) | group(add.s(1), add.s(2)) | collect.s())
    assert await app.workflow_result(wid, timeout=TIMEOUT) == [6, 7]


async def test_immutable_signature_ignores_the_previous_result(app: App) -> None:
    value = app.registry["value"]
    wid = await app.submit(value.s(1) | value.si("fresh"))
    assert await app.workflow_result(wid, timeout=TIMEOUT) == "fresh"


async def test_dag_step_reads_its_parents_results_by_key(app: App) -> None:
    value, parents = app.registry["value"], app.registry["parents"]
    wf = Workflow("diamond")
    a = wf.add(value.s("A"), key="a")
    b = wf.add(value.s("B"), after=[a])  # automatic key: the job name
    c = wf.add(value.s("C"), after=["a"], key="c")
    d = wf.add(parents.s(), after=[b, c])
    wid = await app.submit(wf)
    assert wid == wf.id
    assert await app.result(d.id, timeout=TIMEOUT) == {"value": "B", "c": "C"}
    assert (await app.get(d.id)).step == "parents"


async def test_failure_cancels_exactly_the_dependents_and_the_rest_goes_on(
    app: App, log: list[str]
) -> None:
    value, boom = app.registry["value"], app.registry["boom"]
    wf = Workflow()
    root = wf.add(value.s("root"))
    bad = wf.add(boom.s(), after=[root], key="bad")
    child = wf.add(value.s("child"), after=[bad])
    grandchild = wf.add(value.s("grandchild"), after=[child, root])
    other = wf.add(value.s("other"), after=[root])
    wid = await app.submit(wf)
    with pytest.raises(JobCancelledError):
        await app.result(grandchild.id, timeout=TIMEOUT)
    assert await app.result(other.id, timeout=TIMEOUT) == "other"
    await wait_until(lambda: _finished(app, wid), timeout=TIMEOUT)
    status = await app.workflow_status(wid)
    assert status.state == "failed"
    assert status.counts["succeeded"] == 2 and status.counts["failed"] == 1
    assert status.counts["cancelled"] == 2
    assert [(f.step, f.state) for f in status.failures] == [("bad", "failed")]
    assert status.failures[0].error is not None and "kaput" in status.failures[0].error["message"]
    for job_id in (child.id, grandchild.id):
        record = await app.get(job_id)
        assert record.state == "cancelled" and record.reason == "upstream_failed"
    assert "value:child" not in log and "value:grandchild" not in log
    with pytest.raises(JobFailedError):
        await app.workflow_result(wid, timeout=TIMEOUT)


async def _finished(app: App, wid: Any) -> bool:
    return (await app.workflow_status(wid)).is_finished


async def test_retried_step_runs_again_and_its_dependents_wait(app: App, log: list[str]) -> None:
    flaky, value = app.registry["flaky"], app.registry["value"]
    wid = await app.submit(flaky.s() | value.s())
    assert await app.workflow_result(wid, timeout=TIMEOUT) == "steady"
    assert log == ["flaky:1", "flaky:2", "flaky:3", "value:steady"]


async def test_cancel_workflow_cancels_what_has_not_run(app: App, log: list[str]) -> None:
    value = app.registry["value"]
    gate = asyncio.Event()

    @app.job(name="held")
    async def held() -> str:
        await gate.wait()
        return "released"

    wf = Workflow()
    first = wf.add(held.s())
    later = [wf.add(value.s(i), after=[first]) for i in range(5)]
    wid = await app.submit(wf)
    await wait_until(lambda: _state_is(app, first.id, "running"), timeout=TIMEOUT)
    status = await app.cancel_workflow(wid)
    assert status.counts["waiting"] == 0
    with pytest.raises(JobCancelledError):
        await app.result(first.id, timeout=TIMEOUT)
    await wait_until(lambda: _finished(app, wid), timeout=TIMEOUT)
    status = await app.workflow_status(wid)
    assert status.state == "cancelled" and status.counts["cancelled"] == 6
    for step in later:
        assert (await app.get(step.id)).reason == "workflow cancelled"
    assert not any(entry.startswith("value:") for entry in log)


async def _state_is(app: App, job_id: Any, state: str) -> bool:
    return (await app.get(job_id)).state == state


async def test_dynamic_dependency_joins_the_workflow(app: App, log: list[str]) -> None:
    spawner = app.registry["spawner"]
    wid = await app.submit(Workflow().add(spawner.s()).workflow)
    await wait_until(lambda: _has(log, "value:after-spawner"), timeout=TIMEOUT)
    await wait_until(lambda: _finished(app, wid), timeout=TIMEOUT)
    status = await app.workflow_status(wid)
    assert status.state == "succeeded" and status.total == 2


async def _has(log: list[str], entry: str) -> bool:
    await asyncio.sleep(0)
    return entry in log


async def test_enqueue_after_waits_for_the_dependency(app: App) -> None:
    gate = asyncio.Event()

    @app.job(name="slow")
    async def slow() -> int:
        await gate.wait()
        return 41

    first = await app.enqueue(slow)
    second = await app.enqueue("parents", after=[first])
    assert (await app.get(second)).state == "waiting"
    gate.set()
    assert await app.result(second, timeout=TIMEOUT) == {str(first): 41}


async def test_enqueue_after_a_failed_job_is_cancelled_at_once(app: App) -> None:
    failed = await app.enqueue("boom")
    with pytest.raises(JobFailedError):
        await app.result(failed, timeout=TIMEOUT)
    late = await app.enqueue("value", 1, after=[failed])
    record = await app.get(late)
    assert record.state == "cancelled" and record.reason == "upstream_failed"


async def test_enqueue_after_an_unknown_job_is_refused(app: App) -> None:
    from asyncjobs.ids import new_id

    missing = new_id()
    with pytest.raises(DependencyNotFoundError, match=str(missing)):
        await app.enqueue("value", 1, after=[missing])


async def test_wait_for_inside_a_job(app: App) -> None:
    target = await app.enqueue("value", "waited")
    job = await app.enqueue("waiter", str(target))
    assert await app.result(job, timeout=TIMEOUT) == "waited"


async def test_bad_workflows_are_refused_before_anything_is_written(app: App) -> None:
    value = app.registry["value"]
    wf = Workflow()
    wf.add(value.s(object()), key="bad-arg")
    with pytest.raises(WorkflowError, match="bad-arg") as info:
        await app.submit(wf)
    assert "cannot encode" in str(info.value)
    with pytest.raises(WorkflowNotFoundError):
        await app.workflow_status(wf.id)
    with pytest.raises(WorkflowError, match="unknown job 'nope'"):
        await app.submit(chain(value.s(1), app.signature("value", 2)._replace(name="nope")))


async def test_unknown_workflow_id(app: App) -> None:
    from asyncjobs.ids import new_id

    with pytest.raises(WorkflowNotFoundError):
        await app.workflow_status(new_id())
    with pytest.raises(WorkflowNotFoundError):
        await app.cancel_workflow(new_id())


async def test_two_nodes_share_a_workflow_and_each_step_runs_once(
    make_app: Callable[..., App],
) -> None:
    """Two nodes complete the members of the same chords at once: the callbacks' counts go
    down once per member (no lost decrement, no deadlock), and each step runs once."""
    from collections import Counter

    runs: Counter[Any] = Counter()
    apps = [make_app(concurrency=25) for _ in range(2)]
    for a in apps:

        @a.job(name="member")
        async def member(ctx: JobContext, previous: Any, i: int) -> int:
            runs[ctx.job_id] += 1
            await asyncio.sleep(0)
            return i

        @a.job(name="total")
        async def total(ctx: JobContext, results: list[int]) -> int:
            runs[ctx.job_id] += 1
            return sum(results)

    one, two = apps
    stages = [
        chord(group(one.signature("member", i) for i in range(50)), one.signature("total"))
        for _ in range(10)
    ]
    async with one, two:
        wid = await one.submit(chain(one.signature("total", []), *stages))
        assert await one.workflow_result(wid, timeout=60) == sum(range(50))
        nodes = {(await one.get(job_id)).node_id for job_id in runs}
    assert len(runs) == 1 + 10 * 51 and set(runs.values()) == {1}
    assert nodes == {one.node.id, two.node.id}  # each node took its share (25 slots each)


async def test_a_step_whose_inputs_are_too_large_fails_alone(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its parents' results, together, are over the limit: the step fails with a sentence
    that says what to do, its dependents are cancelled, and the queue goes on."""
    import asyncjobs.node.execution
    import asyncjobs.store.memory
    import asyncjobs.store.postgres

    for module in (asyncjobs.store.memory, asyncjobs.store.postgres, asyncjobs.node.execution):
        monkeypatch.setattr(module, "MAX_INPUT_BYTES", 100)
    value, collect = app.registry["value"], app.registry["collect"]
    wf = chord(group(value.s("x" * 60) for _ in range(3)), collect.s(tag="big")) | value.s(0)
    wid = await app.submit(wf)
    with pytest.raises(JobFailedError, match=f"{InputsTooLargeError.__name__}.*over 100 bytes"):
        await app.workflow_result(wid, timeout=TIMEOUT)
    status = await app.workflow_status(wid)
    assert status.counts["succeeded"] == 3 and status.counts["failed"] == 1
    assert status.counts["cancelled"] == 1
    assert await app.result(await app.enqueue("value", "still"), timeout=TIMEOUT) == "still"
