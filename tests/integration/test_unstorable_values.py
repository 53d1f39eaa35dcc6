"""Values Postgres cannot store (a NUL character, a lone surrogate...), on both stores.

The promise: such a value is refused where it enters, with a sentence naming the job and the
value's path, and nothing is written; a job whose result or error holds one ends ``failed``
(its error text made storable) without holding back the outcomes written with it; and if one
still reaches a statement, the completer and the heartbeat isolate it, so that only its own
outcome is failed. The MemoryStore refuses exactly what Postgres refuses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import orjson
import pytest

from asyncjobs import (
    App,
    InvalidArgumentError,
    InvalidJobOptionError,
    JobDefinitionError,
    JobFailedError,
    JobState,
    PayloadEncodeError,
    ScheduleDefinitionError,
    Settings,
    StoreUnavailableError,
    ValueRejectedError,
    Workflow,
    WorkflowError,
)
from asyncjobs.app import make_store
from asyncjobs.ids import new_id
from asyncjobs.node.completer import REFUSED_REASON, Completer
from asyncjobs.node.heartbeat import beat
from asyncjobs.store.base import JobQuery, NewJob, NodeInfo, Outcome, StatsRow, Store
from tests.helpers import wait_until

NOW = time.time()
NUL_JSON = b'"a\\u0000b"'  # how orjson writes "a\x00b": what would reach jsonb


def build_app(make_app: Callable[..., App]) -> App:
    app = make_app()

    @app.job()
    async def echo(value: Any) -> Any:
        return value

    @app.job()
    async def ret_nul() -> str:
        return "a\x00b"

    @app.job()
    async def ret_nested_nul() -> Any:
        return {"disks": [{"label": "ok"}, {"label": "sda\x00"}]}

    @app.job()
    async def raise_nul() -> None:
        raise ValueError("bad\x00value")

    @app.job()
    async def raise_surrogate() -> None:
        raise ValueError("bad \udcff byte")

    return app


@pytest.fixture
async def app(make_app: Callable[..., App]) -> AsyncIterator[App]:
    async with build_app(make_app) as started:
        yield started


async def count_jobs(app: App) -> int:
    return len(await app.store.list_jobs(JobQuery(None, None, None, None, None, 20_000)))


# -- at the source: refused before any SQL, nothing written -------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        pytest.param(("a\x00b",), {}, "args[0]", id="NUL in an argument"),
        pytest.param(
            (), {"vm": {"tags\x00": 1}}, "kwargs['vm'] key 'tags\\x00'", id="NUL in a key"
        ),
        pytest.param((["ok", "\ud800"],), {}, "args[0][1]", id="lone surrogate"),
        pytest.param((1.5e17,), {}, "args[0]", id="float jsonb gives back as an int"),
    ],
)
async def test_an_argument_postgres_cannot_store_is_refused_at_enqueue_and_nothing_is_written(
    app: App, args: tuple[Any, ...], kwargs: dict[str, Any], path: str
) -> None:
    with pytest.raises(PayloadEncodeError) as info:
        await app.enqueue("echo", *args, **kwargs)
    assert info.value.path == path
    assert f"{path} of job 'echo'" in str(info.value)
    assert await count_jobs(app) == 0


@pytest.mark.parametrize("option", ["unique_key", "concurrency_key"])
async def test_a_key_with_a_nul_is_refused_at_enqueue_with_a_sentence(
    app: App, option: str
) -> None:
    with pytest.raises(InvalidJobOptionError, match=f"{option}='inv\\\\x00lyon'.*NUL character"):
        await app.enqueue("echo", 1, **{option: "inv\x00lyon"})
    assert await count_jobs(app) == 0


async def test_a_nul_deep_in_a_bulk_enqueue_is_refused_by_position_and_nothing_is_written(
    app: App,
) -> None:
    sigs = [app.signature("echo", {"n": i, "label": f"disk-{i}"}) for i in range(10_000)]
    sigs[7_777] = app.signature("echo", {"n": 7_777, "label": "disk\x00"})
    with pytest.raises(PayloadEncodeError) as info:
        await app.enqueue_many(sigs)
    assert info.value.path == "args[0]['label']"
    assert "NUL character" in str(info.value)
    assert await count_jobs(app) == 0
    # The same batch without the bad value goes through whole.
    sigs[7_777] = app.signature("echo", {"n": 7_777, "label": "disk-7777"})
    assert len(await app.enqueue_many(sigs)) == 10_000


async def test_names_reasons_and_workflow_keys_with_a_nul_are_refused_with_a_sentence(
    app: App,
) -> None:
    with pytest.raises(JobDefinitionError, match="NUL character"):

        @app.job(name="bad\x00name")
        async def bad() -> None: ...

    with pytest.raises(JobDefinitionError, match="NUL character"):

        @app.job(name="keyed", concurrency_key="vm:\x00{vm}")
        async def keyed(vm: str) -> None: ...

    with pytest.raises(ScheduleDefinitionError, match="NUL character"):
        app.schedule("nightly\x00", "echo", every=60)
    with pytest.raises(WorkflowError, match="NUL character"):
        Workflow("rack\x00")
    with pytest.raises(WorkflowError, match="NUL character"):
        Workflow().add(app.signature("echo", 1), key="step\x00")
    job_id = await app.enqueue("echo", 1, delay=3600)
    with pytest.raises(InvalidArgumentError, match=r"reason='stop\\x00'.*NUL character"):
        await app.cancel(job_id, reason="stop\x00")
    with pytest.raises(InvalidArgumentError, match="use a string"):
        await app.cancel(job_id, reason=5)  # type: ignore[arg-type]
    assert (await app.get(job_id)).state is JobState.SCHEDULED


# -- at run time: the job that produced the value fails, the others are written -----------------


async def test_a_nul_in_a_result_or_an_error_fails_only_its_job_and_never_stalls_the_batch(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # The reproduction from the issue: the bad jobs among good ones, in the same batches.
    bad = ["ret_nul", "ret_nested_nul", "raise_nul", "raise_surrogate"]
    names = [name for name in bad for _ in range(3)] + ["echo"] * 20
    with caplog.at_level(logging.WARNING, logger="asyncjobs"):
        ids = await app.enqueue_many(
            [app.signature(n, *([7] if n == "echo" else [])) for n in names]
        )
        for job_id, name in zip(ids, names, strict=True):
            if name == "echo":
                assert await app.result(job_id, timeout=10) == 7
                continue
            with pytest.raises(JobFailedError) as info:
                await app.result(job_id, timeout=10)
            failure = info.value
            if name == "ret_nul":
                assert failure.error_type.endswith("PayloadEncodeError")
                assert "result of job 'ret_nul'" in failure.error_message
                assert "NUL character" in failure.error_message
            elif name == "ret_nested_nul":
                assert (
                    "result['disks'][1]['label'] of job 'ret_nested_nul'" in failure.error_message
                )
            elif name == "raise_nul":
                assert failure.error_type == "ValueError"
                assert failure.error_message.startswith("bad\ufffdvalue")
                assert "replaced NUL characters" in failure.error_message
                assert "bad\ufffdvalue" in failure.traceback
            else:
                assert failure.error_message == "bad \\udcff byte"
                assert "bad \\udcff byte" in failure.traceback
    assert app.node.completer.buffered == 0
    assert "cannot write" not in caplog.text


# -- defence in depth: a refused value that reaches the statement anyway ------------------------


@pytest.fixture
async def store(any_settings: Settings) -> AsyncIterator[Store]:
    s = make_store(any_settings)
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def claimed_jobs(store: Store, count: int) -> tuple[NodeInfo, list[Any]]:
    node = NodeInfo(new_id(), "test-host", 1, "0", ("default",), count)
    await store.register_node(node)
    args = orjson.dumps(([], {}))
    jobs = [NewJob(new_id(), "j", "default", 0, "queued", args, NOW, 1, None) for _ in range(count)]
    await store.enqueue(jobs)
    claimed = await store.claim(node.id, {"default": count}, NOW + 1)
    assert len(claimed) == count
    return node, sorted(c.id for c in claimed)


def success(job_id: Any, result: bytes = b'"ok"', reason: str | None = None) -> Outcome:
    return Outcome(job_id, 1, "succeeded", result, None, NOW + 2, None, reason)


@pytest.mark.parametrize(
    "refused",
    [
        pytest.param(lambda i: success(i, result=NUL_JSON), id="NUL in a result"),
        pytest.param(
            lambda i: Outcome(i, 1, "failed", None, b'{"message": "\\u0000"}', NOW + 2, None, None),
            id="NUL in an error",
        ),
        pytest.param(lambda i: success(i, reason="why\x00"), id="NUL in a reason"),
    ],
)
async def test_the_store_refuses_a_batch_holding_a_nul_whole_with_value_rejected_error(
    store: Store, refused: Callable[[Any], Outcome]
) -> None:
    node, ids = await claimed_jobs(store, 3)
    outcomes = [success(ids[0]), refused(ids[1]), success(ids[2])]
    with pytest.raises(ValueRejectedError) as info:
        await store.complete(node.id, outcomes)
    assert info.value.sqlstate is not None and info.value.sqlstate.startswith("22")
    for job_id in ids:  # nothing of the statement was written
        record = await store.get(job_id)
        assert record is not None and record.state is JobState.RUNNING


async def test_the_completer_writes_the_others_and_fails_only_the_refused_outcome(
    store: Store,
) -> None:
    node, ids = await claimed_jobs(store, 9)
    completer = Completer(store, node.id)
    bad = {ids[2], ids[7]}
    for job_id in ids:
        completer.add(success(job_id, result=NUL_JSON if job_id in bad else b'"ok"'))
    with anyio.fail_after(10):
        await completer.flush()
    assert completer.buffered == 0
    for job_id in ids:
        record = await store.get(job_id)
        assert record is not None
        if job_id in bad:
            assert record.state is JobState.FAILED
            assert record.reason == REFUSED_REASON
            assert record.error is not None
            assert record.error["type"] == "asyncjobs.errors.ValueRejectedError"
            assert "could not store this attempt's outcome (succeeded)" in record.error["message"]
            assert record.result is None
        else:
            assert record.state is JobState.SUCCEEDED and record.result == "ok"


class CutAfter:
    """The store, cut off after ``calls`` completion statements (an outage mid-search)."""

    def __init__(self, store: Store, calls: int) -> None:
        self.store = store
        self.calls = calls
        self.cut = True

    async def complete(self, node_id: Any, outcomes: Sequence[Outcome]) -> list[Any]:
        if self.cut and self.calls == 0:
            raise StoreUnavailableError("test", "cut off")
        self.calls -= 1
        return await self.store.complete(node_id, outcomes)


async def test_an_outage_while_isolating_a_refused_outcome_loses_and_repeats_nothing(
    store: Store,
) -> None:
    node, ids = await claimed_jobs(store, 8)
    cut = CutAfter(store, calls=3)  # the whole batch, its left half, then the cut
    completer = Completer(cut, node.id)  # type: ignore[arg-type]
    for job_id in ids:
        completer.add(success(job_id, result=NUL_JSON if job_id == ids[6] else b'"ok"'))
    flushing = asyncio.create_task(completer.flush())
    await wait_until(lambda: cut.calls == 0 and completer.buffered < 8, what="the outage")
    assert completer.buffered == 4  # the written half is forgotten, the rest kept
    cut.cut = False
    with anyio.fail_after(10):
        await flushing
    assert completer.buffered == 0
    assert completer.flushed == 8  # each written once: no outcome came back as stale
    states = [(await store.get(i)).state for i in ids]  # type: ignore[union-attr]
    assert states == [JobState.SUCCEEDED] * 6 + [JobState.FAILED] + [JobState.SUCCEEDED]


async def test_a_refused_statistics_row_is_dropped_and_the_heartbeat_and_other_rows_go_on(
    make_app: Callable[..., App],
) -> None:
    async with build_app(make_app) as app:
        node = app.node
        bucket = time.time()
        for name in ("good-1", "bad\x00", "good-2"):
            node.stats.add(name, "succeeded", bucket, 0.0, 0.01, 0.01)
        with anyio.fail_after(10):
            result = await beat(node)
        assert result.alive
        stats = await app.store.job_stats(bucket - 60)
        assert sorted(s.name for s in stats if s.name.startswith(("good", "bad"))) == [
            "good-1",
            "good-2",
        ]
        with pytest.raises(ValueRejectedError):  # the store itself refuses the row
            await app.store.heartbeat(
                node.id, 0, 0, [StatsRow(bucket, "x\x00", "failed", 1, 0, 0, 0, 0, 0, 0)]
            )
