"""Finding a Postgres for tests: the project's own tests and the ``asyncjobs`` pytest plugin.

In this order, never skipped:

1. ``ASYNCJOBS_TEST_DSN``, if set;
2. the server on 127.0.0.1:5432, in a dedicated database (``asyncjobs_test``, created if
   missing; the server itself is never stopped or reconfigured);
3. a throwaway cluster started with the machine's ``initdb``/``pg_ctl`` in a temporary folder,
   stopped and removed at the end of the session.

If none works, ``PostgresNotFound`` says how to get one. Each test then works in a schema of
its own (``test_schema_name``), dropped afterwards; schemas left by killed sessions are
dropped once they are old.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg

from ..localpg import DEFAULT_LOCAL_DSN, LocalCluster, LocalPostgresError, reachable

TEST_DATABASE = "asyncjobs_test"
SCHEMA_PREFIX = "ajt_"
STALE_SCHEMA_MINUTES = 120  # schemas of killed sessions older than this are dropped


class PostgresNotFound(RuntimeError):
    """No Postgres could be found or started for the tests."""


class PostgresSource:
    """Finds (or starts) the tests' Postgres once per process; ``close()`` stops what it
    started."""

    def __init__(self) -> None:
        self.dsn: str | None = None
        self.error: str | None = None
        self.cluster: LocalCluster | None = None
        self.cluster_dir: Path | None = None

    def find(self) -> str:
        """The DSN of the test database. Raises ``PostgresNotFound`` with what to do."""
        if self.dsn is not None:
            return self.dsn
        if self.error is not None:
            raise PostgresNotFound(self.error)
        try:
            # In a thread of its own: the caller may be inside a running event loop (an async
            # fixture asking for the DSN), where asyncio.run() is refused.
            with ThreadPoolExecutor(1) as thread:
                self.dsn = thread.submit(lambda: asyncio.run(self._find())).result()
        except Exception as exc:
            self.error = (
                f"No Postgres for the tests: {exc}\n"
                "The Postgres tests are never skipped. To run them, do one of:\n"
                "  - set ASYNCJOBS_TEST_DSN=postgresql://user@host:port/db (a server you own);\n"
                "  - start a server on 127.0.0.1:5432 that accepts user postgres;\n"
                "  - install the PostgreSQL server package (initdb, pg_ctl), and the tests\n"
                "    start a throwaway cluster by themselves."
            )
            raise PostgresNotFound(self.error) from None
        return self.dsn

    async def _find(self) -> str:
        explicit = os.environ.get("ASYNCJOBS_TEST_DSN")
        if explicit:
            if not await reachable(explicit, timeout=5):
                raise RuntimeError(f"ASYNCJOBS_TEST_DSN={explicit} does not accept connections")
            return explicit
        if await reachable(DEFAULT_LOCAL_DSN):
            return await ensure_database(DEFAULT_LOCAL_DSN, TEST_DATABASE)
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="asyncjobs-test-pg-"))
        os.chmod(self.cluster_dir, 0o755)  # the cluster may run as another user (root runs)
        self.cluster = LocalCluster(self.cluster_dir, fsync=False)
        try:
            dsn = await asyncio.to_thread(self.cluster.start)
        except LocalPostgresError as exc:
            raise RuntimeError(str(exc)) from None
        return await ensure_database(dsn, TEST_DATABASE)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.cluster_dir is not None:
            shutil.rmtree(self.cluster_dir, ignore_errors=True)
            self.cluster_dir = None


# One per process: the project's tests and the plugin share it, so a session starts at most
# one throwaway cluster.
SOURCE = PostgresSource()


async def ensure_database(dsn: str, name: str) -> str:
    """Create database ``name`` on the server of ``dsn`` if missing, drop the old schemas of
    killed test sessions in it, and return its DSN."""
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
    # Only old schemas: another session (a second checkout, CI) may be running right now.
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


def test_schema_name(label: str) -> str:
    """A fresh schema name for one test: prefix, minute stamp (for stale-schema cleanup), a
    slug of ``label`` and a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower())[5:17].strip("_")
    return f"{SCHEMA_PREFIX}{_minute_stamp():x}_{slug}_{uuid.uuid4().hex[:6]}"


test_schema_name.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


async def drop_schema(dsn: str, schema: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await con.close()


def _minute_stamp() -> int:
    return int(time.time()) // 60
