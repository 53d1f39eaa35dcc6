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
import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvloop

from asyncjobs import App, MemoryStore, Settings
from asyncjobs.localpg import (
    DEFAULT_LOCAL_DSN,
    LocalCluster,
    LocalPostgresError,
    binaries_available,
    reachable,
)

TEST_DATABASE = "asyncjobs_test"
SCHEMA_PREFIX = "ajt_"
STALE_SCHEMA_MINUTES = 120  # schemas of killed sessions older than this are dropped

# -- event loops ------------------------------------------------------------------------------


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if "tests/unit" in str(item.path).replace(os.sep, "/"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


# -- finding Postgres ---------------------------------------------------------------------------


class _PostgresSource:
    def __init__(self) -> None:
        self.dsn: str | None = None
        self.error: str | None = None
        self.cluster: LocalCluster | None = None
        self.cluster_dir: Path | None = None

    def find(self) -> str:
        if self.dsn is not None:
            return self.dsn
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)
        try:
            self.dsn = asyncio.run(self._find())
        except Exception as exc:
            self.error = (
                f"No Postgres for the tests: {exc}\n"
                "The Postgres tests are never skipped. To run them, do one of:\n"
                "  - set ASYNCJOBS_TEST_DSN=postgresql://user@host:port/db (a server you own);\n"
                "  - start a server on 127.0.0.1:5432 that accepts user postgres;\n"
                "  - install the PostgreSQL server package (initdb, pg_ctl), and the tests\n"
                "    start a throwaway cluster by themselves."
            )
            pytest.fail(self.error, pytrace=False)
        return self.dsn

    async def _find(self) -> str:
        explicit = os.environ.get("ASYNCJOBS_TEST_DSN")
        if explicit:
            if not await reachable(explicit, timeout=5):
                raise RuntimeError(f"ASYNCJOBS_TEST_DSN={explicit} does not accept connections")
            return explicit
        if await reachable(DEFAULT_LOCAL_DSN):
            return await _ensure_database(DEFAULT_LOCAL_DSN, TEST_DATABASE)
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="asyncjobs-test-pg-"))
        os.chmod(self.cluster_dir, 0o755)
        self.cluster = LocalCluster(self.cluster_dir, fsync=False)
        try:
            dsn = await asyncio.to_thread(self.cluster.start)
        except LocalPostgresError as exc:
            raise RuntimeError(str(exc)) from None
        return await _ensure_database(dsn, TEST_DATABASE)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.cluster_dir is not None:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)


async def _ensure_database(dsn: str, name: str) -> str:
    con = await asyncpg.connect(dsn)
    try:
        exists = await con.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a parallel session
                await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    base, _, _ = dsn.rpartition("/")
    test_dsn = f"{base}/{name}"
    # Drop schemas left by sessions killed before their teardown. Only old ones: another
    # session (a second checkout, CI) may be running right now with schemas of its own.
    con = await asyncpg.connect(test_dsn)
    try:
        names = await con.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", SCHEMA_PREFIX + "%"
        )
        cutoff = _minute_stamp() - STALE_SCHEMA_MINUTES
        for row in names:
            stamp = row["nspname"][len(SCHEMA_PREFIX) :].split("_", 1)[0]
            if stamp.isalnum() and int(stamp, 16) < cutoff:
                await con.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await con.close()
    return test_dsn


def _minute_stamp() -> int:
    return int(time.time()) // 60


_SOURCE = _PostgresSource()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _SOURCE.close()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The DSN of the test database (found or started once per session)."""
    return _SOURCE.find()


def _schema_name(node: pytest.Item | Any) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", getattr(node, "name", "t").lower())[5:17].strip("_")
    return f"{SCHEMA_PREFIX}{_minute_stamp():x}_{slug}_{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def pg_schema(pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh, empty schema name; dropped after the test."""
    name = _schema_name(request.node)
    yield name
    con = await asyncpg.connect(pg_dsn)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await con.close()


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
