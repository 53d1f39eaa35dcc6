"""asyncjobs.django.conf: settings.ASYNCJOBS onto Settings, and the DSN derived from DATABASES.

Pure functions over plain mappings: no Django settings are configured, no environment is read
(each call is given its own), and nothing connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from asyncjobs import ConfigurationError, Settings
from asyncjobs.django import DjangoApp, dsn_from_database, hooks, settings_from_django

PG = "django.db.backends.postgresql"
NO_SOCKETS = ("/nonexistent/asyncjobs-test",)


def databases(**default: Any) -> dict[str, Any]:
    return {"default": {"ENGINE": PG, "NAME": "shop", **default}}


def dsn(environ: dict[str, str] | None = None, **default: Any) -> str:
    return dsn_from_database(databases(**default), environ or {}, NO_SOCKETS)


# -- dsn_from_database ------------------------------------------------------------------------


def test_host_port_and_user_make_a_url() -> None:
    assert dsn(HOST="db.example", PORT=5433, USER="app") == "postgresql://app@db.example:5433/shop"


def test_a_port_given_as_a_string_and_no_user_are_kept_as_given() -> None:
    assert dsn(HOST="db.example", PORT="6432") == "postgresql://db.example:6432/shop"


def test_user_password_and_name_are_quoted_and_read_back_unchanged() -> None:
    password = "p:/@ss w?#%"
    url = urlsplit(dsn(HOST="db", USER="app@corp", PASSWORD=password, NAME="my shop/1"))
    assert url.hostname == "db"
    assert unquote(url.username or "") == "app@corp"
    assert unquote(url.password or "") == password
    assert unquote(url.path) == "/my shop/1"
    assert url.query == ""


def test_a_password_without_a_user_is_not_carried_over() -> None:
    assert dsn(HOST="db", PASSWORD="secret") == "postgresql://db/shop"


def test_an_ipv6_host_is_bracketed() -> None:
    assert dsn(HOST="::1", PORT=5432, USER="app") == "postgresql://app@[::1]:5432/shop"


def test_a_socket_directory_host_is_a_query_parameter_with_the_port() -> None:
    url = urlsplit(dsn(HOST="/run/postgresql", PORT=5433, USER="app"))
    assert url.netloc == "app@"
    assert parse_qs(url.query) == {"host": ["/run/postgresql"], "port": ["5433"]}


def test_an_empty_host_takes_pghost() -> None:
    assert dsn({"PGHOST": "pg.internal"}, HOST="") == "postgresql://pg.internal/shop"


def test_an_empty_host_finds_the_local_socket_like_libpq(tmp_path: Path) -> None:
    (tmp_path / ".s.PGSQL.5432").touch()
    found = dsn_from_database(databases(), {}, ("/nonexistent", str(tmp_path)))
    assert parse_qs(urlsplit(found).query) == {"host": [str(tmp_path)]}


def test_the_local_socket_is_looked_for_on_pgport_when_port_is_empty(tmp_path: Path) -> None:
    (tmp_path / ".s.PGSQL.6543").touch()
    found = dsn_from_database(databases(), {"PGPORT": "6543"}, (str(tmp_path),))
    assert parse_qs(urlsplit(found).query) == {"host": [str(tmp_path)]}
    assert dsn_from_database(databases(), {}, (str(tmp_path),)) == "postgresql://localhost/shop"


def test_an_empty_host_without_a_socket_is_localhost() -> None:
    assert dsn() == "postgresql://localhost/shop"


def test_ssl_options_are_carried_over_and_other_options_are_not() -> None:
    options = {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/ca.pem",
        "application_name": "shop",
        "options": "-c search_path=shop",
        "sslcert": "",
    }
    url = urlsplit(dsn(HOST="db", OPTIONS=options))
    assert parse_qs(url.query) == {"sslmode": ["verify-full"], "sslrootcert": ["/etc/ssl/ca.pem"]}


def test_postgis_is_postgresql() -> None:
    found = dsn_from_database(
        {"default": {"ENGINE": "django.contrib.gis.db.backends.postgis", "NAME": "geo"}},
        {},
        NO_SOCKETS,
    )
    assert found == "postgresql://localhost/geo"


@pytest.mark.parametrize(
    ("dbs", "why"),
    [
        (
            {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}},
            "DATABASES['default'] uses 'django.db.backends.sqlite3', not PostgreSQL",
        ),
        ({"default": {"NAME": "shop"}}, "DATABASES['default'] uses 'no ENGINE', not PostgreSQL"),
        ({"default": {"ENGINE": PG, "NAME": ""}}, "DATABASES['default'] has no NAME"),
        (
            {"default": {"ENGINE": PG, "NAME": "x", "OPTIONS": {"service": "shop"}}},
            "DATABASES['default'] names a connection service",
        ),
        ({"other": {"ENGINE": PG, "NAME": "shop"}}, "there is no DATABASES['default']"),
        (None, "there is no DATABASES['default']"),
    ],
)
def test_no_dsn_is_derived_without_a_named_postgresql_database(dbs: Any, why: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        dsn_from_database(dbs, {}, NO_SOCKETS)
    assert info.value.field == "dsn"
    assert f"settings.ASYNCJOBS has no 'dsn' and {why}. Set ASYNCJOBS['dsn']" in str(info.value)


# -- settings_from_django -----------------------------------------------------------------------


def test_without_asyncjobs_settings_the_dsn_comes_from_databases() -> None:
    found = settings_from_django(None, databases(HOST="db", USER="app"), {}, NO_SOCKETS)
    assert found.no_dsn is None
    assert found.settings.dsn == "postgresql://app@db/shop"
    assert found.settings.concurrency == Settings().concurrency


def test_asyncjobs_values_win_over_asyncjobs_variables_which_win_over_defaults() -> None:
    env = {"ASYNCJOBS_CONCURRENCY": "50", "ASYNCJOBS_SCHEMA": "jobs"}
    found = settings_from_django({"concurrency": 200}, databases(), env, NO_SOCKETS).settings
    assert (found.concurrency, found.schema, found.pool_max_size) == (
        200,
        "jobs",
        Settings().pool_max_size,
    )


@pytest.mark.parametrize(
    ("asyncjobs", "env", "expected"),
    [
        ({"dsn": "postgresql://a/x"}, {"ASYNCJOBS_DSN": "postgresql://b/y"}, "postgresql://a/x"),
        ({}, {"ASYNCJOBS_DSN": "postgresql://b/y"}, "postgresql://b/y"),
        ({"dsn": None}, {"ASYNCJOBS_DSN": "postgresql://b/y"}, "postgresql://b/y"),
        ({"dsn": None}, {}, "postgresql://db/shop"),
        ({"dsn": "memory://"}, {}, "memory://"),
    ],
)
def test_an_explicit_dsn_wins_over_asyncjobs_dsn_which_wins_over_databases(
    asyncjobs: dict[str, Any], env: dict[str, str], expected: str
) -> None:
    found = settings_from_django(asyncjobs, databases(HOST="db"), env, NO_SOCKETS)
    assert found.settings.dsn == expected
    assert found.no_dsn is None


def test_a_non_postgresql_database_leaves_the_dsn_unset_and_says_why() -> None:
    sqlite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
    found = settings_from_django({"concurrency": 10}, sqlite, {}, NO_SOCKETS)
    assert found.settings.dsn is None
    assert found.no_dsn is not None
    assert "uses 'django.db.backends.sqlite3', not PostgreSQL" in found.no_dsn
    with_env = settings_from_django({}, sqlite, {"ASYNCJOBS_DSN": "postgresql://b/y"}, NO_SOCKETS)
    assert (with_env.settings.dsn, with_env.no_dsn) == ("postgresql://b/y", None)


def test_an_unknown_key_is_named_with_the_setting_it_was_probably_meant_to_be() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings_from_django({"concurency": 8}, databases(), {}, NO_SOCKETS)
    assert info.value.field == "ASYNCJOBS['concurency']"
    message = str(info.value)
    assert "settings.ASYNCJOBS has a key that names no asyncjobs setting" in message
    assert "Did you mean 'concurrency'?" in message
    assert "Known settings: " in message and "workers_max" in message


def test_an_unknown_key_unlike_any_setting_gets_no_guess() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings_from_django({"zzz": 1}, databases(), {}, NO_SOCKETS)
    assert "Did you mean" not in str(info.value)


def test_asyncjobs_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings_from_django(["concurrency", 8], databases(), {}, NO_SOCKETS)
    assert "settings.ASYNCJOBS must be a dict of asyncjobs settings" in str(info.value)


def test_a_value_that_cannot_work_is_refused_by_settings_validation() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings_from_django({"concurrency": 0}, databases(), {}, NO_SOCKETS)
    assert info.value.field == "concurrency"


def test_an_unknown_asyncjobs_variable_is_still_an_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        settings_from_django({}, databases(), {"ASYNCJOBS_CONCURENCY": "5"}, NO_SOCKETS)
    assert "ASYNCJOBS_CONCURENCY" in str(info.value)


@pytest.mark.parametrize(
    ("asyncjobs", "env", "expected"),
    [
        ({}, {}, ("DJANGO_SETTINGS_MODULE",)),
        ({"worker_env": ["DB_URL"]}, {}, ("DB_URL", "DJANGO_SETTINGS_MODULE")),
        (
            {"worker_env": "DB_URL, DB_PASSWORD"},
            {},
            ("DB_URL", "DB_PASSWORD", "DJANGO_SETTINGS_MODULE"),
        ),
        ({"worker_env": ("DJANGO_SETTINGS_MODULE", "A")}, {}, ("DJANGO_SETTINGS_MODULE", "A")),
        ({}, {"ASYNCJOBS_WORKER_ENV": "A,B"}, ("A", "B", "DJANGO_SETTINGS_MODULE")),
        ({"worker_env": ["C"]}, {"ASYNCJOBS_WORKER_ENV": "A,B"}, ("C", "DJANGO_SETTINGS_MODULE")),
    ],
)
def test_django_settings_module_is_always_passed_to_the_pool(
    asyncjobs: dict[str, Any], env: dict[str, str], expected: tuple[str, ...]
) -> None:
    found = settings_from_django(asyncjobs, databases(), env, NO_SOCKETS)
    assert found.settings.worker_env == expected


# -- DjangoApp, as far as it goes without Django ---------------------------------------------


def test_the_django_app_declares_its_pool_and_node_hooks() -> None:
    app = DjangoApp(Settings(dsn="memory://"))
    assert app.preloads[0] is hooks.setup_django
    assert app.teardowns == [hooks.close_connections]
    assert any(fn is hooks.close_node_connections for _, fn in app.hooks)


async def test_starting_a_django_app_without_a_dsn_raises_why_none_was_derived() -> None:
    app = DjangoApp(Settings(), "DATABASES['default'] uses 'sqlite3', not PostgreSQL")
    with pytest.raises(ConfigurationError) as info:
        await app.start()
    assert info.value.field == "dsn"
    assert "DATABASES['default'] uses 'sqlite3', not PostgreSQL" in str(info.value)
