"""The ``asyncjobs`` pytest plugin: harness fixtures for the app under test.

Registered through the ``pytest11`` entry point, so installing asyncjobs is enough. Declare
which app the fixtures run by defining ``asyncjobs_app`` (in a ``conftest.py``)::

    @pytest.fixture
    def asyncjobs_app():
        from myproject.jobs import app
        return app

Then a test asks for ``asyncjobs_harness`` (MemoryStore) or ``asyncjobs_pg_harness`` (a fresh
Postgres schema, found as the asyncjobs test suite finds its own: ``ASYNCJOBS_TEST_DSN``, the
server on 127.0.0.1:5432, or a throwaway cluster; dropped after the test). Both are started
``Harness`` objects on a ``ManualClock``. Async fixtures need pytest-asyncio
(``pip install asyncjobs[testing]``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ..app import App
from .harness import Harness, ManualClock
from .postgres import SOURCE, PostgresNotFound, drop_schema, test_schema_name


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    SOURCE.close()  # stops a throwaway cluster, if one was started


@pytest.fixture
def asyncjobs_app() -> App:
    """The app the harness fixtures run. Override it: return your own App."""
    raise pytest.UsageError(
        "the asyncjobs fixtures need your app: define a fixture named asyncjobs_app that "
        "returns it, for example in conftest.py:\n\n"
        "    @pytest.fixture\n    def asyncjobs_app():\n"
        "        from myproject.jobs import app\n        return app\n"
    )


@pytest.fixture
def asyncjobs_clock() -> ManualClock:
    """The manual clock the harness fixtures use (the start of the current hour, UTC)."""
    return ManualClock()


@pytest.fixture
def asyncjobs_inline() -> bool:
    """Whether the harness runs isolated jobs in-process (override to return True)."""
    return False


def _async_fixture(fn: Any) -> Any:
    try:
        from pytest_asyncio import fixture
    except ImportError:  # installed without the testing extra: say so when it is used
        pass
    else:
        return fixture(fn)

    @pytest.fixture(name=fn.__name__)
    def missing() -> None:
        raise pytest.UsageError(
            f"the {fn.__name__} fixture is async and needs pytest-asyncio: "
            "pip install 'asyncjobs[testing]'"
        )

    return missing


@_async_fixture
async def asyncjobs_harness(
    asyncjobs_app: App, asyncjobs_clock: ManualClock, asyncjobs_inline: bool
) -> AsyncIterator[Harness]:
    """A started Harness for ``asyncjobs_app`` on a MemoryStore."""
    async with Harness(asyncjobs_app, clock=asyncjobs_clock, inline=asyncjobs_inline) as h:
        yield h


@pytest.fixture(scope="session")
def asyncjobs_pg_dsn() -> str:
    """The test database's DSN (found or started once per session)."""
    try:
        return SOURCE.find()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@_async_fixture
async def asyncjobs_pg_harness(
    asyncjobs_app: App,
    asyncjobs_clock: ManualClock,
    asyncjobs_inline: bool,
    asyncjobs_pg_dsn: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Harness]:
    """A started Harness for ``asyncjobs_app`` on a fresh Postgres schema (dropped after)."""
    schema = test_schema_name(request.node.name)
    settings: dict[str, Any] = {"dsn": asyncjobs_pg_dsn, "schema": schema}
    try:
        async with Harness(
            asyncjobs_app, clock=asyncjobs_clock, inline=asyncjobs_inline, **settings
        ) as h:
            yield h
    finally:
        await drop_schema(asyncjobs_pg_dsn, schema)
