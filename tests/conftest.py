"""Shared fixtures: a real Postgres for every test that needs one, and the event loops.

Postgres is found in this order, and never skipped:
1. ``ASYNCJOBS_TEST_DSN``, if set;
2. the server on 127.0.0.1:5432 (tests use a dedicated database, ``asyncjobs_test``, created
   if missing; the server itself is never stopped or reconfigured);
3. a throwaway cluster started with the machine's ``initdb``/``pg_ctl`` in a temporary folder.
If none works, the Postgres tests fail with a message that says how to get one.

Every test gets its own schema, dropped afterwards. Unit tests run on both asyncio and uvloop;
the others on uvloop, the loop nodes use in production.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from asyncjobs import App, MemoryStore, Settings
from asyncjobs.localpg import LocalCluster, binaries_available
from asyncjobs.testing.postgres import SOURCE, PostgresNotFound, drop_schema, test_schema_name

pytest_plugins = ["pytester"]  # the asyncjobs plugin's own tests run sample test files

# -- event loops ------------------------------------------------------------------------------


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if "tests/unit" in str(item.path).replace(os.sep, "/"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


# -- finding Postgres (asyncjobs.testing.postgres, shared with the pytest plugin) --------------


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The DSN of the test database (found or started once per session; the plugin stops
    a cluster it started at the end of the session)."""
    try:
        return SOURCE.find()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
async def pg_schema(pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh, empty schema name; dropped after the test."""
    name = test_schema_name(request.node.name)
    yield name
    await drop_schema(pg_dsn, name)


@pytest.fixture
def pg_settings(pg_dsn: str, pg_schema: str) -> Settings:
    """Settings pointing at the test database and this test's schema, with fast timings."""
    return Settings(
        dsn=pg_dsn,
        schema=pg_schema,
        poll_interval_s=0.5,
        heartbeat_interval_s=0.5,
        node_timeout_s=5.0,
        shutdown_grace_s=5.0,
        cancel_grace_s=2.0,
    )


@pytest.fixture
def private_cluster_dir() -> Iterator[Path]:
    """A folder for a throwaway Postgres cluster (``LocalCluster(path)``), which the test may
    start, restart and stop; whatever runs in it is stopped and the folder removed after.

    Not pytest's tmp_path: its folders are private (mode 700), and when the tests run as root
    the cluster runs as another user, who must be able to reach it. The Postgres binaries are
    required: a test that needs a cluster of its own fails, with a hint, without them.
    """
    if not binaries_available():
        pytest.fail(
            "this test needs a private Postgres cluster, made with initdb and pg_ctl; install "
            "the PostgreSQL server package",
            pytrace=False,
        )
    base = Path(tempfile.mkdtemp(prefix="asyncjobs-cluster-"))
    base.chmod(0o755)
    try:
        yield base / "pg"
    finally:
        LocalCluster(base / "pg").stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def memory_settings() -> Settings:
    return Settings(
        dsn="memory://",
        poll_interval_s=0.5,
        heartbeat_interval_s=0.5,
        node_timeout_s=5.0,
        shutdown_grace_s=5.0,
        cancel_grace_s=2.0,
    )


@pytest.fixture(params=["memory", "postgres"])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    """Settings for each store in turn: the conformance fixtures."""
    if request.param == "memory":
        settings: Settings = request.getfixturevalue("memory_settings")
    else:
        settings = request.getfixturevalue("pg_settings")
    return settings


@pytest.fixture
def make_app(any_settings: Settings) -> Callable[..., App]:
    """A factory of apps on the store under test. Apps sharing a MemoryStore share jobs."""
    shared_memory = MemoryStore() if any_settings.dsn == "memory://" else None

    def factory(**overrides: Any) -> App:
        settings = any_settings.replace(**overrides) if overrides else any_settings
        return App(settings=settings, store=shared_memory)

    return factory
