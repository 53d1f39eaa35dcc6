"""Concurrency keys and rate limits on both stores, with nodes in this process."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from asyncjobs import App, chain, group
from tests.helpers import most_at_once, wait_until

TIMEOUT = 30.0


def declare(app: App, spans: dict[str, list[tuple[float, float]]], started: list[float]) -> None:
    @app.job(concurrency_key="vm:{vm}")
    async def provision(vm: str, seconds: float = 0.01) -> str:
        begin = time.monotonic()
        await asyncio.sleep(seconds)
        spans[f"vm:{vm}"].append((begin, time.monotonic()))
        return vm

    @app.job(concurrency_key="array:{name}", concurrency_limit=3)
    async def snapshot(name: str, seconds: float = 0.02) -> None:
        begin = time.monotonic()
        await asyncio.sleep(seconds)
        spans[f"array:{name}"].append((begin, time.monotonic()))

    @app.job(rate_limit="10/s")
    async def call_api() -> None:
        started.append(time.monotonic())


async def test_keys_hold_across_two_nodes_and_free_keys_run(make_app: Callable[..., App]) -> None:
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    apps = [make_app(concurrency=20) for _ in range(2)]
    for a in apps:
        declare(a, spans, [])
    one, two = apps
    async with one, two:
        ids = await one.enqueue_many(
            [one.signature("provision", f"vm-{i % 4}") for i in range(60)]
            + [one.signature("snapshot", "a") for _ in range(30)]
        )
        for job_id in ids:
            await one.result(job_id, timeout=TIMEOUT)
    assert {key: most_at_once(s) for key, s in spans.items()} == {
        "vm:vm-0": 1, "vm:vm-1": 1, "vm:vm-2": 1, "vm:vm-3": 1, "array:a": 3,
    }  # fmt: skip


async def test_a_held_key_does_not_block_other_keys(make_app: Callable[..., App]) -> None:
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    app = make_app(concurrency=10)
    declare(app, spans, [])
    async with app:
        held = await app.enqueue("provision", "vm-1", 30)
        waiting = await app.enqueue("provision", "vm-1", 0)
        free = await app.enqueue("provision", "vm-2", 0)
        assert await app.result(free, timeout=TIMEOUT) == "vm-2"
        assert (await app.get(waiting)).state.value == "queued"
        await app.cancel(held)
        assert await app.result(waiting, timeout=TIMEOUT) == "vm-1"  # the slot freed


async def test_an_enqueue_can_set_or_override_the_key(make_app: Callable[..., App]) -> None:
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    app = make_app(concurrency=10)
    declare(app, spans, [])
    async with app:
        held = await app.enqueue("provision", "vm-1", 30, concurrency_key="rack-9")
        other_vm = await app.enqueue("provision", "vm-2", 0, concurrency_key="rack-9")
        record = await app.get(other_vm)
        assert record.state.value == "queued"
        await wait_until(lambda: _running(app, held), timeout=TIMEOUT)
        assert (await app.get(other_vm)).state.value == "queued"  # same key: it waits
        await app.cancel(held)
        assert await app.result(other_vm, timeout=TIMEOUT) == "vm-2"


async def _running(app: App, job_id: Any) -> bool:
    return (await app.get(job_id)).state.value == "running"


async def test_a_rate_limit_spaces_starts_evenly(make_app: Callable[..., App]) -> None:
    started: list[float] = []
    apps = [make_app(concurrency=20, poll_interval_s=0.2) for _ in range(2)]
    for a in apps:
        declare(a, defaultdict(list), started)
    one, two = apps
    async with one, two:
        ids = await one.enqueue_many([one.signature("call_api") for _ in range(25)])
        for job_id in ids:
            await one.result(job_id, timeout=TIMEOUT)
    started.sort()
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # 10/s: starts booked 100 ms apart, whichever node claims. A node waits out the booked
    # delay once its claim's answer arrives, so that answer's latency (tens of ms on a loaded
    # 2-core machine) can start a job late, never early: two starts come closer than 100 ms
    # only by the difference of two such latencies.
    assert min(gaps) > 0.06, f"two starts {min(gaps) * 1000:.0f} ms apart"
    assert 2.2 < started[-1] - started[0] < 4.0


async def test_workflow_steps_and_schedules_carry_their_keys(make_app: Callable[..., App]) -> None:
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    app = make_app(concurrency=20)
    declare(app, spans, [])
    provision = app.registry["provision"]
    async with app:
        wid = await app.submit(
            chain(provision.s("vm-5"), group(provision.si("vm-5") for _ in range(6)))
        )
        await app.workflow_result(wid, timeout=TIMEOUT)
    assert most_at_once(spans["vm:vm-5"]) == 1 and len(spans["vm:vm-5"]) == 7


async def test_a_backlog_for_one_busy_key_holds_back_no_other_key(
    make_app: Callable[..., App],
) -> None:
    """500 jobs for one key (its slot held) are ahead of 20 jobs with other keys: the others
    run at once, and the backlog (parked, out of the ready set) drains,
    one at a time, once the slot frees."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    app = make_app(concurrency=50)
    declare(app, spans, [])
    async with app:
        held = await app.enqueue("provision", "hot", 30)
        await wait_until(lambda: _running(app, held), timeout=TIMEOUT)
        backlog = await app.enqueue_many([app.signature("provision", "hot", 0) for _ in range(500)])
        others = await app.enqueue_many(
            [app.signature("provision", f"cold-{i}", 0) for i in range(20)]
        )
        for job_id in others:
            assert await app.result(job_id, timeout=TIMEOUT) is not None
        assert [(await app.get(j)).state.value for j in backlog[:5]] == ["queued"] * 5
        await app.cancel(held)
        for job_id in backlog:
            await app.result(job_id, timeout=TIMEOUT)
    assert most_at_once(spans["vm:hot"]) == 1 and len(spans["vm:hot"]) == 500
