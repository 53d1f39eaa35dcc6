"""The job state machine (tests/state_machine.py) against PostgresStore.

One schema for the whole run, migrated once and truncated before each example, so that each
example starts from an empty store as it does on the MemoryStore.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from asyncjobs import Settings
from asyncjobs.store.base import Store
from asyncjobs.store.postgres import PostgresStore
from tests.state_machine import Backend, JobStoreMachine


def postgres_backend(base: Settings) -> Backend:
    test_settings = base.replace(pool_min_size=1, pool_max_size=2)
    tables = ", ".join(f"{base.schema}.asyncjobs_{t}" for t in ("jobs", "nodes", "waiters"))

    async def open_store() -> Store:
        store = PostgresStore(test_settings)
        await store.open()
        await store.migrate()
        await store.pool.execute(f"TRUNCATE {tables}")
        return store

    async def count(store: Store) -> int:
        assert isinstance(store, PostgresStore)
        return int(await store.pool.fetchval(f"SELECT count(*) FROM {base.schema}.asyncjobs_jobs"))

    async def close(store: Store) -> None:
        await store.close()

    return Backend(open_store, count, close)


def test_the_postgres_store_follows_the_job_state_machine(pg_settings: Settings) -> None:
    class PostgresMachine(JobStoreMachine):
        backend = postgres_backend(pg_settings)

    run_state_machine_as_test(
        PostgresMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
