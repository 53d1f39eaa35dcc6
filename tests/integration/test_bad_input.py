"""Bad input gets a sentence naming the value, and nothing half-written stays behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
import pytest

from asyncjobs import (
    App,
    InvalidJobOptionError,
    PayloadEncodeError,
    PayloadTooLargeError,
    Settings,
    UnknownJobError,
)


@pytest.fixture
async def app(pg_settings: Settings) -> AsyncIterator[App]:
    app = App(settings=pg_settings.replace(max_payload_bytes=1024))

    @app.job()
    async def provision(vm: str, disks: list[object] | None = None) -> None:
        return None

    await app.start(node=False)
    yield app
    await app.stop()


async def count_jobs(settings: Settings) -> int:
    con = await asyncpg.connect(settings.dsn)
    try:
        return int(await con.fetchval(f"SELECT count(*) FROM {settings.schema}.asyncjobs_jobs"))
    finally:
        await con.close()


async def test_unencodable_argument_names_its_path_and_writes_nothing(
    app: App, pg_settings: Settings
) -> None:
    with pytest.raises(PayloadEncodeError) as caught:
        await app.enqueue("provision", "vm1", disks=[1, {"size": {1, 2}}])
    assert "kwargs['disks'][1]['size']" in str(caught.value)
    assert "'provision'" in str(caught.value) and "set" in str(caught.value)
    assert await count_jobs(pg_settings) == 0


async def test_datetime_argument_is_refused_with_a_hint(app: App) -> None:
    with pytest.raises(PayloadEncodeError, match=r"isoformat"):
        await app.enqueue("provision", datetime.now())


async def test_oversized_payload_names_size_and_limit_and_writes_nothing(
    app: App, pg_settings: Settings
) -> None:
    with pytest.raises(PayloadTooLargeError, match=r"over the limit of 1,024 bytes"):
        await app.enqueue("provision", "x" * 5000)
    assert await count_jobs(pg_settings) == 0


async def test_unknown_job_is_refused_naming_it(app: App, pg_settings: Settings) -> None:
    with pytest.raises(UnknownJobError, match=r"'provison'.*Registered jobs: provision"):
        await app.enqueue("provison", "vm1")
    assert await count_jobs(pg_settings) == 0


@pytest.mark.parametrize("size", [10, 5000])  # the INSERT path and the streaming COPY path
async def test_one_bad_job_in_a_batch_writes_none_of_the_batch(
    app: App, pg_settings: Settings, size: int
) -> None:
    signatures = [app.signature("provision", f"vm{i}") for i in range(size)]
    signatures[-1] = app.signature("provision", object())
    with pytest.raises(PayloadEncodeError, match=r"args\[0\]"):
        await app.enqueue_many(signatures)
    assert await count_jobs(pg_settings) == 0
    signatures[-1] = app.signature("provision", "vm-last").set(priority=10**6)
    with pytest.raises(InvalidJobOptionError, match="priority"):
        await app.enqueue_many(signatures)
    assert await count_jobs(pg_settings) == 0
    assert len(await app.enqueue_many(signatures[:-1])) == size - 1
    assert await count_jobs(pg_settings) == size - 1


async def test_naive_run_at_is_refused_with_what_to_do(app: App) -> None:
    with pytest.raises(InvalidJobOptionError, match="no time zone"):
        await app.enqueue("provision", "vm", run_at=datetime(2030, 1, 1))
