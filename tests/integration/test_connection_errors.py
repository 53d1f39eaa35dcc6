"""A wrong DSN gets a sentence that names what could not be reached."""

from __future__ import annotations

import pytest

from asyncjobs import App, ConfigurationError, Settings, StoreUnavailableError


async def start(dsn: str) -> None:
    app = App(settings=Settings(dsn=dsn, connect_timeout_s=3))
    await app.start(node=False)
    await app.stop()


async def test_refused_port_names_host_and_port() -> None:
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:1/x.*connection refused"):
        await start("postgresql://postgres@127.0.0.1:1/x")


async def test_unresolvable_host_says_so() -> None:
    with pytest.raises(StoreUnavailableError, match=r"no-such-host\.invalid.*does not resolve"):
        await start("postgresql://postgres@no-such-host.invalid:5432/x")


async def test_missing_database_says_so(pg_dsn: str) -> None:
    base = pg_dsn.rpartition("/")[0]
    with pytest.raises(StoreUnavailableError, match=r"database does not exist"):
        await start(f"{base}/no_such_database_for_asyncjobs")


def test_malformed_dsn_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match=r"dsn='localhost:5432'"):
        Settings(dsn="localhost:5432")


def test_password_is_masked_in_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(dsn="mysql://user:hunter2@db/x")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
