"""Fixtures for the acceptance tests: node subprocesses, a producer app, a database connection.

Teardown order matters: nodes and the producer depend on ``pg_schema``, so they are killed and
stopped before the schema is dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from asyncjobs import App, Settings

from .jobs_app import RUNS_DDL, build_app
from .nodes import NodeRunner


@pytest.fixture
def nodes(pg_dsn: str, pg_schema: str, tmp_path: Path) -> Iterator[NodeRunner]:
    """Starts ``asyncjobs node`` processes on this test's schema; kills them all afterwards."""
    runner = NodeRunner(pg_dsn, pg_schema, tmp_path)
    try:
        yield runner
    finally:
        runner.close()
        if runner.nodes:
            print(runner.outputs())  # shown by pytest when the test failed


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, for looking at rows directly."""
    con = await asyncpg.connect(pg_dsn)
    try:
        yield con
    finally:
        await con.close()


@pytest.fixture
async def producer(pg_settings: Settings) -> AsyncIterator[App]:
    """An app with the test jobs, started without a node, on a migrated schema that also holds
    the table the jobs record their runs in."""
    app = build_app(pg_settings)
    await app.start(node=False)
    try:
        await app.store.migrate()
        con = await asyncpg.connect(pg_settings.dsn)
        try:
            await con.execute(RUNS_DDL.format(schema=pg_settings.schema))
        finally:
            await con.close()
        yield app
    finally:
        await app.stop()
